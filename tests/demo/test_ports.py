"""The demo's service ports: chosen free, not held until the child binds them, so a start that lost a port to another
process is retried on new ports, and any other failure is not."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from xsha_common.procs import ChildProcess, ProcessFailedError
from xsha_demo.demo import PORT_ATTEMPTS, ServicePorts, start_on_free_ports


@pytest.fixture
def holders() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def hold(stack: ExitStack, address: str) -> None:
    """Another process's listener on `address`."""
    host, port = address.rsplit(":", 1)
    listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    listener.bind((host, int(port)))
    listener.listen()


def a_child(tmp_path: Path) -> ChildProcess:
    return ChildProcess("service", ["true"], log_path=tmp_path / "service.log")


def test_a_start_that_lost_a_port_to_another_process_is_retried_on_new_ports(
    tmp_path: Path, holders: ExitStack
) -> None:
    ports = ServicePorts.pick(0)
    tried: list[tuple[str, str]] = []
    started = a_child(tmp_path)

    def start(chosen: ServicePorts) -> ChildProcess:
        tried.append((chosen.listen, chosen.metrics))
        if len(tried) == 1:
            hold(holders, chosen.metrics)  # taken between being chosen and being bound
            raise ProcessFailedError("service exited with code 2 before serving")
        return started

    assert start_on_free_ports(start, ports) is started
    assert len(tried) == 2
    assert tried[1] == (ports.listen, ports.metrics)
    assert tried[1][1] != tried[0][1]


def test_a_failure_with_its_ports_free_is_raised_without_a_retry(tmp_path: Path) -> None:
    ports = ServicePorts.pick(0)
    calls = 0

    def start(chosen: ServicePorts) -> ChildProcess:
        nonlocal calls
        calls += 1
        raise ProcessFailedError("service exited with code 2 before serving: bad setting")

    with pytest.raises(ProcessFailedError, match="bad setting"):
        start_on_free_ports(start, ports)
    assert calls == 1


def test_ports_taken_on_every_attempt_give_up_after_the_last(holders: ExitStack) -> None:
    ports = ServicePorts.pick(0)
    listens: list[str] = []

    def start(chosen: ServicePorts) -> ChildProcess:
        listens.append(chosen.listen)
        hold(holders, chosen.listen)
        raise ProcessFailedError(f"cannot listen on {chosen.listen}")

    with pytest.raises(ProcessFailedError, match="cannot listen"):
        start_on_free_ports(start, ports)
    assert len(listens) == PORT_ATTEMPTS
    assert len(set(listens)) == PORT_ATTEMPTS


def test_a_preferred_port_is_used_when_free_and_another_is_picked_when_taken(holders: ExitStack) -> None:
    free = ServicePorts.pick(0)
    preferred = int(free.listen.rsplit(":", 1)[1])
    assert ServicePorts.pick(preferred).listen == f"127.0.0.1:{preferred}"
    hold(holders, f"127.0.0.1:{preferred}")
    assert ServicePorts.pick(preferred).listen != f"127.0.0.1:{preferred}"
    assert ServicePorts(free.listen, free.metrics).taken_by_another()
