"""Runs xsha's programs as child processes: the demo, the tests and the benchmarks start services this way.

A child is started with its own process group (so a kill reaches anything it spawned), its output goes to a log
file, and readiness is the standard gRPC health service answering SERVING, as an orchestrator would check it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


class ProcessFailedError(RuntimeError):
    """A child exited or never became ready; the message carries the tail of its log."""


def health_status(
    target: str, *, timeout: float = 1.0, credentials: grpc.ChannelCredentials | None = None, service: str = ""
) -> str | None:
    """The health status name a gRPC server reports (e.g. "SERVING"), or None when it does not answer."""
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.RpcError:
        return None
    finally:
        channel.close()


class ChildProcess:
    """One program run as a child process with its output in `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def python_module(
        cls,
        name: str,
        module: str,
        args: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ChildProcess:
        """A child running `python -m module args` with this interpreter (the venv's)."""
        return cls(name, [sys.executable, "-m", module, *args], log_path=log_path, env=env, cwd=cwd)

    @property
    def pid(self) -> int:
        if self._process is None:
            raise ProcessFailedError(f"{self.name} was not started")
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_until_serving(
        self, target: str, *, timeout: float = 30.0, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        """Waits until the child's gRPC health service answers SERVING; fails early if the child exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise ProcessFailedError(
                    f"{self.name} exited with code {self.returncode} before serving:\n{self.log_tail()}"
                )
            if health_status(target, credentials=credentials) == "SERVING":
                return
            time.sleep(0.1)
        raise ProcessFailedError(f"{self.name} did not serve on {target} within {timeout:.0f} s:\n{self.log_tail()}")

    def send_signal(self, signum: int) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL after `timeout`; returns the exit code."""
        if self._process is None:
            return 0
        self.send_signal(signal.SIGTERM)
        try:
            return self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            return self._process.wait(timeout)

    def kill(self) -> int:
        """kill -9: no shutdown code runs, as on a crash."""
        if self._process is None:
            return 0
        self.send_signal(signal.SIGKILL)
        return self._process.wait(15)

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
