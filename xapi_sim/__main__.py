"""`python -m xapi_sim --scenario FILE [--ready-file PATH]`: serve the scenario's pools until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from xapi_sim.simulator import Simulator

DEFAULT_SCENARIO = Path(__file__).with_name("scenarios") / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xapi-sim", description="A XenServer XAPI simulator (XML-RPC + JSON-RPC).")
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="scenario YAML (default: demo)")
    parser.add_argument("--ready-file", type=Path, help="write the pools' host URLs here as JSON once serving")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    sim = Simulator.from_scenario(args.scenario).start()
    # The scenario's pools and the modules live as long as the process: a full collection walking them stopped
    # the simulator for up to 200 ms with 20,000 VMs, which the benchmarks would measure as xsha's latency. (What
    # xsha_common.gc_tuning does for the services, written out: the simulator imports nothing of xsha.)
    gc.collect()
    gc.freeze()
    info = sim.ready_info()
    # One machine-readable line a parent process can wait for, then the optional file.
    print("XAPI_SIM_READY " + json.dumps(info, separators=(",", ":")), flush=True)
    if args.ready_file:
        sim.write_ready_file(args.ready_file)

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(0.5):  # a timed wait keeps the main thread responsive to signals
        pass
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
