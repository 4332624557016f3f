"""Run every benchmark in one go and print the figures (`make bench`).

    python -m bench            # everything (about 14 minutes on 2 cores)
    python -m bench --quick    # the 10k dispatch runs and a 20k/40k planning run only

Results are also written to bench/results/latest.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import dispatch, event_to_send, latency, planning, rss


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    results: list[dict[str, object]] = []

    def record(result: dict[str, object]) -> None:
        print(json.dumps(result), flush=True)
        results.append(result)

    started = time.monotonic()
    sizes = (10_000,) if quick else (10_000, 100_000)
    for size in sizes:
        record(dispatch.run("sqlite", size, 1))
        record(dispatch.run("postgresql", size, 1))
        record(dispatch.run("postgresql", size, 2))
    if quick:
        record(planning.run("sqlite", 20_000, 40_000))
    else:
        record(planning.run("sqlite"))
        record(planning.run("postgresql"))
        for result in rss.run("sqlite") + rss.run("postgresql"):
            record(result)
        record(latency.run("sqlite"))
        for kind in ("sqlite", "postgresql"):
            for woken in (True, False):
                record(event_to_send.run(kind, woken=woken))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps({
        "at": datetime.now(UTC).isoformat(), "machine": platform.platform(),
        "python": platform.python_version(), "seconds": round(time.monotonic() - started),
        "results": results}, indent=2), encoding="utf-8")
    print(f"\nwritten to {out / 'latest.json'} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
