"""Event to send: how long a booking committed by an integration waits for its immediate
message, with and without waking the daemon (engine/wake.py).

The real ``touchpoint daemon`` (``daemon.tick`` 15 s, the default; fake channel) runs
while N bookings — a new patient and their first visit, as an API or HL7 feed would
send them — are committed one at a time, every ``interval`` seconds, each followed by
``wake.notify`` (or not). Afterwards the ledger says when each welcome text was
``sent``: the delay from the commit is reported as p50/p99 (ms).

    python -m bench.event_to_send sqlite 100        # with and without wake
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from bench.common import CONFIG, ROOT, database, read_instant
from engine import wake
from engine.importer import sync_appointments, sync_patients
from engine.store.database import open_database


def daytime_zone() -> str:
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12
    return "Etc/GMT" + (f"-{offset}" if offset > 0 else f"+{-offset}")


def run(kind: str = "sqlite", count: int = 100, *, woken: bool = True, tick: str = "15s",
        interval: float = 0.2) -> dict[str, object]:
    timezone = daytime_zone()
    with database(kind) as (url, folder):
        (folder / "touchpoint.toml").write_text(
            CONFIG.replace('timezone = "America/Chicago"', f'timezone = "{timezone}"'),
            encoding="utf-8")
        env = {**os.environ, "TOUCHPOINT_DATABASE_URL": url, "TOUCHPOINT_TICK": tick,
               "TOUCHPOINT_SCHEDULES": str(ROOT / "schedules"),
               "TOUCHPOINT_TEMPLATES": str(ROOT / "message_templates")}
        log = folder / "daemon.log"
        with log.open("w") as out:
            daemon = subprocess.Popen([sys.executable, "-m", "engine", "daemon", "--no-watch"],
                                      cwd=folder, env=env, stdout=out,
                                      stderr=subprocess.STDOUT)
        db = open_database(url)
        try:
            deadline = time.monotonic() + 60
            while "listening for wakes" not in log.read_text():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError(f"the daemon did not start:\n{log.read_text()}")
                time.sleep(0.05)
            time.sleep(1.0)  # its first tick is over
            committed: dict[str, datetime] = {}
            start = datetime.now(UTC) + timedelta(days=3)
            for i in range(count):
                external = f"E{i:05d}"
                now = datetime.now(UTC)
                with db.transaction() as conn:
                    sync_patients(conn, [(2, {
                        "patient_id": external, "first_name": "Ana", "last_name": "Reyes",
                        "phone": f"+1312200{i:04d}", "email": "", "language": "",
                        "timezone": "", "sms_consent": "yes", "email_consent": "no",
                        "marketing_consent": "no"})], "bench", region="US", now=now)
                    sync_appointments(conn, [(2, {
                        "appointment_id": f"B{i:05d}", "patient_id": external,
                        "start": start.isoformat(), "duration_minutes": "60",
                        "status": "booked", "visit_type": "", "therapist": "",
                        "location": ""})], "bench", practice_tz=timezone, now=now)
                committed[external] = datetime.now(UTC)
                if woken:
                    wake.notify(db)
                time.sleep(interval)
            sent = _wait_for_sends(db, committed, time.monotonic() + 120)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
            db.dispose()
    delays = sorted((sent[p] - committed[p]).total_seconds() * 1000 for p in sent)

    def pct(p: float) -> float:
        return round(delays[min(len(delays) - 1, int(p * len(delays)))], 1)
    return {"benchmark": "event_to_send", "database": kind, "wake": woken, "tick": tick,
            "bookings": count, "interval_seconds": interval, "unsent": count - len(sent),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": round(delays[-1], 1)}


def _wait_for_sends(db, committed: dict[str, datetime],  # type: ignore[no-untyped-def]
                    deadline: float) -> dict[str, datetime]:
    """{patient: when its welcome text was sent}, once all went (or at ``deadline``)."""
    while True:
        with db.transaction() as conn:
            rows = conn.exec_driver_sql(
                "SELECT p.external_id, t.sent_at FROM touch_points t JOIN patients p "
                "ON p.id = t.patient_id WHERE t.journey = 'welcome' AND t.step = 'welcome' "
                "AND t.sent_at IS NOT NULL").all()
        sent = {external: read_instant(at) for external, at in rows if external in committed}
        if len(sent) == len(committed) or time.monotonic() > deadline:
            return sent
        time.sleep(0.5)


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "sqlite"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    for woken in (True, False):
        print(run(kind, count, woken=woken), flush=True)
