"""Starts, restarts and stops one watcher per registered pool, and runs change-log retention."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

from sync_service.crypto import CredentialsCipher
from sync_service.leases import PoolLeases
from sync_service.metrics import SyncMetrics
from sync_service.store.repository import COMPACT_CHUNK, Repository
from sync_service.watcher import PoolWatcher, WatcherSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionSettings:
    keep_changes: int = 100_000
    keep_seconds: float = 7 * 24 * 3600.0
    interval_seconds: float = 60.0
    # A round of compaction deletes in steps of `step_revisions` changes, each its own transaction and each
    # followed by a pause as long as it took, so the writers beside it keep at least half of the database. It
    # stops after `round_seconds`, which keeps the lease renewals of the same thread on time; the next
    # housekeeping round goes on where it stopped.
    step_revisions: int = COMPACT_CHUNK
    round_seconds: float = 1.0


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
        leases: PoolLeases | None = None,
    ) -> None:
        self.repository = repository
        self.cipher = cipher
        self.watcher_settings = watcher_settings
        self.retention = retention or RetentionSettings()
        self.metrics = metrics
        self.owner = owner or default_owner()
        self.reconcile_interval = reconcile_interval
        # Several replicas share the pools through leases; without, this replica watches every pool.
        self.leases = leases
        self._watchers: dict[str, PoolWatcher] = {}
        # Unstarted watchers of pools another replica watches, used only for their command connection.
        self._command_watchers: dict[str, PoolWatcher] = {}
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
            commanders, self._command_watchers = list(self._command_watchers.values()), {}
        for watcher in watchers + commanders:
            watcher.stop()
        if self.leases is not None:
            with self._lock:
                self.leases.retire()

    def watcher(self, cluster_id: str) -> PoolWatcher | None:
        with self._lock:
            return self._watchers.get(cluster_id)

    def command_watcher(self, cluster_id: str) -> PoolWatcher | None:
        """The watcher whose command connection writes to the pool: ours when we watch it, else an unstarted one
        (any replica may run a plain XAPI write; the owner's watcher mirrors the result)."""
        with self._lock:
            watcher = self._watchers.get(cluster_id)
            if watcher is not None:
                return watcher
            config = self.repository.pool_config(cluster_id)
            if config is None:
                return None
            commander = self._command_watchers.get(cluster_id)
            if commander is None or commander.generation != config.config_generation:
                if commander is not None:
                    commander.stop(0)
                commander = PoolWatcher(config, self.repository, self.cipher, self.watcher_settings, owner=self.owner)
                self._command_watchers[cluster_id] = commander
            return commander

    def followed_elsewhere(self, cluster_id: str) -> bool:
        """Whether another replica holds the pool's lease (as of the last lease round)."""
        if self.leases is None:
            return False
        holder = self.leases.owner_of(cluster_id)
        return bool(holder) and holder != self.leases.holder

    def reconcile(self) -> None:
        """Make the running watchers match the registered pools (new, reconfigured, deregistered, crashed) and,
        with leases, the pools this replica holds."""
        if self._stop.is_set():
            return
        configs = {config.cluster_id: config for config in self.repository.pool_configs()}
        with self._lock:
            epochs: dict[str, int] | None = None
            if self.leases is not None:
                for cluster_id, watcher in self._watchers.items():
                    if watcher.lease_lost:  # a refused write: the pool is another replica's now
                        self.leases.forget(cluster_id)
                plan = self.leases.round(list(configs))
                for cluster_id in plan.release:
                    running = self._watchers.pop(cluster_id, None)
                    if running is not None:
                        running.stop()
                    self.leases.release(cluster_id, plan.release[cluster_id])
                epochs = {c: e for c, e in plan.held.items() if c not in plan.release}
                if self.metrics is not None:
                    self.metrics.pools_held.set(len(epochs))
            for cluster_id, watcher in list(self._watchers.items()):
                config = configs.get(cluster_id)
                if (
                    config is None
                    or config.config_generation != watcher.generation
                    or not watcher.alive
                    or (epochs is not None and epochs.get(cluster_id) != watcher.lease_epoch)
                ):
                    watcher.stop()
                    del self._watchers[cluster_id]
                    if config is None and self.metrics is not None:
                        self.metrics.forget(cluster_id)
            for cluster_id, config in configs.items():
                if epochs is not None and cluster_id not in epochs:
                    continue
                if cluster_id not in self._watchers:
                    watcher = PoolWatcher(
                        config,
                        self.repository,
                        self.cipher,
                        self.watcher_settings,
                        metrics=self.metrics,
                        owner=self.owner,
                        lease=(self.leases.holder, epochs[cluster_id])
                        if self.leases is not None and epochs is not None
                        else None,
                    )
                    self._watchers[cluster_id] = watcher
                    watcher.start()
                    log.info("watching pool", extra={"cluster_id": cluster_id})

    def compact(self) -> bool:
        """One round of change-log retention (see RetentionSettings); True once the log is within it."""
        retention = self.retention
        started = time.monotonic()
        while True:
            step_started = time.monotonic()
            step = self.repository.compact(
                keep_changes=retention.keep_changes,
                keep_seconds=retention.keep_seconds,
                max_revisions=retention.step_revisions,
            )
            if step.finished:
                return True
            took = time.monotonic() - step_started
            if time.monotonic() + took - started >= retention.round_seconds or self._stop.wait(took):
                return False

    def _housekeeping(self) -> None:
        since_compaction = 0.0
        interval = self.reconcile_interval
        if self.leases is not None:
            interval = min(interval, self.leases.settings.renew_interval)
        while not self._stop.wait(interval):
            try:
                self.reconcile()
                since_compaction += interval
                if since_compaction >= self.retention.interval_seconds and self.compact():
                    since_compaction = 0.0
            except Exception:
                log.warning("supervisor housekeeping failed; retrying", exc_info=True)
