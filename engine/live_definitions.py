"""Definitions that follow the files, for the processes that run for long: the daemon and
`touchpoint serve` (webhooks, API and console).

:meth:`LiveDefinitions.reload` loads ``schedules/`` and ``message_templates/`` again. An
edit that fails a check, or files that cannot be loaded, are rejected: the problems are
logged and kept in :attr:`LiveDefinitions.problems` (pages show them), and the last good
definitions keep running. Definitions that pass are kept in the database as the last
good ones (:mod:`engine.last_good`) for a process that starts on a bad edit.

What sets off a reload is up to the process. The daemon watches the folders and reloads
on SIGHUP (:mod:`engine.daemon`). `serve` has no watcher: it calls
:meth:`LiveDefinitions.follow` before each request, which reads the files at most once
every :data:`POLL` (by :mod:`engine.clock`) and reloads when their content changed —
so a hand edit or a ``git pull`` shows on the next page loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from engine import clock, last_good
from engine.definitions import Definitions
from engine.errors import DefinitionError
from engine.privacy import redact
from engine.settings import Settings
from engine.store.database import Database
from engine.validate import check_definitions

POLL = timedelta(seconds=2)


class LiveDefinitions:
    """The definitions a process runs now, and how to load them again.

    ``load`` defaults to every check on the files under the settings' folders;
    ``keep=False`` (a dry run, which records nothing) never keeps them in the database;
    ``on_last_good``: started on the kept ones because the files were invalid;
    ``follow=True``: :meth:`follow` polls the files (without it, it does nothing)."""

    def __init__(self, settings: Settings, db: Database, definitions: Definitions,
                 load: Callable[[], Definitions] | None = None, *, keep: bool = True,
                 on_last_good: bool = False, follow: bool = False,
                 log: logging.Logger | None = None) -> None:
        self.settings = settings
        self.db = db
        self.definitions = definitions
        self.load = load or (lambda: check_definitions(settings, clock.now()).raise_for_errors())
        self.keeps = keep
        self.on_last_good = on_last_good  # ... and still running them
        self.follows = follow
        self.log = log or logging.getLogger("touchpoint.definitions")
        self.problems: tuple[str, ...] = ()  # why the files on disk are not what runs
        self._lock = threading.Lock()  # one look at the files at a time
        self._looked_at: datetime | None = clock.now() if follow else None
        self._stamp = self._files_stamp() if follow else ""

    def reload(self, why: str) -> bool:
        """Load the files again; keep the old definitions if they are invalid.
        Never raises: it runs in watcher, signal and request threads."""
        if self.follows:
            self._stamp = self._files_stamp()  # (what this load reads, for follow())
        try:
            definitions = self.load()
        except DefinitionError as exc:
            problems = [str(d) for d in exc.diagnostics] or [exc.message]
            self.log.error("%s: the new definitions are invalid, still running the last good "
                           "ones:\n  %s", why, "\n  ".join(problems),
                           extra={"event": "reload_rejected", "problems": len(problems)})
            self.problems = tuple(problems)
            return False
        except Exception as exc:
            reason = f"{type(exc).__name__}: {redact(str(exc))[:300]}"
            self.log.error("%s: the definitions could not be loaded (%s), still running the "
                           "last good ones", why, reason, extra={"event": "reload_failed"})
            self.problems = (f"the definitions could not be loaded ({reason})",)
            return False
        self.definitions = definitions
        self.problems = ()
        self.on_last_good = False
        self.log.info("%s: reloaded %d journeys", why, len(definitions.journeys),
                      extra={"event": "reloaded"})
        self.keep()
        return True

    def keep(self) -> None:
        """Keep the files just loaded as the last good definitions (not when told not to,
        nor while running kept ones: the files are invalid)."""
        if not self.keeps or self.on_last_good:
            return
        try:
            last_good.save(self.db, self.settings, clock.now())
        except Exception as exc:  # the process runs on without; the next reload tries again
            self.log.error("could not keep the definitions as the last good ones (%s: %s)",
                           type(exc).__name__, redact(str(exc))[:300],
                           extra={"event": "keep_definitions_failed"})

    def due(self) -> bool:
        """Time to look at the files again (cheap: no file is read)."""
        return self.follows and (self._looked_at is None
                                 or clock.now() - self._looked_at >= POLL)

    def follow(self) -> bool:
        """Reload if the files' content changed since they were last read (at most once
        every POLL); True if new definitions now run. Never raises."""
        if not self.due() or not self._lock.acquire(blocking=False):
            return False  # (not yet, or another request is looking right now)
        try:
            self._looked_at = clock.now()
            if self._files_stamp() == self._stamp:
                return False
            return self.reload("files changed")
        finally:
            self._lock.release()

    def _files_stamp(self) -> str:
        """What the files hold now, as one digest (or why they cannot be read)."""
        try:
            return last_good.digest(last_good.snapshot(self.settings))
        except (OSError, ValueError) as exc:  # (ValueError: a file that is not UTF-8)
            return f"unreadable: {type(exc).__name__}: {exc}"
