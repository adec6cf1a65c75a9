"""The one-command demo (what `make run` runs) as an operator runs it: a child process that reaches the timeline by
itself, keeps running, and stops cleanly on Ctrl-C with its children stopped and exit code 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from xsha_common.testing import wait_until

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


class DemoProcess:
    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xsha_demo", "--data-dir", str(data_dir), "--ha-port", "0", "--sync-port", "0",
             "--pace", "0", *extra],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "250"},
        )  # fmt: skip
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

    def wait_for(self, text: str, timeout: float) -> None:
        wait_until(lambda: text in self.output() or self.process.poll() is not None, timeout, what=repr(text))
        assert text in self.output(), f"the demo exited ({self.process.returncode}) before {text!r}:\n{self.output()}"

    def finish(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        """After a failure: SIGTERM first, so the demo stops its children (they run in their own sessions)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def timeline_line(output: str, *needles: str) -> str:
    matches = [line for line in output.splitlines() if all(needle in line for needle in needles)]
    assert matches, f"no timeline line with {needles}:\n{output}"
    return matches[0]


def assert_timeline(output: str) -> None:
    restarted = timeline_line(output, "VM_RESTARTED_BY_HYPERVISOR", "i-2-100-VM")
    assert "xs82" in restarted and "no CloudStack action" in restarted
    action = timeline_line(output, "RESTART_VM action", "i-5-100-VM")
    assert "xs61" in action and "HOST_DEAD" in action
    # Nothing asks CloudStack to act in the native cluster, and the non-HA VMs get no action anywhere.
    assert "xs82 (XenServer 8.2)  demo         CloudStack actions in this cluster: 0" in output
    assert "CloudStack actions in this cluster: 1 (RESTART_VM i-5-100-VM)" in output
    assert not [line for line in output.splitlines() if "RESTART_VM action" in line and "i-5-101-VM" in line]
    assert "AckHaAction" in timeline_line(output, "AckHaAction", "SUCCEEDED")


def test_demo_reaches_the_timeline_keeps_running_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "demo"
    demo = DemoProcess(data_dir)
    try:
        demo.wait_for("Press Ctrl-C to stop.", 150)
        output = demo.output()
        assert_timeline(output)
        assert "clusters status" in output and "--token-file" in output
        assert demo.process.poll() is None  # it keeps running for the user to explore
        demo.process.send_signal(signal.SIGINT)
        assert demo.finish() == 0
    finally:
        demo.kill()
    output = demo.output()
    for child in ("ha_service", "sync_service", "xapi_sim"):
        assert f"stopped {child} (exit code 0)" in output
    assert (data_dir / "sync_service.sqlite").exists() and (data_dir / "ha_service.sqlite").exists()
    assert (data_dir / "auth_token").stat().st_mode & 0o077 == 0


def test_demo_exit_after_scenario_flag(tmp_path: Path) -> None:
    demo = DemoProcess(tmp_path / "demo", "--exit-after-scenario")
    try:
        assert demo.finish(180) == 0
    finally:
        demo.kill()
    assert_timeline(demo.output())
    assert "stopped xapi_sim (exit code 0)" in demo.output()
