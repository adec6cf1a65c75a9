"""One set of running services for every CLI test: xapi_sim with three small pools, sync_service and ha_service
in-process (with bearer tokens, SQLite), the pools registered and synced. The CLI runs against them through typer's
CliRunner with the connection options in the environment, as an operator would set them."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from ha_service.testing import RunningHaService, running_ha_service
from sync_service.testing import RunningSyncService, start_sync_service
from xapi_sim import Simulator
from xsha_cli.app import app
from xsha_common.testing import wait_until

TOKEN = "cli-test-token-0123456789"

SCENARIO: dict[str, Any] = {
    "time_scale": 0.05,
    "pools": [
        {
            "name": "xs82",
            "version": "citrix-hypervisor-8.2",
            "credentials": {"root": "password"},
            "jsonrpc": True,
            "ha_enabled": True,
            "ha_host_failures_to_tolerate": 1,
            "hosts": {"count": 3, "memory_gib": 64, "name_pattern": "xs82-host-{n}"},
            "vms": [
                {"name": "i-2-10-VM", "memory_gib": 2, "host": 1},
                {"name": "i-2-11-VM", "memory_gib": 2, "host": 2},
                {"name": "i-2-12-VM", "memory_gib": 1, "power_state": "Halted"},
                {"name": "r-4-VM", "memory_mib": 256, "host": 0},
            ],
        },
        {
            "name": "xs61",
            "version": "xenserver-6.1",
            "credentials": {"root": "password"},
            "jsonrpc": False,
            "hosts": {"count": 2, "memory_gib": 32, "name_pattern": "xs61-host-{n}"},
            "vms": [{"count": 3, "name_pattern": "i-5-{n}-VM", "memory_mib": 1024, "resident": "spread"}],
        },
        {
            "name": "scratch",
            "version": "xcp-ng-8.2",
            "credentials": {"root": "password"},
            "hosts": {"count": 1, "memory_gib": 16, "name_pattern": "scratch-host-{n}"},
            "vms": [],
        },
    ],
}

NATIVE_CLUSTER = "c-xs82"
OLD_CLUSTER = "c-xs61"


@dataclass
class Services:
    sim: Simulator
    sync: RunningSyncService
    ha: RunningHaService
    env: dict[str, str]

    def xsha(self, command: str, *, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        """Run `xsha COMMAND` (a shell-like string) with the services' connection in the environment."""
        return CliRunner().invoke(app, shlex.split(command), env={**self.env, **(env or {})}, input=input)


@pytest.fixture(scope="package")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data = tmp_path_factory.mktemp("cli-services")
    with (
        Simulator.from_scenario(SCENARIO) as sim,
        start_sync_service(f"sqlite:///{data / 'sync.sqlite'}", auth_token=TOKEN) as sync,
        running_ha_service(f"sqlite:///{data / 'ha.sqlite'}", sync.address, token=TOKEN, sync_token=TOKEN) as ha,
    ):
        for cluster, pool in ((NATIVE_CLUSTER, "xs82"), (OLD_CLUSTER, "xs61")):
            sync.register_pool(cluster, sim.master_url(pool), "root", "password")
        for cluster in (NATIVE_CLUSTER, OLD_CLUSTER):
            sync.wait_watching(cluster)
        env = {
            "XSHA_HA_ADDRESS": ha.address,
            "XSHA_SYNC_ADDRESS": sync.address,
            "XSHA_TOKEN": TOKEN,
            # Wide enough that rich never folds a cell: tests look for whole names.
            "COLUMNS": "300",
        }
        yield Services(sim, sync, ha, env)


# `python -m xsha_cli` with Ctrl-C's default handler, as an operator's interactive shell leaves it. A test run started
# as a background job inherits SIGINT ignored (POSIX shells ignore it for background jobs when job control is off),
# and Python started with SIGINT ignored installs no KeyboardInterrupt handler: the watches would never see Ctrl-C.
_RUN_CLI_WITH_CTRL_C = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('xsha_cli', run_name='__main__', alter_sys=True)"
)


class CliProcess:
    """`python -m xsha_cli ...` as a child process whose stdout lines are collected by a thread (for watches)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _RUN_CLI_WITH_CTRL_C, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # So a child that hangs can be made to print every thread's stack (see `interrupt`).
            env={**os.environ, **env, "PYTHONFAULTHANDLER": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        wait_until(
            lambda: text in self.output() or self.process.poll() is not None, timeout, what=f"{text!r} in the output"
        )
        if text not in self.output():
            stderr = self.process.stderr.read() if self.process.stderr else ""
            raise AssertionError(
                f"xsha exited ({self.process.returncode}) without {text!r}:\n{self.output()}\n{stderr}"
            )

    def interrupt(self, timeout: float = 15.0) -> int:
        """Ctrl-C, as an operator ends a watch; the exit code. A child still running after `timeout` is aborted
        (its fault handler prints every thread's stack) and the failure carries that stack and its output."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGABRT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            stderr = self.process.stderr.read() if self.process.stderr else ""  # stdout is the reader thread's
            raise AssertionError(
                f"xsha did not exit within {timeout:.0f} s of Ctrl-C; its threads when aborted:\n{stderr}\n"
                f"output:\n{self.output()}"
            ) from None
        self._reader.join(5)
        return code

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
