"""sync_service's Prometheus metrics."""

from __future__ import annotations

import contextlib

from xsha_common.metrics import MetricsRegistry

_DB_WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SyncMetrics:
    def __init__(self, registry: MetricsRegistry | None = None) -> None:
        self.registry = registry or MetricsRegistry()
        self.events = self.registry.counter("sync_events", "XAPI events applied to the mirror.", ("cluster_id",))
        self.changes = self.registry.counter("sync_changes", "Mirror changes written to the change log.", ())
        self.lag = self.registry.gauge(
            "sync_lag_seconds", "Time from receiving an XAPI event batch to its commit.", ("cluster_id",)
        )
        self.connected = self.registry.gauge(
            "sync_pool_connected", "1 when the pool's watcher is connected to XAPI, else 0.", ("cluster_id",)
        )
        self.reconnects = self.registry.counter("sync_reconnects", "XAPI reconnects.", ("cluster_id",))
        self.full_syncs = self.registry.counter("sync_full_syncs", "Full re-lists of a pool.", ("cluster_id",))
        self.stale_writes_refused = self.registry.counter(
            "sync_stale_writes_refused",
            "Batches refused because the pool's lease had been taken over (stale fencing epoch).",
            ("cluster_id",),
        )
        self.pools_held = self.registry.gauge("sync_pools_held", "Pool leases this replica holds.", ())
        self.db_write_seconds = self.registry.histogram(
            "sync_db_write_seconds",
            "Duration of one write transaction (one or more pools' event batches).",
            buckets=_DB_WRITE_BUCKETS,
        )

    def forget(self, cluster_id: str) -> None:
        for metric in (self.lag, self.connected):
            with contextlib.suppress(KeyError):
                metric.remove(cluster_id)
