"""Waking the daemons: an event committed by the API or an HL7 feed is planned (and its
immediate message sent) at once, not at the next ``daemon.tick``.

Whoever commits events calls :func:`notify` **after the commit**; each running daemon
listens (:class:`Listener`) and runs its ``dispatch`` job at once (engine/daemon.py:
coalesced — any number of wakes during a tick lead to exactly one more tick right
after it — and never two ticks at a time). A wake is a hint, never a requirement: if it
is lost (no daemon running, a listener reconnecting), the next tick plans the event as
before, so :func:`notify` never raises and a listener never stops the daemon.

The mechanism, by database:

* **PostgreSQL** — ``NOTIFY touchpoint_wake`` (:data:`CHANNEL`), which reaches every
  daemon on every machine. Each daemon keeps one dedicated psycopg connection that
  ``LISTEN``\\s (outside SQLAlchemy's pool) and reads its notifications
  (``Connection.notifies``) in a thread; after a lost connection it reconnects every
  :data:`RETRY_SECONDS` and ticks once (a wake may have been missed meanwhile).
* **SQLite** (one machine) — a *wake file* beside the database file
  (``touchpoint.db.wake``): :func:`notify` writes the time into it, and each daemon
  watches it with watchfiles (inotify on Linux, FSEvents on macOS, kqueue on BSD;
  polling where none works). Watching that one file, not the database's folder, keeps
  the WAL's constant writes out of the watcher. If the file is removed, the listener
  creates it again and goes on watching.

Latency (bench/event_to_send.py, bench/README.md): a wake reaches the daemon in a few
milliseconds on PostgreSQL and within watchfiles' ``step`` (:data:`FILE_STEP_MS`) on
SQLite; then the tick plans the event and sends what is due now.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from engine.privacy import redact
from engine.store.database import Database

log = logging.getLogger("touchpoint.wake")

CHANNEL = "touchpoint_wake"
RETRY_SECONDS = 2.0
# watchfiles waits this long with no further change before yielding what it saw (ms)
FILE_STEP_MS = 20


def wake_file(database: Database) -> Path | None:
    """The wake file of an SQLite database file (None: PostgreSQL, or in memory)."""
    url = make_url(database.url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).resolve().with_name(Path(url.database).name + ".wake")


def notify(database: Database) -> None:
    """Wake every daemon of ``database``: call it after committing events. Never raises
    (a lost wake only means the event waits for the next tick); logs why instead."""
    try:
        if database.dialect == "postgresql":
            with database.transaction() as conn:
                conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
            return
        path = wake_file(database)
        if path is not None:
            path.write_text(f"{time.time_ns()}\n", encoding="ascii")
    except Exception as exc:
        log.warning("could not wake the daemon (%s: %s); the next tick will plan the event",
                    type(exc).__name__, redact(str(exc))[:200], extra={"event": "wake_failed"})


class Listener:
    """Calls ``on_wake`` (from its own thread) whenever :func:`notify` is called for
    ``database``, until ``stopping`` is set. ``on_wake`` must be cheap (set an event);
    :meth:`ready` is set once the listener is in place (a wake before that may be lost).
    """

    def __init__(self, database: Database, on_wake: Callable[[], None],
                 stopping: threading.Event) -> None:
        self.database = database
        self.on_wake = on_wake
        self.stopping = stopping
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name="wake", daemon=True)
        self.thread.start()
        return self.thread

    def run(self) -> None:
        """Listen until stopped; whatever goes wrong is logged, and it listens again."""
        listen = self._listen_postgresql if self.database.dialect == "postgresql" \
            else self._watch_file
        failures = 0
        while not self.stopping.is_set():
            try:
                listen(reconnected=failures > 0)
            except Exception as exc:
                failures += 1
                self.ready.clear()
                log.error("listening for wakes failed (%s: %s); listening again in %g s",
                          type(exc).__name__, redact(str(exc))[:300], RETRY_SECONDS,
                          extra={"event": "wake_listen_failed"})
                self.stopping.wait(RETRY_SECONDS)

    def _listening(self, where: str, reconnected: bool) -> None:
        self.ready.set()
        log.info("listening for wakes (%s)", where, extra={"event": "wake_listening"})
        if reconnected:  # a wake may have come while it was not listening
            self.on_wake()

    def _listen_postgresql(self, *, reconnected: bool) -> None:
        import psycopg

        url = make_url(self.database.url).set(drivername="postgresql")
        with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True,
                             connect_timeout=10) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._listening(f"PostgreSQL LISTEN {CHANNEL}", reconnected)
            while not self.stopping.is_set():
                # (a timeout to look at `stopping`; several wakes read at once are one)
                woken = False
                for _ in conn.notifies(timeout=0.5):
                    woken = True
                    if self.stopping.is_set():
                        break
                    self.on_wake()
                if not woken:
                    conn.execute("SELECT 1")  # a dead connection raises here, not silently

    def _watch_file(self, *, reconnected: bool) -> None:
        from watchfiles import watch

        path = wake_file(self.database)
        if path is None:  # an in-memory database: nobody else can commit to it
            self.ready.set()
            self.stopping.wait()
            return
        if not path.exists():
            path.write_text("", encoding="ascii")
        listening = False
        for changes in watch(path, stop_event=self.stopping, debounce=200, step=FILE_STEP_MS,
                             yield_on_timeout=True, rust_timeout=1000, raise_interrupt=False):
            if self.stopping.is_set():
                return
            if not listening:  # (the first, empty, yield: the watch is in place)
                listening = True
                self._listening(f"wake file {path.name}", reconnected)
            if changes:
                self.on_wake()
            if not path.exists():
                raise FileNotFoundError(f"the wake file {path.name} was removed")
