"""Peak memory (RSS) of the daemon's work as the ledger grows: it must stay flat."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from bench.common import (
    NOW,
    database,
    definitions_for,
    load_due,
    load_settled,
    peak_rss_mb,
    pin_clock,
    settings_for,
)
from engine import clock
from engine.channels.fake import FakeChannel
from engine.runner import Runner
from engine.store.database import open_database


def worker(url: str, folder: str, ticks: int) -> None:
    """What a daemon does: ticks (edits, recovery, planning, dispatch) and a lapse sweep."""
    pin_clock()
    settings = settings_for(Path(folder), url)
    db = open_database(url)
    runner = Runner(db, settings, definitions_for(settings),
                    {"sms": FakeChannel("sms"), "email": FakeChannel("email")})
    started = time.perf_counter()
    sent = 0
    for n in range(ticks):
        clock.set_now(NOW + timedelta(minutes=n))
        report = runner.tick(sweep=(n == 0))
        sent += report.dispatch.sent
    idle_started = time.perf_counter()
    for n in range(20):  # idle ticks: nothing due
        clock.set_now(NOW + timedelta(minutes=ticks + n))
        runner.tick(sweep=False)
    idle = (time.perf_counter() - idle_started) / 20
    print(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1), "sent": sent,
                      "seconds": round(idle_started - started, 2),
                      "idle_tick_ms": round(idle * 1000, 2)}))


def run(kind: str = "sqlite", sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
        ) -> list[dict[str, object]]:
    results = []
    for size in sizes:
        with database(kind) as (url, folder):
            db = open_database(url)
            load_settled(db, size)
            load_due(db, 2_000, patients_count=2_000)  # work for the ticks
            db.dispose()
            out = subprocess.run([sys.executable, "-m", "bench.rss", "worker", url,
                                  str(folder), "5"], check=True, capture_output=True,
                                 text=True).stdout
        measured = json.loads(out.strip().splitlines()[-1])
        results.append({"benchmark": "daemon_memory", "database": kind, "ledger_rows": size,
                        **measured})
    return results


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        for result in run(sys.argv[1]):
            print(result)
