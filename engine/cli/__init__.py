"""The `touchpoint` command: a thin shell over the engine, one module per command group.

=====================  ==============================================================
module                 commands
=====================  ==============================================================
``root``               the ``touchpoint`` group, its global options, :func:`main`
``common``             what commands share: :class:`~engine.cli.common.App`, helpers
``config``, ``db``     ``config``; ``db upgrade|current``
``imports``            ``import patients|appointments|contacts|referrers|waitlist``
``hl7``, ``fhir``      ``import hl7``; ``import fhir``, ``fhir sync|jwks``
``running``            ``run``, ``simulate``, ``daemon``, ``serve``, ``demo``
``touch_points``       ``log``, ``why``, ``unknown``, ``settle``
``definitions``        ``validate``, ``segments``, ``preview``, ``test-send``, ``forecast``
``inbox``              ``inbox``, ``inbox done|opt-out``
``cases``              ``cases``, ``case ID show|resolve|note|assign``
``report``             ``report``
``audit``              ``audit``
``users``              ``users …``
``api_keys``           ``api-keys …``
``webhooks``           ``webhooks …``
``patient``            ``patient export|erase``
``plans``              ``plan-check``
``waitlist``           ``waitlist list|slots|confirm|withdraw``
=====================  ==============================================================

A command module registers its commands on ``cli`` (or on a group such as ``import_``)
when imported: importing this package imports them all.
"""

from __future__ import annotations

from engine.cli.common import app_of, echo_json, since_day
from engine.cli.imports import import_
from engine.cli.root import cli, main

# (the names modules used before the split; they are kept for branches written then)
_app = app_of
_echo_json = echo_json

from engine.cli import (  # noqa: E402
    api_keys,  # noqa: F401
    audit,  # noqa: F401
    cases,  # noqa: F401
    config,  # noqa: F401
    db,  # noqa: F401
    definitions,  # noqa: F401
    fhir,  # noqa: F401
    hl7,  # noqa: F401
    inbox,  # noqa: F401
    plans,  # noqa: F401
    report,  # noqa: F401
    running,  # noqa: F401
    touch_points,  # noqa: F401
    users,  # noqa: F401
    waitlist,  # noqa: F401
    webhooks,  # noqa: F401
)
from engine.cli import patient as patient_commands  # noqa: E402, F401

__all__ = ["cli", "import_", "main", "since_day"]
