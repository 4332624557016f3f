"""Latency from due time to send, with `touchpoint daemon` under a steady load.

A producer adds touch points due *now* at a steady rate while the real daemon (tick 1 s,
fake channel) runs; afterwards the ledger says how late each one went.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench.common import CONFIG, ROOT, database, load_due, read_instant
from engine.store.database import open_database


def daytime_zone() -> str:
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}")


def run(kind: str = "sqlite", rate: int = 200, seconds: int = 20,
        tick: str = "1s") -> dict[str, object]:
    with database(kind) as (url, folder):
        (folder / "touchpoint.toml").write_text(
            CONFIG.replace('timezone = "America/Chicago"', f'timezone = "{daytime_zone()}"'),
            encoding="utf-8")
        env = {**os.environ, "TOUCHPOINT_DATABASE_URL": url, "TOUCHPOINT_TICK": tick,
               "TOUCHPOINT_SCHEDULES": str(ROOT / "schedules"),
               "TOUCHPOINT_TEMPLATES": str(ROOT / "message_templates")}
        db = open_database(url)
        load_due(db, 0, patients_count=rate * seconds)
        daemon = subprocess.Popen([sys.executable, "-m", "engine", "daemon", "--no-watch"],
                                  cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(3)  # started
        per_step = rate // 10  # every 100 ms
        started = time.monotonic()
        produced = 0
        while time.monotonic() - started < seconds:
            load_due(db, per_step, patients_count=1, due=datetime.now(UTC), start=produced)
            produced += per_step
            time.sleep(max(0.0, started + (produced / rate) - time.monotonic()))
        time.sleep(3)  # let the last ones go
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        with db.transaction() as conn:
            rows = conn.exec_driver_sql(
                "SELECT due_at, sent_at FROM touch_points WHERE anchor LIKE 'bench:%'").all()
        db.dispose()
    delays = sorted((read_instant(sent) - read_instant(due)).total_seconds()
                    for due, sent in rows if sent)
    unsent = sum(1 for _, sent in rows if not sent)

    def pct(p: float) -> float:
        return round(delays[min(len(delays) - 1, int(p * len(delays)))], 3)
    return {"benchmark": "latency", "database": kind, "rate_per_second": rate, "tick": tick,
            "messages": len(rows), "unsent": unsent, "p50_seconds": pct(0.5),
            "p95_seconds": pct(0.95), "max_seconds": round(delays[-1], 3),
            "mean_seconds": round(statistics.fmean(delays), 3)}


if __name__ == "__main__":
    print(run(sys.argv[1] if len(sys.argv) > 1 else "sqlite"))
