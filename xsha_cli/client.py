"""The CLI's gRPC plumbing: channels, TLS credentials, the bearer token, calls with deadlines, and errors as one line.

Every RPC of a command goes through `Client.call` (unary) or `Client.stream` (server streaming). A failed call is
printed as one line on stderr (the gRPC code, the server's message and its ErrorInfo reason) and ends the command
with an exit code that tells a script what kind of failure it was (see `ExitCode`).
"""

from __future__ import annotations

import enum
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
import typer

from xsha_api.v1 import ha_service_pb2_grpc, sync_service_pb2_grpc
from xsha_common.errors import error_details
from xsha_common.tls import client_credentials

DEFAULT_HA_ADDRESS = "127.0.0.1:50052"
DEFAULT_SYNC_ADDRESS = "127.0.0.1:50061"
DEFAULT_TIMEOUT_SECONDS = 30.0
PAGE_SIZE = 500

ResponseT = TypeVar("ResponseT")


class ExitCode(enum.IntEnum):
    """Exit codes of `xsha`, documented in the README."""

    OK = 0
    # The service answered with an error (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT, ...).
    RPC_ERROR = 1
    # Wrong command line (unknown option, bad value); typer's own code for usage errors.
    USAGE = 2
    # The service could not be reached, or answered UNAVAILABLE / DEADLINE_EXCEEDED: retrying later may work.
    UNAVAILABLE = 3
    # UNAUTHENTICATED or PERMISSION_DENIED: check the token and the client certificate.
    AUTH = 4
    # UNIMPLEMENTED: the service does not offer this RPC (yet).
    UNIMPLEMENTED = 5


_EXIT_CODES = {
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.AUTH,
    grpc.StatusCode.UNIMPLEMENTED: ExitCode.UNIMPLEMENTED,
}


def exit_code_for(code: grpc.StatusCode) -> ExitCode:
    return _EXIT_CODES.get(code, ExitCode.RPC_ERROR)


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach the two services; filled from flags and XSHA_* environment variables."""

    ha_address: str = DEFAULT_HA_ADDRESS
    sync_address: str = DEFAULT_SYNC_ADDRESS
    token: str | None = field(default=None, repr=False)
    # TLS is on when asked for, or when any TLS file is given.
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # Name to verify in the server certificate when it differs from the address's host.
    tls_server_name: str | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(path is not None for path in (self.ca_file, self.cert_file, self.key_file))

    def problems(self) -> list[str]:
        found: list[str] = []
        if (self.cert_file is None) != (self.key_file is None):
            found.append("a client certificate needs both --cert-file and --key-file (mutual TLS)")
        for label, path in (
            ("--ca-file", self.ca_file),
            ("--cert-file", self.cert_file),
            ("--key-file", self.key_file),
        ):
            if path is not None and not path.is_file():
                found.append(f"{label}: file {path} does not exist")
        if self.timeout <= 0:
            found.append("--timeout must be a positive number of seconds")
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            found.append("the token is empty or has surrounding whitespace; check --token / XSHA_TOKEN")
        return found


def read_token_file(path: Path) -> str:
    """The first non-comment line of a token file (the format the services' auth_token_file uses)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise ValueError(f"{path} holds no token; put the token on the first line")


def open_channel(address: str, options: ConnectionOptions) -> grpc.Channel:
    """A channel to `address` with the TLS settings of `options` (plaintext when TLS is off)."""
    if not options.uses_tls:
        return grpc.insecure_channel(address)
    credentials = client_credentials(options.ca_file, options.cert_file, options.key_file)
    channel_options: list[tuple[str, Any]] = []
    if options.tls_server_name:
        channel_options.append(("grpc.ssl_target_name_override", options.tls_server_name))
    return grpc.secure_channel(address, credentials, options=channel_options)


@dataclass(frozen=True)
class Endpoint:
    """One of the two services: its name for messages, address, and the flag/variable that sets the address."""

    service: str
    address: str
    flag: str
    env_var: str


class Client:
    """Stubs of both services over lazily opened channels, with the token and a deadline on every call."""

    def __init__(self, options: ConnectionOptions) -> None:
        self.options = options
        self._channels: dict[str, grpc.Channel] = {}
        self.ha_endpoint = Endpoint("ha_service", options.ha_address, "--ha-address", "XSHA_HA_ADDRESS")
        self.sync_endpoint = Endpoint("sync_service", options.sync_address, "--sync-address", "XSHA_SYNC_ADDRESS")

    def _channel(self, address: str) -> grpc.Channel:
        if address not in self._channels:
            self._channels[address] = open_channel(address, self.options)
        return self._channels[address]

    @property
    def ha(self) -> ha_service_pb2_grpc.HaPolicyServiceStub:
        return ha_service_pb2_grpc.HaPolicyServiceStub(self._channel(self.options.ha_address))

    @property
    def sync(self) -> sync_service_pb2_grpc.HypervisorSyncServiceStub:
        return sync_service_pb2_grpc.HypervisorSyncServiceStub(self._channel(self.options.sync_address))

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.options.token}"),) if self.options.token else ()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def endpoint_of(self, method: Any) -> Endpoint:
        """Which service a stub method belongs to (for error messages)."""
        raw = getattr(method, "_method", b"")
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        return self.sync_endpoint if "HypervisorSyncService" in name else self.ha_endpoint

    def call(self, method: Callable[..., ResponseT], request: Any, *, timeout: float | None = None) -> ResponseT:
        """A unary call; a failure is printed as one line and ends the command with its exit code."""
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self.options.timeout)
        except grpc.RpcError as error:
            fail_rpc(error, self.endpoint_of(method))

    def try_call(
        self,
        method: Callable[..., ResponseT],
        request: Any,
        *,
        allow: frozenset[grpc.StatusCode],
        timeout: float | None = None,
    ) -> ResponseT | grpc.RpcError:
        """Like `call`, but a failure with a code in `allow` is returned to the caller instead of ending it."""
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self.options.timeout)
        except grpc.RpcError as error:
            if rpc_code(error) in allow:
                return error
            fail_rpc(error, self.endpoint_of(method))

    def paged(
        self, method: Callable[..., Any], request: Any, items_field: str, *, limit: int | None = None
    ) -> tuple[list[Any], int]:
        """Every item of a paged list (up to `limit`), following next_page_token; with the lowest revision any
        page reported (0 when the list has none), which is where a watch must start to miss nothing."""
        items: list[Any] = []
        revisions: list[int] = []
        request.page_size = min(limit, PAGE_SIZE) if limit else PAGE_SIZE
        while True:
            response = self.call(method, request)
            items.extend(getattr(response, items_field))
            if "revision" in response.DESCRIPTOR.fields_by_name:
                revisions.append(int(response.revision))
            if not response.next_page_token or (limit is not None and len(items) >= limit):
                break
            request.page_token = response.next_page_token
        return (items[:limit] if limit is not None else items), (min(revisions) if revisions else 0)

    def stream(self, method: Callable[..., Any], request: Any) -> Stream:
        """A server-streaming call without deadline (watches, migrations); see `Stream`."""
        return Stream(self, method, request)


class Stream:
    """An open server stream. Iterate it; `cancel()` (from any thread) ends the iteration quietly.

    Failures end the command like `Client.call`, except codes listed in `allow`, which are raised as
    `grpc.RpcError` for the caller to handle (e.g. OUT_OF_RANGE on a watch, to list again).
    """

    def __init__(self, client: Client, method: Callable[..., Any], request: Any) -> None:
        self._client = client
        self._endpoint = client.endpoint_of(method)
        self._call: Any = method(request, metadata=client.metadata)
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def responses(self, allow: frozenset[grpc.StatusCode] = frozenset()) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as error:
            if self._cancelled.is_set() and rpc_code(error) is grpc.StatusCode.CANCELLED:
                return
            if rpc_code(error) in allow:
                raise
            fail_rpc(error, self._endpoint)
        finally:
            if not self._cancelled.is_set():
                self._call.cancel()


def rpc_code(error: grpc.RpcError) -> grpc.StatusCode:
    code = error.code() if isinstance(error, grpc.Call) else None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def describe_rpc_error(error: grpc.RpcError, endpoint: Endpoint) -> str:
    """One line: `CODE: message [REASON]`, or for an unreachable service what to check."""
    code = rpc_code(error)
    details = (error.details() if isinstance(error, grpc.Call) else None) or ""
    error_info, bad_request = error_details(error)
    reason = f" [{error_info.reason}]" if error_info is not None and error_info.reason else ""
    if code is grpc.StatusCode.UNAVAILABLE and error_info is None:
        return (
            f"UNAVAILABLE: cannot reach {endpoint.service} at {endpoint.address} ({details.strip()}); "
            f"check that it runs and {endpoint.flag} / {endpoint.env_var}, TLS and certificate options"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and error_info is None:
        return (
            f"DEADLINE_EXCEEDED: {endpoint.service} at {endpoint.address} did not answer in time; "
            "retry, or raise --timeout"
        )
    if code is grpc.StatusCode.UNIMPLEMENTED and error_info is None:
        return f"UNIMPLEMENTED: {endpoint.service} at {endpoint.address} does not offer this operation yet ({details})"
    if code is grpc.StatusCode.UNAUTHENTICATED and error_info is None:
        return f"UNAUTHENTICATED: {details}; give the token with --token or XSHA_TOKEN"
    message = details
    if bad_request is not None and bad_request.field_violations and "Invalid request" not in details:
        fields = "; ".join(f"{v.field}: {v.description}" for v in bad_request.field_violations)
        message = f"{details} ({fields})"
    return f"{code.name}: {message}{reason}"


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print `xsha: message` on stderr and end the command with `code`."""
    typer.echo(f"xsha: {message}", err=True)
    sys.stderr.flush()
    raise typer.Exit(int(code))


def fail_rpc(error: grpc.RpcError, endpoint: Endpoint) -> NoReturn:
    fail(describe_rpc_error(error, endpoint), exit_code_for(rpc_code(error)))
