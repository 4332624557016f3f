"""Several daemons on one PostgreSQL database: every touch point sent exactly once, and a
worker killed with SIGKILL mid-run loses nothing and duplicates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from engine.store.schema import touch_points
from tests.support import (
    LIBRARY_SCHEDULES,
    LIBRARY_TEMPLATES,
    daemon_config,
    patient,
    write_csv,
)

PATIENTS = 3000


def counts(url: str) -> Counter[str]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = conn.execute(select(touch_points.c.status, func.count())
                            .where(touch_points.c.step == "welcome")
                            .group_by(touch_points.c.status)).all()
    engine.dispose()
    return Counter({status: n for status, n in rows})


@pytest.mark.slow
def test_three_daemons_send_each_touch_point_once_even_when_one_is_killed(
        postgres_url: str, tmp_path: Path) -> None:
    from tests.conftest import _truncate

    _truncate(postgres_url)
    daemon_config(tmp_path)
    outbox = tmp_path / "outbox.jsonl"
    env = {**os.environ, "TOUCHPOINT_DATABASE_URL": postgres_url,
           "TOUCHPOINT_SCHEDULES": str(LIBRARY_SCHEDULES),
           "TOUCHPOINT_TEMPLATES": str(LIBRARY_TEMPLATES),
           "TOUCHPOINT_FAKE_OUTBOX": str(outbox), "TOUCHPOINT_FAKE_LATENCY": "10ms",
           "TOUCHPOINT_TICK": "1s", "TOUCHPOINT_SEND_TIMEOUT": "5s",
           "TOUCHPOINT_BATCH_SIZE": "40"}
    people = [patient(f"P{i}", phone=f"+1312555{i:04d}", email="") for i in range(PATIENTS)]
    write_csv(tmp_path / "patients.csv", people, people[0].keys())
    engine_cmd = [sys.executable, "-m", "engine"]
    subprocess.run([*engine_cmd, "import", "patients", "patients.csv"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=120)

    logs = [(tmp_path / f"worker{n}.log").open("w") for n in range(3)]
    workers = [subprocess.Popen([*engine_cmd, "daemon", "--no-watch", "--log-format", "json"],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
               for log in logs]
    try:
        deadline = time.monotonic() + 60
        while counts(postgres_url)["sent"] < PATIENTS // 5:  # well under way
            assert time.monotonic() < deadline, "the workers are not sending"
            time.sleep(0.2)
        workers[0].send_signal(signal.SIGKILL)  # mid-batch, with claims and a send in flight
        workers[0].wait(timeout=10)
        while True:
            now = counts(postgres_url)
            if now["planned"] == 0 and now["sending"] == 0:
                break
            assert time.monotonic() < deadline + 120, f"stuck: {dict(now)}"
            time.sleep(0.5)
        for worker in workers[1:]:
            worker.send_signal(signal.SIGTERM)
        for worker in workers[1:]:
            assert worker.wait(timeout=20) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()

    final = counts(postgres_url)
    assert final["sent"] + final["unknown"] == PATIENTS, final
    assert final["unknown"] <= 1  # at most the one in flight when the worker died
    sent_ids = [json.loads(line)["touch_point_id"] for line in outbox.read_text().splitlines()
                if json.loads(line)["step"] == "welcome"]
    duplicates = [tp for tp, n in Counter(sent_ids).items() if n > 1]
    assert duplicates == []
    assert len(sent_ids) >= final["sent"]  # every recorded send reached the provider
    assert len(sent_ids) <= final["sent"] + final["unknown"]
    # all three workers sent (the fake provider's ids carry the sender's pid), and the
    # survivors stopped cleanly on SIGTERM
    senders = {json.loads(line)["provider_message_id"].split("-")[2]
               for line in outbox.read_text().splitlines()}
    assert senders == {str(w.pid) for w in workers}
    for n in (1, 2):
        text = (tmp_path / f"worker{n}.log").read_text()
        assert '"event": "stopped"' in text, text[-2000:]
