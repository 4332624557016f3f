"""`touchpoint daemon`: the engine, running unattended.

APScheduler 3 (a ``BlockingScheduler`` with its in-memory job store) drives three jobs;
durable state lives only in Touchpoint's own tables, so a restart loses nothing:

=================  =========================  ============================================
job                when                       does
=================  =========================  ============================================
``dispatch``       every ``daemon.tick``      edits, recovery, planning, sending
                   (15 s), coalesced, one at
                   a time, never dropped as a
                   misfire
``lapse-sweep``    ``daemon.sweep_cron``      ``patient.lapsed`` events (under an advisory
                   (hourly)                   lock on PostgreSQL)
``plan-check``     ``daemon.plan_cron``       plans of care: ``plan.under_scheduled``
                   (daily, 09:00)             events and "at risk" cases
                                              (engine/plan_of_care.py; advisory lock)
``housekeeping``   ``daemon.housekeeping_     forgets workers that stopped ticking;
                   cron`` (daily, 03:30)      removes message text older than
                                              ``retention.message_bodies``
``webhooks-out``   every 5 s, in its own      outbound webhooks due (a slow or dead
                   thread (executor)          endpoint never holds up ``dispatch``)
``fhir-sync``      ``fhir.sync_every`` (only  ``touchpoint fhir sync`` (one worker at a time:
                   with ``fhir.base_url``)    an advisory lock on PostgreSQL); not in a dry run
=================  =========================  ============================================

Woken (:mod:`engine.wake`): an event committed by the API or an HL7 feed, followed by
``wake.notify``, runs the ``dispatch`` work at once in the ``wake`` thread — coalesced
(wakes during a tick lead to one more tick right after it) and never at the same time
as another tick (they share one lock). Listening never stops the daemon: a listener
that fails logs it and listens again, and the interval ticks go on regardless.

Signals: SIGTERM or SIGINT finishes the touch point in flight, records it, gives back
what this worker had claimed and exits 0; a second signal exits at once. SIGHUP — or a
change under ``schedules/`` or ``message_templates/`` — reloads the definitions; an
invalid edit is rejected with its errors logged and the last good definitions keep
running. The watcher survives any error (it logs it and watches again).

Definitions that pass every check are kept in the database (:mod:`engine.last_good`):
a daemon started while an edit is invalid logs the errors and runs the last good ones
(:func:`definitions_to_run`) instead of refusing to start.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from engine import clock, last_good, plan_of_care, wake
from engine.channels.base import Channel
from engine.definitions import Definitions
from engine.errors import DefinitionError
from engine.health import HEARTBEAT_PREFIX
from engine.live_definitions import LiveDefinitions
from engine.outbound_webhooks.delivery import Deliverer
from engine.patient_data import purge_old_message_text
from engine.privacy import redact
from engine.runner import Runner, TickReport
from engine.settings import Settings
from engine.store.database import Database
from engine.store.records import put_state
from engine.store.schema import engine_state
from engine.timing import zone

log = logging.getLogger("touchpoint.daemon")
WATCH_RETRY_SECONDS = 5.0
WEBHOOKS_EVERY_SECONDS = 5.0


def definitions_to_run(settings: Settings, db: Database,
                       load_definitions: Callable[[], Definitions],
                       ) -> tuple[Definitions, last_good.Restored | None]:
    """The definitions on disk; if they are invalid, the last good ones kept in the
    database (and how they were restored). Raises DefinitionError if there are none."""
    try:
        return load_definitions(), None
    except DefinitionError as exc:
        problems = [str(d) for d in exc.diagnostics] or [exc.message]
        try:
            restored = last_good.restore(db, settings, clock.now())
        except DefinitionError as kept:
            raise DefinitionError(f"{exc.message}\n(the last good definitions kept in the "
                                  f"database no longer pass either: {kept.message})",
                                  exc.diagnostics) from None
        if restored is None:
            raise DefinitionError(f"{exc.message}\n(no last good definitions are kept in the "
                                  "database yet: a daemon keeps them when it starts or "
                                  "reloads with valid ones)", exc.diagnostics) from None
    log.error("the definitions in %s and %s are invalid:\n  %s\nrunning the last good "
              "definitions, kept %s (%d journeys) — fix the files; saving them reloads",
              settings.schedules_dir, settings.templates_dir, "\n  ".join(problems),
              restored.saved_at, len(restored.definitions.journeys),
              extra={"event": "started_on_last_good", "problems": len(problems)})
    return restored.definitions, restored


class Daemon:
    def __init__(self, settings: Settings, db: Database, definitions: Definitions,
                 channels: Mapping[str, Channel],
                 load_definitions: Callable[[], Definitions], *, dry_run: bool = False,
                 watch: bool = True, restored: last_good.Restored | None = None) -> None:
        self.settings = settings
        self.db = db
        self.channels = channels
        self.dry_run = dry_run
        self.watch = watch
        self.restored = restored  # started on the last good definitions kept in the database
        # (a dry run records nothing: it never keeps the definitions either)
        self.live = LiveDefinitions(settings, db, definitions, load_definitions,
                                    keep=not dry_run, on_last_good=restored is not None,
                                    log=log)
        self.runner = Runner(db, settings, definitions, channels)
        self.worker = self.runner.dispatcher.worker if self.runner.dispatcher else "?"
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # ticks and reloads never overlap
        tz = zone(settings.require("practice.timezone"))
        self.scheduler = BlockingScheduler(timezone=tz, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": None})
        self.ticks = 0
        self.webhooks: Deliverer | None = None
        self.woken = threading.Event()  # a wake came: tick once more (engine.wake)
        self.listener = wake.Listener(db, self.woken.set, self.stopping)

    # ------------------------------------------------------------------ jobs

    def tick(self) -> TickReport | None:
        if self.stopping.is_set():
            return None
        with self.lock:
            started = time.monotonic()
            if self.dry_run:
                with self.db.rolled_back():
                    report = self.runner.tick(sweep=False, stop=self.stopping.is_set)
            else:
                report = self.runner.tick(sweep=False, stop=self.stopping.is_set)
            took = time.monotonic() - started
            self.ticks += 1
            self._heartbeat(report, took)
        d = report.dispatch
        busy = report.events or report.recovered or d.claimed or report.edits
        (log.info if busy else log.debug)(
            "tick: %d events planned into %d, %d sent, %d skipped, %d cancelled, %d failed, "
            "%d deferred, %d retried (%.0f ms)", report.events, report.planned, d.sent,
            sum(d.skipped.values()), sum(d.cancelled.values()), d.failed, d.deferred,
            d.retried, took * 1000,
            extra={"event": "tick", "sent": d.sent, "duration_ms": round(took * 1000, 1)})
        return report

    def _tick_when_woken(self) -> None:
        """Tick each time a wake came (any number during a tick: one tick after it)."""
        while not self.stopping.is_set():
            if not self.woken.wait(0.5):
                continue
            self.woken.clear()
            try:
                self.tick()
            except Exception as exc:  # as APScheduler does for the interval ticks
                log.error("tick on wake failed (%s: %s)", type(exc).__name__,
                          redact(str(exc))[:300], extra={"event": "wake_tick_failed"})
                self.stopping.wait(1.0)

    def sweep(self) -> None:
        if self.stopping.is_set():
            return
        with self.lock:
            found = self.runner.sweep_lapses()
        if found:
            log.info("lapse sweep: %d patient(s) lapsed", found,
                     extra={"event": "lapse_sweep", "lapses": found})

    def check_plans(self) -> None:
        """Nudge under-scheduled patients and open at-risk cases (engine.plan_of_care);
        the events are planned at the next tick."""
        if self.stopping.is_set() or self.dry_run:
            return
        plan_of_care.check(self.db, self.settings, clock.now())

    def housekeeping(self) -> None:
        """Forget heartbeats of workers silent for a day (their claims expire by themselves);
        remove message text older than ``retention.message_bodies``."""
        cutoff = clock.now() - timedelta(days=1)
        with self.db.transaction() as conn:
            rows = conn.execute(engine_state.select().where(
                engine_state.c.key.startswith(HEARTBEAT_PREFIX),
                engine_state.c.updated_at < cutoff)).all()
            for row in rows:
                conn.execute(engine_state.delete().where(engine_state.c.key == row.key))
        log.info("housekeeping: forgot %d silent worker(s)", len(rows))
        purge_old_message_text(self.db, self.settings, clock.now())

    def deliver_webhooks(self) -> None:
        """Outbound webhooks due (engine.outbound_webhooks), in the job's own thread."""
        if self.stopping.is_set() or self.dry_run:
            return
        if self.webhooks is None:
            self.webhooks = Deliverer(self.db, worker=self.worker)
        try:
            self.webhooks.run(stop=self.stopping.is_set)
        except Exception as exc:  # the next run tries again; messages are never affected
            log.error("delivering outbound webhooks failed (%s: %s)", type(exc).__name__,
                      redact(str(exc))[:300], extra={"event": "webhooks_failed"})

    def schedule_fhir_sync(self) -> None:
        """Add the ``fhir-sync`` job when fhir.base_url and fhir.sync_every are set."""
        every = self.settings.fhir.sync_every
        if self.settings.fhir.base_url and every and not self.dry_run:
            from engine.fhir.sync import ScheduledSync

            job = ScheduledSync(self.db, self.settings, self.stopping.is_set)
            self.scheduler.add_job(job,
                                   IntervalTrigger(seconds=every.total_seconds()),
                                   id="fhir-sync", next_run_time=clock.now())

    def _heartbeat(self, report: TickReport, took: float) -> None:
        if self.dry_run:
            return
        with self.db.transaction() as conn:
            put_state(conn, HEARTBEAT_PREFIX + self.worker, {
                "last_tick": report.at.isoformat(), "duration_seconds": round(took, 4),
                "pid": os.getpid(), "sent": report.dispatch.sent}, clock.now())

    # ------------------------------------------------------------------ reload

    @property
    def on_last_good(self) -> bool:
        """Still running the kept definitions it started on (the files are invalid)."""
        return self.live.on_last_good

    def reload(self, why: str) -> bool:
        """Load schedules/ and message_templates/ again; keep the old ones if invalid
        (:meth:`LiveDefinitions.reload`). Never raises: it runs in the watcher's and
        SIGHUP's threads."""
        if not self.live.reload(why):
            return False
        with self.lock:
            dispatcher = self.runner.dispatcher
            self.runner = Runner(self.db, self.settings, self.live.definitions, self.channels,
                                 worker=dispatcher.worker if dispatcher else None)
        return True

    def keep_definitions(self) -> None:
        """Keep the files just loaded as the last good definitions (engine.last_good)."""
        self.live.keep()

    def _watch(self) -> None:
        """Watch the folders until stopped; whatever goes wrong is logged and the watch
        starts again."""
        while not self.stopping.is_set():
            try:
                self._watch_once()
            except Exception as exc:
                log.error("watching for edits failed (%s: %s); watching again in %g s",
                          type(exc).__name__, redact(str(exc))[:300], WATCH_RETRY_SECONDS,
                          extra={"event": "watch_failed"})
                self.stopping.wait(WATCH_RETRY_SECONDS)

    def _watch_once(self) -> None:
        from watchfiles import watch

        folders = [str(p) for p in (self.settings.schedules_dir, self.settings.templates_dir)
                   if p.is_dir()]
        watching = False
        # (yield_on_timeout: the first, empty, yield says the watcher is in place; an edit
        # saved before that would not be seen, so it is logged for whoever waits for it)
        for changes in watch(*folders, stop_event=self.stopping, debounce=500,
                             yield_on_timeout=True, rust_timeout=1000, raise_interrupt=False):
            if self.stopping.is_set():
                return
            if not watching:
                watching = True
                log.info("watching %s for edits", " and ".join(folders),
                         extra={"event": "watching"})
            if changes:
                self.reload("files changed")

    # ------------------------------------------------------------------ run

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            threading.Thread(target=self.reload, args=("SIGHUP",), daemon=True).start()
            return
        if self.stopping.is_set():
            log.warning("second %s: exiting at once", signal.Signals(signum).name)
            os._exit(128 + signum)
        log.info("%s: finishing the touch point in flight, then stopping",
                 signal.Signals(signum).name, extra={"event": "stopping"})
        self.stopping.set()
        threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True},
                         daemon=True).start()

    def run(self) -> int:
        tick = self.settings.daemon.tick
        self.scheduler.add_job(self.tick, IntervalTrigger(seconds=tick.total_seconds()),
                               id="dispatch", next_run_time=clock.now())
        self.scheduler.add_job(self.sweep, CronTrigger.from_crontab(
            self.settings.daemon.sweep_cron, timezone=self.scheduler.timezone),
            id="lapse-sweep", next_run_time=clock.now())
        self.scheduler.add_job(self.check_plans, CronTrigger.from_crontab(
            self.settings.daemon.plan_cron, timezone=self.scheduler.timezone),
            id="plan-check")
        self.scheduler.add_job(self.housekeeping, CronTrigger.from_crontab(
            self.settings.daemon.housekeeping_cron, timezone=self.scheduler.timezone),
            id="housekeeping")
        self.scheduler.add_executor(ThreadPoolExecutor(1), "webhooks-out")
        self.scheduler.add_job(self.deliver_webhooks, IntervalTrigger(
            seconds=WEBHOOKS_EVERY_SECONDS), id="webhooks-out", executor="webhooks-out",
            next_run_time=clock.now())
        self.schedule_fhir_sync()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.keep_definitions()
        if self.watch:
            threading.Thread(target=self._watch, name="watch", daemon=True).start()
        self.listener.start()
        waker = threading.Thread(target=self._tick_when_woken, name="wake-tick", daemon=True)
        waker.start()
        log.info("daemon started (worker %s, tick %ss%s%s)", self.worker,
                 int(tick.total_seconds()), ", dry run" if self.dry_run else "",
                 ", on the last good definitions" if self.restored else "",
                 extra={"event": "started"})
        try:
            self.scheduler.start()  # blocks until shutdown
        finally:
            if self.restored is not None:
                self.restored.remove()
        self.stopping.set()
        waker.join(timeout=30)  # (a tick in flight finishes its message first)
        self._release()
        if self.webhooks is not None:
            self.webhooks.close()
        log.info("daemon stopped after %d tick(s)", self.ticks, extra={"event": "stopped"})
        return 0

    def _release(self) -> None:
        """Give back claims so another worker can take them at once."""
        from engine.store.ledger import release_all

        if self.dry_run:
            return
        with self.db.transaction() as conn:
            release_all(conn, self.worker)

