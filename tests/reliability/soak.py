"""The long soak: the fault run of tests/reliability/test_fault_run.py for many more rounds (not part of `make test`).

    .venv/bin/python -m tests.reliability.soak --minutes 30            # random seed, printed first
    .venv/bin/python -m tests.reliability.soak --rounds 500 --seed 42  # a reproducible schedule
    XSHA_FAULT_DB=postgresql XSHA_TEST_POSTGRES_URL=... .venv/bin/python -m tests.reliability.soak --minutes 10

Exit code 0 when every invariant held in every round, 1 otherwise; the summary is printed at the end and the
services' logs are kept under --dir (default: a new directory under /tmp).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.reliability.fault_run import RunConfig, run_fault_rounds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="schedule seed (default: XSHA_FAULT_SEED or random)")
    parser.add_argument("--rounds", type=int, default=100, help="rounds at least (default 100)")
    parser.add_argument("--minutes", type=float, default=0.0, help="keep running rounds this long (0: --rounds)")
    parser.add_argument("--vms-per-pool", type=int, default=100)
    parser.add_argument("--db-cut-seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None, help="working directory (logs), kept afterwards")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(os.environ.get("XSHA_FAULT_SEED", random.randrange(2**31)))
    directory = args.dir or Path(tempfile.mkdtemp(prefix="xsha-soak-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"soak: seed {seed}, logs in {directory}", flush=True)
    started = time.monotonic()
    config = RunConfig(
        seed=seed,
        rounds=args.rounds,
        max_minutes=args.minutes,
        vms_per_pool=args.vms_per_pool,
        db_cut_seconds=args.db_cut_seconds,
    )
    summary = run_fault_rounds(
        directory, config, log=lambda m: print(f"+{time.monotonic() - started:8.1f}s {m}", flush=True)
    )
    print("\n".join(summary.lines()))
    return 0 if not summary.violations else 1


if __name__ == "__main__":
    sys.exit(main())
