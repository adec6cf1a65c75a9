"""The one gRPC server builder both services use.

`build_server` wires the servicers with health, reflection, the interceptor chain (metrics, access log, auth,
deadline, error mapping), TLS or mutual TLS, a Prometheus endpoint and graceful shutdown. It runs them on grpc's
thread-pool server, or with `concurrency="asyncio"` on grpc's asyncio server (`xsha_common.asyncio_server`), where
coroutine methods run on one event loop and the others on a thread pool. A service's `__main__`:

    config = load_config(SCHEMA)
    setup_logging(config.log_level, config.log_format)
    ...open the database, build the servicers...
    server = build_server([ServiceRegistration(add_FooServicer_to_server, servicer, "pkg.FooService")],
                          ServerSettings.from_config(config), metrics=metrics)
    server.add_shutdown_callback(database.close)
    server.install_signal_handlers()
    server.start()
    server.wait()
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal, NamedTuple, Protocol, Self, TypeAlias

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xsha_common.asyncio_server import AsyncioBackend
from xsha_common.config import Config, ConfigError, split_host_port
from xsha_common.interceptors import default_async_interceptors, default_interceptors
from xsha_common.interceptors._handlers import ServerInterceptorBase
from xsha_common.logging import register_secret
from xsha_common.metrics import MetricsHttpServer, MetricsRegistry, RpcMetrics
from xsha_common.tls import server_credentials

_LOGGER = logging.getLogger("xsha.server")


class ListenError(OSError):
    """An address the server was told to listen on (gRPC or metrics) cannot be bound: a start-up error the
    service reports in one line, as it does a bad setting."""


DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ServiceRegistration(NamedTuple):
    """One service to serve: the generated `add_XServicer_to_server`, the servicer, and the full service name
    (e.g. "cloudstack.xsha.v1.HaPolicyService", used for health and reflection)."""

    add_to_server: Callable[[Any, grpc.Server], None]
    servicer: Any
    service_name: str

    @classmethod
    def generic(cls, handler: grpc.GenericRpcHandler[Any, Any], service_name: str) -> ServiceRegistration:
        """Serve a hand-built generic handler (tests, services without generated code)."""
        return cls(_add_generic_handler, handler, service_name)


def _add_generic_handler(handler: grpc.GenericRpcHandler[Any, Any], server: grpc.Server) -> None:
    server.add_generic_rpc_handlers((handler,))


@dataclass(frozen=True)
class ServerSettings:
    """How to run the gRPC server. Build it from configuration with `ServerSettings.from_config`.

    Authentication: `auth_tokens` lists the valid bearer tokens; with none, `auth_disabled=True` must be set
    explicitly, so a missing token file never silently opens the server.
    """

    listen_address: str = "127.0.0.1:0"
    max_workers: int = 32
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Mutual TLS: clients must present a certificate signed by this CA.
    tls_client_ca_file: Path | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    auth_disabled: bool = False
    # "host:port" for the Prometheus endpoint; port 0 picks a free port; "" turns it off.
    metrics_address: str = ""
    shutdown_grace_seconds: float = 10.0
    # Time between reporting NOT_SERVING and refusing new calls, so load balancers stop routing first.
    shutdown_drain_seconds: float = 0.0
    max_receive_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_send_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("Invalid server settings:\n" + "\n".join(f"  - {problem}" for problem in problems))

    def problems(self) -> list[str]:
        problems: list[str] = []
        for name, address in (("listen_address", self.listen_address), ("metrics_address", self.metrics_address)):
            if name == "metrics_address" and not address:
                continue
            try:
                split_host_port(address)
            except ValueError as error:
                problems.append(f"{name}: {error}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append("tls_cert_file and tls_key_file must be set together: give both, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            problems.append("tls_client_ca_file (mutual TLS) needs server TLS: set tls_cert_file and tls_key_file")
        if not self.auth_tokens and not self.auth_disabled:
            problems.append("no auth token configured: set auth tokens, or set auth_disabled explicitly")
        if self.auth_tokens and self.auth_disabled:
            problems.append("auth tokens are set but auth_disabled is true: remove one of them")
        if any(not token or token != token.strip() for token in self.auth_tokens):
            problems.append("auth tokens must be non-empty and have no surrounding whitespace")
        if self.max_workers < 1:
            problems.append("max_workers must be at least 1")
        if self.shutdown_grace_seconds < 0 or self.shutdown_drain_seconds < 0:
            problems.append("shutdown_grace_seconds and shutdown_drain_seconds must not be negative")
        if self.max_receive_message_bytes < 1 or self.max_send_message_bytes < 1:
            problems.append("max message sizes must be positive")
        return problems

    @classmethod
    def from_config(cls, config: Config) -> ServerSettings:
        """Settings from a config that includes `server_settings_group()`; reads the token file."""
        tokens = list(config["auth_tokens"])
        token_file: Path | None = config["auth_token_file"]
        if token_file is not None:
            try:
                lines = token_file.read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise ConfigError([f"auth_token_file: cannot read {token_file}: {error.strerror}"]) from None
            file_tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
            if not file_tokens:
                raise ConfigError([f"auth_token_file: {token_file} holds no token; put one token per line"])
            tokens += file_tokens
        for token in tokens:
            register_secret(token)
        max_message_bytes: int = config["max_message_bytes"]
        try:
            return cls(
                listen_address=config["listen_address"],
                max_workers=config["max_workers"],
                tls_cert_file=config["tls_cert_file"],
                tls_key_file=config["tls_key_file"],
                tls_client_ca_file=config["tls_client_ca_file"],
                auth_tokens=tuple(tokens),
                auth_disabled=config["auth_disabled"],
                metrics_address=config["metrics_address"],
                shutdown_grace_seconds=config["shutdown_grace_seconds"],
                shutdown_drain_seconds=config["shutdown_drain_seconds"],
                max_receive_message_bytes=max_message_bytes,
                max_send_message_bytes=max_message_bytes,
            )
        except ValueError as error:
            raise ConfigError(str(error).splitlines()[1:] or [str(error)]) from None


Concurrency = Literal["threads", "asyncio"]
ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus


class _Backend(Protocol):
    """What `ServiceServer` drives: grpc's thread-pool server or its asyncio server."""

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int: ...
    def start(self) -> None: ...
    def set_health(self, service_name: str, status: ServingStatus) -> None: ...
    def enter_graceful_shutdown(self) -> None: ...
    def stop(self, grace: float | None) -> None: ...
    def stop_now(self) -> None: ...


class _ThreadsBackend:
    """grpc's thread-pool server: each call runs on one of `max_workers` threads."""

    def __init__(
        self,
        registrations: Sequence[ServiceRegistration],
        service_names: Sequence[str],
        *,
        interceptors: Sequence[ServerInterceptorBase],
        options: Sequence[tuple[str, Any]],
        max_workers: int,
    ) -> None:
        self._executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc")
        self._server = grpc.server(self._executor, interceptors=list(interceptors), options=options)
        for registration in registrations:
            registration.add_to_server(registration.servicer, self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    def add_port(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        if credentials is None:
            return self._server.add_insecure_port(address)
        return self._server.add_secure_port(address, credentials)

    def start(self) -> None:
        self._server.start()

    def set_health(self, service_name: str, status: ServingStatus) -> None:
        self._health.set(service_name, status)

    def enter_graceful_shutdown(self) -> None:
        self._health.enter_graceful_shutdown()

    def stop(self, grace: float | None) -> None:
        self._server.stop(grace).wait()
        self._executor.shutdown(wait=False)

    def stop_now(self) -> None:
        self._server.stop(0)


class ServiceServer:
    """A built, not yet started gRPC server for one service. Create with `build_server`."""

    def __init__(
        self,
        registrations: Sequence[ServiceRegistration],
        settings: ServerSettings,
        *,
        metrics: MetricsRegistry | None = None,
        extra_interceptors: Sequence[Any] = (),
        concurrency: Concurrency = "threads",
    ) -> None:
        if not registrations:
            raise ValueError("build_server needs at least one service registration")
        self.settings = settings
        self.metrics = metrics if metrics is not None else MetricsRegistry()
        self.service_names: tuple[str, ...] = tuple(registration.service_name for registration in registrations)

        if settings.auth_disabled:
            _LOGGER.warning(
                "AUTHENTICATION DISABLED: any client can call every RPC of %s. Use this only on a trusted network "
                "or in tests; configure auth tokens for anything else.",
                ", ".join(self.service_names),
                extra={"auth_disabled": True},
            )
        options = [
            ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
            ("grpc.max_send_message_length", settings.max_send_message_bytes),
            # Without this grpc sets SO_REUSEPORT and a second process could silently share our port.
            ("grpc.so_reuseport", 0),
        ]
        rpc_metrics = RpcMetrics(self.metrics)
        auth_tokens = None if settings.auth_disabled else settings.auth_tokens
        self._backend: _Backend
        if concurrency == "threads":
            interceptors = default_interceptors(rpc_metrics=rpc_metrics, auth_tokens=auth_tokens)
            self._backend = _ThreadsBackend(
                registrations,
                self.service_names,
                interceptors=[*interceptors, *extra_interceptors],
                options=options,
                max_workers=settings.max_workers,
            )
        elif concurrency == "asyncio":
            async_interceptors = default_async_interceptors(rpc_metrics=rpc_metrics, auth_tokens=auth_tokens)
            self._backend = AsyncioBackend(
                [(registration.add_to_server, registration.servicer) for registration in registrations],
                self.service_names,
                interceptors=[*async_interceptors, *extra_interceptors],
                options=options,
                max_workers=settings.max_workers,
            )
        else:
            raise ValueError(f"concurrency must be 'threads' or 'asyncio', not {concurrency!r}")
        self._health_statuses: dict[str, ServingStatus] = {}
        for name in ("", *self.service_names):
            self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)

        self._lock = threading.Lock()
        self._port: int | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._shutdown_callbacks: list[tuple[str, Callable[[], None]]] = []
        self._shutdown_started = False
        self._drain_interrupted = threading.Event()
        self._stopped = threading.Event()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind, start serving, report SERVING; returns the bound gRPC port (useful with port 0)."""
        with self._lock:
            if self._port is not None or self._shutdown_started:
                raise RuntimeError("the server was already started")
            settings = self.settings
            host, _ = split_host_port(settings.listen_address)
            tls = settings.tls_cert_file is not None and settings.tls_key_file is not None
            try:
                if settings.tls_cert_file is not None and settings.tls_key_file is not None:
                    credentials = server_credentials(
                        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
                    )
                    port = self._backend.add_port(settings.listen_address, credentials)
                else:
                    port = self._backend.add_port(settings.listen_address, None)
            except RuntimeError as error:
                raise ListenError(
                    f"cannot listen on {settings.listen_address}: {error}; is another process using that port?"
                ) from error
            if port == 0:
                raise ListenError(f"cannot listen on {settings.listen_address}; is another process using that port?")
            if settings.metrics_address:
                metrics_host, metrics_port = split_host_port(settings.metrics_address)
                try:
                    self._metrics_http = MetricsHttpServer(self.metrics, metrics_host, metrics_port)
                except OSError as error:
                    raise ListenError(
                        f"cannot serve metrics on {settings.metrics_address}: {error.strerror or error}; "
                        "is another process using that port?"
                    ) from error
            self._backend.start()
            self._port = port
        for name in ("", *self.service_names):
            self._set_health(name, health_pb2.HealthCheckResponse.SERVING)
        if not tls and host not in _LOOPBACK_HOSTS:
            _LOGGER.warning("serving without TLS on %s: traffic and bearer tokens travel in clear", host)
        _LOGGER.info(
            "serving %s",
            ", ".join(self.service_names),
            extra={
                "address": f"{host}:{port}",
                "tls": "mutual" if settings.tls_client_ca_file else ("server" if tls else "off"),
                "auth": "disabled" if settings.auth_disabled else "bearer",
                "metrics_port": self.metrics_port,
            },
        )
        return port

    @property
    def port(self) -> int:
        """The bound gRPC port; only after `start()`."""
        if self._port is None:
            raise RuntimeError("the server is not started")
        return self._port

    @property
    def address(self) -> str:
        """`host:port` a local client can dial (wildcard listen hosts become localhost)."""
        host, _ = split_host_port(self.settings.listen_address)
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        """The bound Prometheus HTTP port, or None when metrics are off or the server is not started."""
        return self._metrics_http.port if self._metrics_http else None

    def set_serving(self, service_name: str, serving: bool) -> None:
        """Report one service (or "" for the whole server) healthy or not, e.g. while its database is down."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        self._set_health(service_name, status)

    def health_status(self, service_name: str = "") -> ServingStatus | None:
        """What the health service reports for `service_name` ("" for the whole server); None if unknown."""
        return self._health_statuses.get(service_name)

    def _set_health(self, service_name: str, status: ServingStatus) -> None:
        self._health_statuses[service_name] = status
        self._backend.set_health(service_name, status)

    def add_shutdown_callback(self, callback: Callable[[], None], name: str | None = None) -> None:
        """Run `callback` after the server stopped serving (stop watchers, close the database).

        Callbacks run in reverse registration order, like context managers unwinding; one failing does not stop
        the others.
        """
        label = name or str(getattr(callback, "__qualname__", repr(callback)))
        self._shutdown_callbacks.append((label, callback))

    def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop gracefully, blocking until done: NOT_SERVING everywhere, drain, stop with the grace period (new
        calls refused, in-flight ones may finish), run the shutdown callbacks. Safe to call more than once."""
        with self._lock:
            already_started = self._shutdown_started
            self._shutdown_started = True
        if already_started:
            self._stopped.wait()
            return
        grace = self.settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds
        _LOGGER.info(
            "shutting down", extra={"grace_seconds": grace, "drain_seconds": self.settings.shutdown_drain_seconds}
        )
        try:
            # Health first, so probes and load balancers see NOT_SERVING while calls still succeed.
            for name in ("", *self.service_names):
                self._set_health(name, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._backend.enter_graceful_shutdown()
            if self._port is not None and self.settings.shutdown_drain_seconds > 0:
                self._drain_interrupted.wait(self.settings.shutdown_drain_seconds)
            self._backend.stop(grace)
            for name, callback in reversed(self._shutdown_callbacks):
                try:
                    callback()
                except Exception:
                    _LOGGER.exception("shutdown callback %s failed", name)
            if self._metrics_http is not None:
                self._metrics_http.stop()
        finally:
            self._stopped.set()
            _LOGGER.info("stopped")

    def request_shutdown(self) -> None:
        """Begin `shutdown()` on a background thread and return at once: what SIGTERM/SIGINT call.

        A second request while shutting down skips the drain and the rest of the grace period.
        """
        with self._lock:
            in_progress = self._shutdown_started
        if in_progress:
            _LOGGER.warning("second shutdown request: stopping now, cancelling in-flight calls")
            self._drain_interrupted.set()
            self._backend.stop_now()
            return
        threading.Thread(target=self.shutdown, name="xsha-shutdown", daemon=True).start()

    def install_signal_handlers(self, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Make SIGTERM and SIGINT call `request_shutdown()`. Call from the main thread."""

        def handle(signum: int, _frame: FrameType | None) -> None:
            _LOGGER.info("received %s", signal.Signals(signum).name)
            self.request_shutdown()

        for signum in signals:
            signal.signal(signum, handle)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has fully shut down; True if it did within `timeout`."""
        # Short waits in a loop keep the main thread responsive to signals.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stopped.wait(0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def serve_forever(self) -> None:
        """install_signal_handlers(), start(), wait()."""
        self.install_signal_handlers()
        self.start()
        self.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_exc_info: object) -> None:
        self.shutdown(grace_seconds=0)


def build_server(
    registrations: Sequence[ServiceRegistration],
    settings: ServerSettings,
    *,
    metrics: MetricsRegistry | None = None,
    extra_interceptors: Sequence[Any] = (),
    concurrency: Concurrency = "threads",
) -> ServiceServer:
    """The gRPC server for one service: `registrations` plus health and reflection, behind the standard
    interceptors (`extra_interceptors`, of the form `concurrency` takes, run innermost). `metrics` is the registry
    the service declared its own metrics on; a fresh one is made when None. With `concurrency="asyncio"`, servicer
    methods that are coroutines run on the server's event loop, and the rest on `settings.max_workers` threads."""
    return ServiceServer(
        registrations, settings, metrics=metrics, extra_interceptors=extra_interceptors, concurrency=concurrency
    )


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "ListenError",
    "ServerSettings",
    "ServiceRegistration",
    "ServiceServer",
    "build_server",
]
