"""ha_service's client of sync_service (HypervisorSyncService): deadlines, bearer token, TLS, retries, error mapping.

ha_service calls sync_service, never the reverse. Errors come out as the exceptions below, so callers never handle
raw gRPC errors: UNAVAILABLE/DEADLINE_EXCEEDED -> SyncUnavailableError (after retries for idempotent calls),
NOT_FOUND -> SyncNotFoundError, OUT_OF_RANGE -> SyncOutOfRangeError, an XAPI refusal of an HA config ->
XapiRefusedError.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import duration_pb2

from xsha_api.v1 import sync_service_pb2, sync_service_pb2_grpc
from xsha_common.errors import error_details
from xsha_common.interceptors.auth import bearer_token_metadata
from xsha_common.tls import client_credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_LIST_PAGE_SIZE = 1000
# ErrorInfo metadata keys sync_service may use to carry the XAPI error code of a refused write.
_XAPI_CODE_KEYS = ("xapi_code", "xapi_error_code", "xapi_error", "xapi_code", "code")


class SyncError(Exception):
    """A sync_service call failed."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class SyncUnavailableError(SyncError):
    """sync_service is down or did not answer in time."""


class SyncNotFoundError(SyncError):
    """sync_service does not know the pool / VM."""


class SyncOutOfRangeError(SyncError):
    """The watch revision is no longer retained: list again and watch from the list's revision."""


class XapiRefusedError(SyncError):
    """XAPI refused the HA config write (e.g. HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN)."""

    def __init__(self, xapi_code: str, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code=code, reason=xapi_code)
        self.xapi_code = xapi_code


@dataclass(frozen=True)
class SyncClientConfig:
    address: str
    token: str | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    call_timeout: float = 10.0
    retries: int = 3
    retry_backoff: float = 0.2


def _rpc_error_text(error: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    code = error.code() if isinstance(error, grpc.Call) else None
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    return code, details or str(code)


def map_rpc_error(error: grpc.RpcError, doing: str) -> SyncError:
    """The SyncError matching a failed sync_service call."""
    code, details = _rpc_error_text(error)
    info, _ = error_details(error)
    reason = str(info.reason) if info is not None else ""
    message = f"sync_service {doing} failed ({code.name if code else 'ERROR'}): {details}"
    if code in _RETRYABLE or code is grpc.StatusCode.CANCELLED:
        return SyncUnavailableError(message, code=code, reason=reason)
    if code is grpc.StatusCode.NOT_FOUND:
        return SyncNotFoundError(message, code=code, reason=reason)
    if code is grpc.StatusCode.OUT_OF_RANGE:
        return SyncOutOfRangeError(message, code=code, reason=reason)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED, grpc.StatusCode.INVALID_ARGUMENT):
        xapi_code = ""
        if info is not None:
            metadata = dict(info.metadata)
            xapi_code = next((metadata[k] for k in _XAPI_CODE_KEYS if metadata.get(k)), "")
        return XapiRefusedError(xapi_code or reason or (code.name if code else "XAPI_REFUSED"), details, code=code)
    return SyncError(message, code=code, reason=reason)


class SyncClient:
    """Thread-safe: one channel, one stub; every call carries the token and a deadline."""

    def __init__(self, config: SyncClientConfig, *, channel: grpc.Channel | None = None) -> None:
        self.config = config
        if channel is None:
            if config.tls:
                credentials = client_credentials(config.tls_ca_file, config.tls_cert_file, config.tls_key_file)
                channel = grpc.secure_channel(config.address, credentials)
            else:
                channel = grpc.insecure_channel(config.address)
        self._channel = channel
        self._stub = sync_service_pb2_grpc.HypervisorSyncServiceStub(channel)
        self._metadata: tuple[tuple[str, str], ...] = bearer_token_metadata(config.token) if config.token else ()
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._channel.close()

    # --- unary calls ------------------------------------------------------------------------------------------

    def _call(self, doing: str, fn: Callable[..., T], request: Any, *, retry: bool = True) -> T:
        attempts = max(1, self.config.retries) if retry else 1
        delay = self.config.retry_backoff
        for attempt in range(1, attempts + 1):
            try:
                return fn(request, timeout=self.config.call_timeout, metadata=self._metadata)
            except grpc.RpcError as error:
                code, _ = _rpc_error_text(error)
                if code in _RETRYABLE and attempt < attempts and not self._closed.is_set():
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay *= 2
                    continue
                raise map_rpc_error(error, doing) from error
        raise AssertionError("unreachable")

    def get_pool(self, cluster_id: str) -> sync_service_pb2.Pool:
        request = sync_service_pb2.GetPoolRequest(cluster_id=cluster_id)
        response: sync_service_pb2.GetPoolResponse = self._call(f"GetPool({cluster_id})", self._stub.GetPool, request)
        return response.pool

    def get_vm(self, vm_uuid: str) -> sync_service_pb2.Vm:
        """The mirror's view of one VM (SyncNotFoundError when sync_service does not know it)."""
        request = sync_service_pb2.GetVmRequest(uuid=vm_uuid)
        response: sync_service_pb2.GetVmResponse = self._call(f"GetVm({vm_uuid})", self._stub.GetVm, request)
        return response.vm

    def list_pools(self) -> tuple[list[sync_service_pb2.Pool], int]:
        pools: list[sync_service_pb2.Pool] = []
        token, revision = "", 0
        while True:
            request = sync_service_pb2.ListPoolsRequest(page_size=_LIST_PAGE_SIZE, page_token=token)
            page: sync_service_pb2.ListPoolsResponse = self._call("ListPools", self._stub.ListPools, request)
            pools.extend(page.pools)
            revision = revision or page.revision
            token = page.next_page_token
            if not token:
                return pools, revision

    def list_hosts(self, cluster_id: str = "") -> tuple[list[sync_service_pb2.Host], int]:
        hosts: list[sync_service_pb2.Host] = []
        token, revision = "", 0
        while True:
            request = sync_service_pb2.ListHostsRequest(
                cluster_id=cluster_id, page_size=_LIST_PAGE_SIZE, page_token=token
            )
            page: sync_service_pb2.ListHostsResponse = self._call("ListHosts", self._stub.ListHosts, request)
            hosts.extend(page.hosts)
            revision = revision or page.revision
            token = page.next_page_token
            if not token:
                return hosts, revision

    def list_vms(self, cluster_id: str = "", name_prefix: str = "") -> tuple[list[sync_service_pb2.Vm], int]:
        """Every VM (all pages). The revision is the first page's: watching from it misses nothing."""
        vms: list[sync_service_pb2.Vm] = []
        token, revision = "", 0
        while True:
            request = sync_service_pb2.ListVmsRequest(
                cluster_id=cluster_id, name_prefix=name_prefix, page_size=_LIST_PAGE_SIZE, page_token=token
            )
            page: sync_service_pb2.ListVmsResponse = self._call("ListVms", self._stub.ListVms, request)
            vms.extend(page.vms)
            revision = revision or page.revision
            token = page.next_page_token
            if not token:
                return vms, revision

    def set_vm_ha_config(
        self, vm_uuid: str, ha_restart_priority: str, order: int, start_delay_seconds: int, request_id: str = ""
    ) -> sync_service_pb2.Vm:
        """Writes the HA config through XAPI; the VM as XAPI then reports it. Idempotent, so retried."""
        request = sync_service_pb2.SetVmHaConfigRequest(
            vm_uuid=vm_uuid,
            ha_restart_priority=ha_restart_priority,
            order=order,
            start_delay_seconds=start_delay_seconds,
            request_id=request_id,
        )
        response: sync_service_pb2.SetVmHaConfigResponse = self._call(
            f"SetVmHaConfig({vm_uuid})", self._stub.SetVmHaConfig, request
        )
        return response.vm

    # --- watch ------------------------------------------------------------------------------------------------

    def watch(
        self,
        since_revision: int,
        *,
        kinds: Iterable[Any] = (),
        bookmark_interval: float = 1.0,
        max_changes_per_response: int = 0,
    ) -> WatchStream:
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(max(100, int(bookmark_interval * 1000)))
        request = sync_service_pb2.WatchChangesRequest(
            since_revision=since_revision,
            kinds=list(kinds),
            bookmark_interval=interval,
            max_changes_per_response=max_changes_per_response,
        )
        call = self._stub.WatchChanges(request, metadata=self._metadata)
        return WatchStream(call)


class WatchStream:
    """An open WatchChanges stream: iterate for responses; cancel() from any thread ends it."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        self._call.cancel()

    def __iter__(self) -> Iterator[sync_service_pb2.WatchChangesResponse]:
        try:
            yield from self._call
        except grpc.RpcError as error:
            raise map_rpc_error(error, "WatchChanges") from error
