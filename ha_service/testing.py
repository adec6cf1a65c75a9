"""ha_service in-process for tests, the CLI's tests, the demo and benchmarks.

    with running_ha_service(db_url, sync_address) as ha:
        stub = ha.stub()
        stub.DecideVmDeployment(...)

The clock is injectable (`ManualClock`) so time rules (grace periods, retries) are driven without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import grpc

from ha_service.app import HaService, HaServiceOptions
from ha_service.controller import Controller, ControllerConfig
from ha_service.settings import HaSettings
from ha_service.sync_client import SyncClientConfig
from xsha_api.v1 import ha_service_pb2_grpc
from xsha_common.interceptors.auth import bearer_token_metadata
from xsha_common.server import ServerSettings

T = TypeVar("T")

TEST_TOKEN = "ha-test-token"


class ManualClock:
    """A clock that moves only when told to (thread-safe); starts at the real time."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Polls `condition` until it returns something truthy (returned); AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what or condition}")
        time.sleep(interval)


class RunningHaService:
    def __init__(self, service: HaService, token: str | None) -> None:
        self.service = service
        self.token = token
        self.channel = grpc.insecure_channel(service.address)

    @property
    def address(self) -> str:
        return self.service.address

    @property
    def controller(self) -> Controller:
        assert self.service.controller is not None, "the controller is off"
        return self.service.controller

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer_token_metadata(self.token) if self.token else ()

    def stub(self) -> ha_service_pb2_grpc.HaPolicyServiceStub:
        return _AuthStub(self.channel, self.metadata)  # type: ignore[return-value]

    def close(self) -> None:
        self.channel.close()
        self.service.stop()


class _AuthStub:
    """A HaPolicyServiceStub whose calls carry the bearer token and a default timeout."""

    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self._stub = ha_service_pb2_grpc.HaPolicyServiceStub(channel)
        self._metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., object]:
        method = getattr(self._stub, name)

        def call(request: object, **kwargs: object) -> object:
            kwargs.setdefault("metadata", self._metadata)
            if name != "WatchHaEvents":
                kwargs.setdefault("timeout", 30)
            return method(request, **kwargs)

        return call


def test_options(
    db_url: str,
    sync_address: str,
    *,
    sync_token: str | None = None,
    token: str | None = TEST_TOKEN,
    controller_enabled: bool = True,
    settings_defaults: HaSettings | None = None,
    tick_interval: float = 0.1,
    controller_lease_seconds: float = 10.0,
) -> HaServiceOptions:
    return HaServiceOptions(
        db_url=db_url,
        sync=SyncClientConfig(address=sync_address, token=sync_token, call_timeout=5.0, retries=2),
        server=ServerSettings(
            listen_address="127.0.0.1:0",
            auth_tokens=(token,) if token else (),
            auth_disabled=not token,
            shutdown_grace_seconds=0.5,
        ),
        controller_enabled=controller_enabled,
        controller=ControllerConfig(
            tick_interval=tick_interval,
            watch_bookmark_interval=0.2,
            reconnect_initial_backoff=0.05,
            reconnect_max_backoff=0.5,
        ),
        settings_defaults=settings_defaults or HaSettings(),
        auto_upgrade=True,
        bookmark_interval=0.5,
        controller_lease_seconds=controller_lease_seconds,
    )


@contextmanager
def running_ha_service(
    db_url: str,
    sync_address: str,
    *,
    clock: Callable[[], float] = time.time,
    options: HaServiceOptions | None = None,
    **option_overrides: object,
) -> Iterator[RunningHaService]:
    """Migrates `db_url`, starts ha_service on a free loopback port (controller on), stops it afterwards."""
    chosen = options or test_options(db_url, sync_address, **option_overrides)  # type: ignore[arg-type]
    if options is not None and option_overrides:
        chosen = replace(options, **option_overrides)  # type: ignore[arg-type]
    service = HaService(chosen, clock=clock)
    service.start()
    running = RunningHaService(service, chosen.server.auth_tokens[0] if chosen.server.auth_tokens else None)
    try:
        yield running
    finally:
        running.close()
