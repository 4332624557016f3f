"""Dispatch throughput through the fake channel, and the bare loop it is compared with."""

from __future__ import annotations

import multiprocessing
import sys
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
    db = open_database(url)
    sent_table.create(db.engine, checkfirst=True)
    template = Environment().from_string(
        "{{ practice }}: Hi {{ name }}, see you {{ day }} at {{ time }}. Reply C to "
        "confirm, R to reschedule. {{ phone }}. STOP to opt out")
    statement = insert(sent_table)
    with Timer() as timer:
        for n in range(count):
            body = template.render(practice="Riverside Physical Therapy", name="Alexandra",
                                   day="Wed, Dec 2", time="10:30 AM", phone="(312) 555-0199")
            with db.transaction() as conn:
                conn.execute(statement, {"number": n, "at": NOW, "body": body})
    db.dispose()
    return count / timer.seconds


def _worker(url: str, folder: str, ready: Any, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    pin_clock()
    settings = settings_for(Path(folder), url)
    db = open_database(url)
    channel = FakeChannel("sms")
    dispatcher = Dispatcher(db, definitions_for(settings), settings,
                            {"sms": channel, "email": FakeChannel("email")})
    ready.wait()  # every worker has loaded its definitions: the clock starts now
    stats = dispatcher.run()
    queue.put(stats.sent)
    db.dispose()


def engine_rate(url: str, folder: Path, count: int, workers: int) -> tuple[float, int, float]:
    """Messages/s of the dispatcher draining ``count`` due texts with ``workers`` processes,
    timed from when every worker is ready (settings and definitions loaded, as a running
    daemon has them) to when the last one is done; and how long getting ready took."""
    db = open_database(url)
    load_due(db, count)
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
        sent = sum(queue.get() for _ in processes)
    for process in processes:
        process.join()
    return sent / timer.seconds, sent, startup.seconds


def run(kind: str, count: int, workers: int) -> dict[str, object]:
    with database(kind) as (url, folder):
        rate, sent, startup = engine_rate(url, folder, count, workers)
    with database(kind) as (url, _):
        bare = bare_loop(url, min(count, 20_000))
    return {"benchmark": "dispatch", "database": kind, "touch_points": count,
            "workers": workers, "sent": sent, "messages_per_second": round(rate),
            "worker_startup_seconds": round(startup, 2),
            "bare_loop_per_second": round(bare), "ratio": round(bare / rate, 2)}


if __name__ == "__main__":
    print(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
