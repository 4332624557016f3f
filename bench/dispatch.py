"""Dispatch throughput through the fake channel, and the bare loop it is compared with.

    python -m bench.dispatch sqlite 10000 1               # one engine run, then the bare loop
    python -m bench.dispatch sqlite 10000 1 --rounds=10   # taking turns, 1,000 at a time

On a shared machine the load changes from one minute to the next; with ``--rounds`` the
engine and the bare loop take turns on the same two databases, so both see the same
stretches of it, and the ratio of their totals (and each round's) holds better.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment
from sqlalchemy import Column, Integer, MetaData, Table, Text, insert

from bench.common import NOW, Timer, database, definitions_for, load_due, pin_clock, settings_for
from engine.channels.fake import FakeChannel
from engine.dispatcher import Dispatcher
from engine.store.database import open_database
from engine.store.schema import UTCDateTime

# The bare loop's table: one row per message, like the ledger's, minus everything else.
sent_table = Table("bench_sent", MetaData(), Column("id", Integer, primary_key=True),
                   Column("number", Integer), Column("at", UTCDateTime()), Column("body", Text))


def bare_loop(url: str, count: int) -> float:
    """Messages/s of the simplest durable sender: render a compiled Jinja2 template and
    insert one row per message, committing each (what "sent" minimally costs)."""
    return count / bare_loop_times(url, count)[0]


def bare_loop_times(url: str, count: int) -> tuple[float, float]:
    """(seconds, CPU seconds) the bare loop takes for ``count`` messages (its table grows
    from one call to the next)."""
    db = open_database(url)
    sent_table.create(db.engine, checkfirst=True)
    template = Environment().from_string(
        "{{ practice }}: Hi {{ name }}, see you {{ day }} at {{ time }}. Reply C to "
        "confirm, R to reschedule. {{ phone }}. STOP to opt out")
    statement = insert(sent_table)
    cpu = time.process_time()
    with Timer() as timer:
        for n in range(count):
            body = template.render(practice="Riverside Physical Therapy", name="Alexandra",
                                   day="Wed, Dec 2", time="10:30 AM", phone="(312) 555-0199")
            with db.transaction() as conn:
                conn.execute(statement, {"number": n, "at": NOW, "body": body})
    cpu = time.process_time() - cpu
    db.dispose()
    return timer.seconds, cpu


def _worker(url: str, folder: str, ready: Any, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pin_clock()
    settings = settings_for(Path(folder), url)
    db = open_database(url)
    channel = FakeChannel("sms")
    dispatcher = Dispatcher(db, definitions_for(settings), settings,
                            {"sms": channel, "email": FakeChannel("email")})
    ready.wait()  # every worker has loaded its definitions: the clock starts now
    cpu = time.process_time()  # (this process's threads: the WAL checkpoints' too)
    stats = dispatcher.run()
    queue.put((stats.sent, time.process_time() - cpu))
    db.dispose()


@dataclass
class EngineRun:
    sent: int
    seconds: float
    cpu_seconds: float  # the workers' together
    startup_seconds: float


def engine_run(url: str, folder: Path, count: int, workers: int, start: int = 0,
               ) -> EngineRun:
    """The dispatcher draining ``count`` due texts with ``workers`` processes, timed from
    when every worker is ready (settings and definitions loaded, as a running daemon has
    them) to when the last one is done; and how long getting ready took. ``start``: the
    number of the first text (a later round adds to the same ledger, for new patients:
    earlier rounds' messages would count as each patient's recent sends)."""
    db = open_database(url)
    load_due(db, count, start=start, patients_count=start + count)
    db.dispose()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    ready = context.Barrier(workers + 1)
    processes = [context.Process(target=_worker, args=(url, str(folder), ready, queue))
                 for _ in range(workers)]
    with Timer() as startup:
        for process in processes:
            process.start()
        ready.wait()
    with Timer() as timer:
        done = [queue.get() for _ in processes]
    for process in processes:
        process.join()
    return EngineRun(sum(sent for sent, _ in done), timer.seconds,
                     sum(cpu for _, cpu in done), startup.seconds)


def engine_rate(url: str, folder: Path, count: int, workers: int) -> tuple[float, int, float]:
    """Messages/s of the dispatcher (see :func:`engine_run`), messages sent, startup."""
    result = engine_run(url, folder, count, workers)
    return result.sent / result.seconds, result.sent, result.startup_seconds


def run(kind: str, count: int, workers: int, rounds: int = 1) -> dict[str, object]:
    """The engine and the bare loop, each on a fresh database. With ``rounds`` > 1 they
    take turns, ``count / rounds`` messages at a time (the engine's ledger and the bare
    loop's table grow as they go); ``ratio`` is then that of their totals, and
    ``round_ratios`` each round's.

    Beside the rates, the CPU time each spends per message in its own process (the
    engine's workers together): on a machine busy with other work, wall-clock rates
    follow the load, CPU time much less (a database server's own work is not in it)."""
    per_round = count // rounds
    bare_count = min(per_round, 20_000)
    runs: list[EngineRun] = []
    bare: list[tuple[float, float]] = []
    with database(kind) as (url, folder), database(kind) as (bare_url, _):
        for number in range(rounds):
            runs.append(engine_run(url, folder, per_round, workers, start=number * per_round))
            bare.append(bare_loop_times(bare_url, bare_count))
    sent = sum(r.sent for r in runs)
    rate = sent / sum(r.seconds for r in runs)
    bare_rate = bare_count * rounds / sum(seconds for seconds, _ in bare)
    cpu_us = sum(r.cpu_seconds for r in runs) / sent * 1e6
    bare_cpu_us = sum(cpu for _, cpu in bare) / (bare_count * rounds) * 1e6
    result: dict[str, object] = {
        "benchmark": "dispatch", "database": kind, "touch_points": count, "workers": workers,
        "sent": sent, "messages_per_second": round(rate),
        "worker_startup_seconds": round(max(r.startup_seconds for r in runs), 2),
        "bare_loop_per_second": round(bare_rate), "ratio": round(bare_rate / rate, 2),
        "cpu_us_per_message": round(cpu_us), "bare_loop_cpu_us_per_message": round(bare_cpu_us),
        "cpu_ratio": round(cpu_us / bare_cpu_us, 2)}
    if rounds > 1:
        ratios = [bare_count / seconds / (r.sent / r.seconds)
                  for r, (seconds, _) in zip(runs, bare, strict=True)]
        result.update(rounds=rounds, round_ratios=[round(r, 2) for r in ratios],
                      median_round_ratio=round(statistics.median(ratios), 2))
    return result


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--rounds")]
    turns = next((int(a.partition("=")[2]) for a in sys.argv[1:] if a.startswith("--rounds=")),
                 1)
    print(run(arguments[0], int(arguments[1]), int(arguments[2]), turns))
