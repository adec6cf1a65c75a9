"""`python -m bench` / `make bench`: run the benchmark figures and print one JSON document (also --out FILE).

    python -m bench                         # every figure, full size (~15-20 min on 2 cores)
    python -m bench --quick                 # every figure, small sizes, one repeat (~2-3 min)
    python -m bench --figures 1,3 --dbs sqlite,postgresql --repeats 5
    python -m bench --size ingest_vms=5000 --size initial_sync_vms=20000

Databases: SQLite always; MariaDB / PostgreSQL from XSHA_BENCH_MYSQL_URL / XSHA_BENCH_POSTGRES_URL (defaults: the
local servers). Each run gets a fresh database, dropped afterwards. Progress goes to stderr, the document to stdout.
Benchmarks are not tests: nothing here fails on a missed target; `met` says whether it was met.
To look inside a run, XSHA_BENCH_SYNC_METRICS_ADDRESS / XSHA_BENCH_HA_METRICS_ADDRESS (host:port) serve the
sync_service / ha_service child's /metrics there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    fig_decisions,
    fig_failover,
    fig_ingest,
    fig_initial_sync,
    fig_latency,
    fig_many_pools,
    fig_memory,
)
from bench.common import DB_BACKENDS, BenchOptions, FigureResult, log, machine_info

FigureRunner = Callable[[BenchOptions], list[FigureResult]]

FIGURES: dict[int, tuple[str, FigureRunner]] = {
    1: ("ingest", fig_ingest.run),
    2: ("detection latency", fig_latency.run),
    3: ("initial sync", fig_initial_sync.run),
    4: ("decisions", fig_decisions.run),
    5: ("failover", fig_failover.run),
    6: ("memory", fig_memory.run),
    7: ("many pools", fig_many_pools.run),
}

SIZE_NAMES = (
    "ingest_vms",
    "ingest_start_rate",
    "ingest_window_ms",
    "latency_vms",
    "latency_rate",
    "initial_sync_vms",
    "decision_seconds",
    "decision_clients",
    "failover_vms",
    "memory_pools",
    "memory_pool_vms",
    "memory_managed_vms",
    "many_pools",
    "many_pool_vms",
    "many_pools_rate",
    "many_pools_seconds",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--figures", default="1,2,3,4,5,6,7", help="comma-separated figure numbers (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a ~2-3 minute run")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default: 3, quick: 1)")
    parser.add_argument(
        "--dbs",
        default="sqlite,mysql,postgresql",
        help="databases for figure 1 (the first one is used by the other figures); default sqlite,mysql,postgresql",
    )
    parser.add_argument(
        "--size",
        action="append",
        default=[],
        metavar="NAME=N",
        help=f"override a size: {', '.join(SIZE_NAMES)}",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results.json"), help="also write the JSON here")
    parser.add_argument("--work-dir", type=Path, default=None, help="logs and SQLite files (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (child logs) afterwards")
    args = parser.parse_args(argv)
    return args


def build_options(args: argparse.Namespace, work_dir: Path) -> BenchOptions:
    dbs = tuple(db.strip() for db in args.dbs.split(",") if db.strip())
    for db in dbs:
        if db not in DB_BACKENDS:
            raise SystemExit(f"--dbs: unknown database {db!r} (choose from {', '.join(DB_BACKENDS)})")
    if not dbs:
        dbs = ("sqlite",)
    sizes: dict[str, int] = {}
    for item in args.size:
        name, _, value = item.partition("=")
        if name not in SIZE_NAMES or not value.isdigit():
            raise SystemExit(f"--size {item!r}: expected NAME=N with NAME one of {', '.join(SIZE_NAMES)}")
        sizes[name] = int(value)
    return BenchOptions(quick=args.quick, repeats=args.repeats, dbs=dbs, work_dir=work_dir, sizes=sizes)


def run(options: BenchOptions, figures: Sequence[int]) -> dict[str, Any]:
    started = time.monotonic()
    document: dict[str, Any] = {
        "suite": "xsha benchmarks",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "quick": options.quick,
        "machine": {**machine_info(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "figures": [],
    }
    for number in figures:
        name, runner = FIGURES[number]
        figure_started = time.monotonic()
        try:
            results = runner(options)
        except Exception as error:
            log(f"figure {number} ({name}) failed: {error}")
            traceback.print_exc(file=sys.stderr)
            results = [FigureResult(number, name, "", "", [], False, db=options.primary_db, error=repr(error))]
        for result in results:
            doc = result.to_json()
            doc["elapsed_s"] = round(time.monotonic() - figure_started, 1)
            document["figures"].append(doc)
        log(f"figure {number} ({name}) done in {time.monotonic() - figure_started:.0f} s")
    document["elapsed_s"] = round(time.monotonic() - started, 1)
    document["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    document["met"] = {
        f"{doc['figure']}:{doc['db']}:{doc['wire']}:{doc['name']}": doc["met"] for doc in document["figures"]
    }
    return document


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # so every `with` block stops its child processes


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    args = parse_args(argv)
    try:
        figures = [int(item) for item in args.figures.split(",") if item.strip()]
    except ValueError:
        raise SystemExit("--figures: comma-separated numbers, e.g. 1,3,4") from None
    unknown = [n for n in figures if n not in FIGURES]
    if unknown:
        raise SystemExit(f"--figures: unknown figure(s) {unknown}; known: {sorted(FIGURES)}")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="xsha-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    options = build_options(args, work_dir.resolve())
    log(f"work dir {work_dir} (child logs)")
    try:
        document = run(options, figures)
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        log(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
