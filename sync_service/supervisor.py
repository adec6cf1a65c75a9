"""Starts, restarts and stops one watcher per registered pool, and runs change-log retention."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from sync_service.crypto import CredentialsCipher
from sync_service.metrics import SyncMetrics
from sync_service.store.repository import Repository
from sync_service.watcher import PoolWatcher, WatcherSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionSettings:
    keep_changes: int = 100_000
    keep_seconds: float = 7 * 24 * 3600.0
    interval_seconds: float = 60.0


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Supervisor:
    def __init__(
        self,
        repository: Repository,
        cipher: CredentialsCipher,
        watcher_settings: WatcherSettings,
        *,
        retention: RetentionSettings | None = None,
        metrics: SyncMetrics | None = None,
        owner: str = "",
        reconcile_interval: float = 10.0,
    ) -> None:
        self.repository = repository
        self.cipher = cipher
        self.watcher_settings = watcher_settings
        self.retention = retention or RetentionSettings()
        self.metrics = metrics
        self.owner = owner or default_owner()
        self.reconcile_interval = reconcile_interval
        self._watchers: dict[str, PoolWatcher] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._housekeeping, name="xsha-sync-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            watchers, self._watchers = list(self._watchers.values()), {}
        for watcher in watchers:
            watcher.stop()

    def watcher(self, cluster_id: str) -> PoolWatcher | None:
        with self._lock:
            return self._watchers.get(cluster_id)

    def reconcile(self) -> None:
        """Make the running watchers match the registered pools (new, reconfigured, deregistered, crashed)."""
        if self._stop.is_set():
            return
        configs = {config.cluster_id: config for config in self.repository.pool_configs()}
        with self._lock:
            for cluster_id, watcher in list(self._watchers.items()):
                config = configs.get(cluster_id)
                if config is None or config.config_generation != watcher.generation or not watcher.alive:
                    watcher.stop()
                    del self._watchers[cluster_id]
                    if config is None and self.metrics is not None:
                        self.metrics.forget(cluster_id)
            for cluster_id, config in configs.items():
                if cluster_id not in self._watchers:
                    watcher = PoolWatcher(
                        config,
                        self.repository,
                        self.cipher,
                        self.watcher_settings,
                        metrics=self.metrics,
                        owner=self.owner,
                    )
                    self._watchers[cluster_id] = watcher
                    watcher.start()
                    log.info("watching pool", extra={"cluster_id": cluster_id})

    def compact(self) -> int:
        return self.repository.compact(
            keep_changes=self.retention.keep_changes, keep_seconds=self.retention.keep_seconds
        )

    def _housekeeping(self) -> None:
        since_compaction = 0.0
        while not self._stop.wait(self.reconcile_interval):
            try:
                self.reconcile()
                since_compaction += self.reconcile_interval
                if since_compaction >= self.retention.interval_seconds:
                    since_compaction = 0.0
                    self.compact()
            except Exception:
                log.warning("supervisor housekeeping failed; retrying", exc_info=True)
