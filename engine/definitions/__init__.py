"""Definitions: journeys (``schedules/``) and message templates (``message_templates/``).

:func:`load_definitions` reads both, cross-checks them (every step has a template for
each of its channels, every template compiles and only uses known variables) and returns
:class:`Definitions` with every finding as a :class:`Diagnostic`. It never raises on bad
files; :meth:`Definitions.raise_for_errors` turns errors into a DefinitionError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import TemplateSyntaxError

from engine.definitions.diagnostics import Diagnostic, errors
from engine.definitions.journeys import (
    PRIORITIES,
    Journey,
    Step,
    iter_steps,
    load_journeys,
)
from engine.definitions.templates import TemplateSet
from engine.errors import DefinitionError

__all__ = ["Definitions", "Diagnostic", "Journey", "Step", "TemplateSet", "load_definitions"]


@dataclass(frozen=True)
class Definitions:
    journeys: Mapping[str, Journey]
    templates: TemplateSet
    diagnostics: tuple[Diagnostic, ...] = field(default=())

    @property
    def errors(self) -> list[Diagnostic]:
        return errors(self.diagnostics)

    def raise_for_errors(self) -> Definitions:
        found = self.errors
        if found:
            shown = "\n".join(str(d) for d in found[:20])
            more = f"\n… and {len(found) - 20} more" if len(found) > 20 else ""
            raise DefinitionError(
                f"{len(found)} problem{'s' if len(found) != 1 else ''} in schedules or "
                f"templates (run `touchpoint validate`):\n{shown}{more}",
                diagnostics=tuple(found))
        return self

    def journey(self, name: str) -> Journey | None:
        return self.journeys.get(name)

    def priority(self, journey: str, step: str, purpose: str) -> int:
        """The priority of ``journey``/``step`` (:meth:`Journey.priority_of`); a step no
        longer in schedules/ ranks as a nudge, or as marketing by that purpose."""
        found = self.journeys.get(journey)
        defined = found.step(step) if found is not None else None
        if found is None or defined is None:
            return PRIORITIES["marketing" if purpose == "marketing" else "nudge"]
        return found.priority_of(defined)

    @property
    def score_steps(self) -> frozenset[tuple[str, str]]:
        """(journey, step) of every step that asks the 0-10 question (``asks: score``)."""
        return frozenset((j.name, s.id) for j, s in iter_steps(self.journeys)
                         if s.asks == "score")

    @property
    def fingerprint(self) -> str:
        """Changes when any journey's timing, channels, steps or rules change (not when a
        template's wording does: templates are rendered at send time)."""
        parts = sorted(
            repr((j.name, j.purpose, j.trigger if len(j.triggers) == 1 else j.triggers,
                  j.exit_on, [(s.id, s.fingerprint(), s.exit_on) for s in j.steps]))
            + (f" once_per={j.once_per}" if j.once_per else "")
            for j in self.journeys.values())
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def load_definitions(schedules: Path, templates: Path, default_language: str = "en",
                     ) -> Definitions:
    journeys, found = load_journeys(schedules)
    template_set = TemplateSet(templates, default_language)
    if not templates.is_dir():
        found.append(Diagnostic(str(templates), None, "templates folder not found",
                                "create it or point --templates / paths.templates at it"))
    for journey, step in iter_steps(journeys):
        found.extend(_check_step(journey, step, template_set))
    for _, _, _, file in template_set.files():
        found.extend(template_set.check_file(file))
    return Definitions(journeys, template_set, tuple(found))


def _check_step(journey: Journey, step: Step, templates: TemplateSet) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    for channel in step.channels:
        if not templates.has(step.template, channel):
            expected = templates.directory / f"{step.template}.{channel}.j2"
            found.append(Diagnostic(
                journey.file, step.line,
                f"step '{step.id}' sends {channel} but {expected} does not exist",
                f"create that file or remove {channel} from the step's channels",
                code="missing-template"))
    if step.only_if:
        try:
            templates.compile_expression(step.only_if)
            found.extend(templates.check_expression(step.only_if, journey.file, step.line))
        except TemplateSyntaxError as exc:
            found.append(Diagnostic(journey.file, step.line,
                                    f"only_if is not a valid expression: {exc.message}",
                                    "write e.g. \"appointment.visit_number == 3\""))
    return found
