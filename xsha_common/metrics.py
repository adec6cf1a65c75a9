"""Prometheus metrics: one registry per server, shared RPC metrics, and a small API for service metrics.

Each `MetricsRegistry` wraps its own `CollectorRegistry` rather than the process-global default, so several servers
(tests start many in one process) never clash on metric names. A service creates the registry first, declares its
own metrics on it, then passes it to `build_server(..., metrics=registry)`, which serves it over HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

METRIC_NAMESPACE = "xsha"

# Seconds; covers sub-millisecond reads up to slow migrations and long watch streams.
RPC_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip

_MetricT = TypeVar("_MetricT", bound=MetricWrapperBase)


class MetricsRegistry:
    """A Prometheus registry plus get-or-create helpers, so declaring a metric twice returns the same object."""

    def __init__(self, namespace: str = METRIC_NAMESPACE) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry(auto_describe=True)
        self._metrics: dict[str, MetricWrapperBase] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter named `<namespace>_<name>` (Prometheus appends `_total`)."""
        return self._get_or_create(Counter, name, documentation, labels)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return self._get_or_create(Gauge, name, documentation, labels)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        return self._get_or_create(Histogram, name, documentation, labels, buckets=tuple(buckets))

    def sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The current value of one sample by its full exposition name (tests, health summaries)."""
        return self.registry.get_sample_value(name, labels or {})

    def _get_or_create(
        self, metric_class: type[_MetricT], name: str, documentation: str, labels: Sequence[str], **kwargs: Any
    ) -> _MetricT:
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if not isinstance(existing, metric_class) or tuple(existing._labelnames) != tuple(labels):
                    raise ValueError(f"metric {name!r} is already registered with a different type or labels")
                return existing
            metric = metric_class(
                name,
                documentation,
                labelnames=tuple(labels),
                namespace=self.namespace,
                registry=self.registry,
                **kwargs,
            )
            self._metrics[name] = metric
            return metric


class RpcMetrics:
    """Server-side RPC metrics, labelled like go-grpc-prometheus so standard dashboards fit."""

    def __init__(self, registry: MetricsRegistry) -> None:
        self.started = registry.counter(
            "grpc_server_started", "RPCs started on the server.", ("grpc_service", "grpc_method", "grpc_type")
        )
        self.handled = registry.counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            ("grpc_service", "grpc_method", "grpc_type", "grpc_code"),
        )
        self.handling_seconds = registry.histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its last response (streams: until the response stream ends).",
            ("grpc_service", "grpc_method", "grpc_type"),
            buckets=RPC_LATENCY_BUCKETS,
        )


class MetricsHttpServer:
    """The `/metrics` HTTP endpoint of one registry, on its own daemon thread."""

    def __init__(self, registry: MetricsRegistry, host: str, port: int) -> None:
        self._httpd: WSGIServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry.registry)
        self.host = host
        self.port: int = self._httpd.server_port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


__all__ = ["METRIC_NAMESPACE", "RPC_LATENCY_BUCKETS", "MetricsHttpServer", "MetricsRegistry", "RpcMetrics"]
