"""A real SIGTERM to a server process: NOT_SERVING first, the in-flight call completes, callbacks run, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xsha_common.interceptors import bearer_token_metadata

SCRIPT = Path(__file__).with_name("signal_server_script.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_drains_in_flight_calls_and_runs_shutdown_callbacks() -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        assert process.stdout is not None
        port = json.loads(process.stdout.readline())["port"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, futures.ThreadPoolExecutor(1) as pool:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            block = channel.unary_unary("/xsha.test.Signal/Block", None, None)
            in_flight = pool.submit(block, b"", metadata=bearer_token_metadata("signal-token"), timeout=60)
            assert process.stdout.readline().strip() == "block entered"

            process.send_signal(signal.SIGTERM)

            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert in_flight.result(timeout=60) == b"finished after SIGTERM"
        remaining_output, errors = process.communicate(timeout=60)
        assert process.returncode == 0, errors
        assert remaining_output.splitlines() == ["callback ran", "exited"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
