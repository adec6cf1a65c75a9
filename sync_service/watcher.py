"""One watcher thread per pool: list + watch over XAPI's event.from, mirrored into the database.

Start: with a persisted token, resume exactly (the view is rebuilt from the mirror); otherwise a full list
(event.from with token "" returns every object as `add` plus a token: an atomic list). Then an event.from loop;
each batch and the token that follows it are written in one transaction. A bad token, a valid_ref_counts
mismatch, or a reconnect after an outage lead to a full re-list and diff. Connection failures back off
exponentially with full jitter; HOST_IS_SLAVE redirects to the master; on master loss the other known hosts of
the pool are tried. The client layer refuses any method outside its allow-list, so no power operation can leave.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from sync_service.crypto import Credentials, CredentialsCipher, CredentialsKeyError
from sync_service.domain import WATCHED_CLASSES, PoolView, utcnow
from sync_service.metrics import SyncMetrics
from sync_service.store.repository import Batch, BatchResult, LeaseLostError, PoolConfig, Repository, StaleWatcherError
from sync_service.xapi import TlsOptions, XapiClient, XapiConnectionError, XapiEndpoint, XapiError, connect
from sync_service.xapi.client import DEFAULT_ORIGINATOR, WirePreference
from sync_service.xapi.errors import (
    EVENT_FROM_TOKEN_PARSE_FAILURE,
    HOST_IS_SLAVE,
    SESSION_AUTHENTICATION_FAILED,
    SESSION_INVALID,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
_MAX_REDIRECTS = 3
# How often the pipeline's two threads look up from a full or empty handoff to check for stop.
_HANDOFF_POLL = 0.2


@dataclass
class _Fetched:
    """A batch the producer built, on its way to be committed."""

    batch: Batch
    received: float  # monotonic time event.from returned it
    full: bool = False


@dataclass(frozen=True)
class WatcherSettings:
    event_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    request_timeout: float = 30.0
    wire: WirePreference = "auto"
    originator: str = DEFAULT_ORIGINATOR


def backoff_delay(
    attempt: int, base: float, cap: float, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return rng(0.0, min(cap, base * (2 ** min(attempt, 30))))


def url_for_address(address: str, template_url: str) -> str:
    """A host address (as host.address or HOST_IS_SLAVE give it) as a URL with the scheme and port of the
    registered master URL. An address that is already a URL, or carries its own port, keeps it."""
    if address.startswith(("http://", "https://")):
        return address.rstrip("/")
    parts = urlsplit(template_url)
    if address.count(":") == 1:  # host:port
        netloc = address
    else:
        host = f"[{address}]" if ":" in address else address
        netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, "", "", "")).rstrip("/")


class PoolWatcher:
    def __init__(
        self,
        config: PoolConfig,
        repository: Repository,
        cipher: CredentialsCipher,
        settings: WatcherSettings,
        *,
        metrics: SyncMetrics | None = None,
        owner: str = "",
        lease: tuple[str, int] | None = None,
    ) -> None:
        self.config = config
        self.cluster_id = config.cluster_id
        self.generation = config.config_generation
        self.repository = repository
        self.cipher = cipher
        self.settings = settings
        self.metrics = metrics
        self.owner = owner
        # (holder, epoch) of this pool's lease: every write carries it and is refused once the epoch is stale.
        self.lease = lease
        self.lease_epoch = lease[1] if lease is not None else None
        self.lease_lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"xsha-watch-{self.cluster_id}", daemon=True)
        self._client: XapiClient | None = None
        self._client_lock = threading.Lock()
        self._resync_requested = False
        self._resync_abort_pending = False  # the connection was broken on purpose, for a resync
        self._full_syncs = 0
        self._sync_condition = threading.Condition()
        self._known_addresses: list[str] = list(config.host_addresses)
        self._master_address = ""
        self.connected_url = ""
        self._command_client: XapiClient | None = None
        self._command_lock = threading.Lock()
        self._credentials: Credentials | None = None

    # ------------------------------------------------------------------------------------------ control

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._abort_client()
        self._thread.join(timeout)
        with self._command_lock:
            if self._command_client is not None:
                self._command_client.close()
                self._command_client = None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def full_syncs(self) -> int:
        with self._sync_condition:
            return self._full_syncs

    def request_resync(self) -> int:
        """Ask for a full re-list; returns the full-sync count to wait beyond (`wait_full_sync`)."""
        with self._sync_condition:
            count = self._full_syncs
            self._resync_requested = True
            self._resync_abort_pending = True
        self._abort_client()  # breaks a blocking event.from at once
        return count

    def wait_full_sync(self, beyond: int, timeout: float) -> bool:
        with self._sync_condition:
            return self._sync_condition.wait_for(lambda: self._full_syncs > beyond, timeout=timeout)

    def _abort_client(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.abort()

    # ------------------------------------------------------------------------------------ connecting

    def _endpoint(self, url: str) -> XapiEndpoint:
        return XapiEndpoint(
            url.rstrip("/"),
            TlsOptions(self.config.tls_ca_bundle_pem, self.config.tls_fingerprint, self.config.tls_insecure),
        )

    def credentials(self) -> Credentials:
        if self._credentials is None:
            if self.config.credentials_encrypted is None:
                raise CredentialsKeyError("the pool has no stored credentials; update the pool with credentials")
            self._credentials = self.cipher.decrypt(self.config.credentials_encrypted)
        return self._credentials

    def _candidate_urls(self) -> list[str]:
        urls: list[str] = []
        for url in (
            self.connected_url,
            url_for_address(self._master_address, self.config.master_url) if self._master_address else "",
            self.config.master_url.rstrip("/"),
            *(url_for_address(address, self.config.master_url) for address in self._known_addresses),
        ):
            if url and url not in urls:
                urls.append(url)
        return urls

    def open_client(self) -> XapiClient:
        """Log in to the pool master: the last master, the registered URL, then every known host of the pool;
        HOST_IS_SLAVE redirects. Raises the last error when none answers."""
        credentials = self.credentials()
        last_error: Exception | None = None
        for first_url in self._candidate_urls():
            url = first_url
            for _ in range(_MAX_REDIRECTS + 1):
                try:
                    client = connect(
                        self._endpoint(url),
                        credentials.username,
                        credentials.password,
                        wire=self.settings.wire,
                        timeout=self.settings.request_timeout,
                        originator=self.settings.originator,
                    )
                    return client
                except XapiError as error:
                    if error.code == HOST_IS_SLAVE and error.params:
                        url = url_for_address(error.params[0], self.config.master_url)
                        log.info("redirected to the pool master", extra={"cluster_id": self.cluster_id, "url": url})
                        continue
                    if error.code == SESSION_AUTHENTICATION_FAILED:
                        raise
                    last_error = error
                    break
                except XapiConnectionError as error:
                    last_error = error
                    break
        raise last_error or XapiConnectionError("no XAPI host to connect to")

    # ----------------------------------------------------------------------------------------- loop

    def _status(self, **values: object) -> None:
        try:
            self.repository.update_status(self.cluster_id, self.generation, lease=self.lease, **values)
        except Exception:
            log.warning("could not record sync status", extra={"cluster_id": self.cluster_id}, exc_info=True)

    def _set_connected(self, connected: bool) -> None:
        if self.metrics is not None:
            self.metrics.connected.labels(self.cluster_id).set(1 if connected else 0)

    def _run(self) -> None:
        attempt = 0
        # A restart resumes from the persisted token; a reconnect after an outage re-lists.
        resume = bool(self.config.event_token)
        while not self._stop.is_set():
            client: XapiClient | None = None
            try:
                self._status(sync_state="CONNECTING", connected=False, owner=self.owner)
                client = self.open_client()
                with self._client_lock:
                    self._client = client
                self.connected_url = client.url
                self._set_connected(True)
                self._status(connected=True, wire_format=client.wire_format, connected_url=client.url, last_error="")
                log.info(
                    "connected to XAPI",
                    extra={"cluster_id": self.cluster_id, "url": client.url, "wire": client.wire_format},
                )
                self._follow(client, resume=resume)
            except LeaseLostError:
                self.lease_lost = True
                if self.metrics is not None:
                    self.metrics.stale_writes_refused.labels(self.cluster_id).inc()
                log.warning(
                    "write refused: the pool's lease was taken over (stale epoch); watcher steps down",
                    extra={"cluster_id": self.cluster_id, "epoch": self.lease_epoch},
                )
                return
            except StaleWatcherError:
                log.info("pool deregistered or reconfigured; watcher stops", extra={"cluster_id": self.cluster_id})
                return
            except (XapiConnectionError, XapiError, CredentialsKeyError, Exception) as error:
                if self._stop.is_set():
                    break
                resume = False
                if self._take_resync_abort():
                    attempt = 0  # a connection broken on purpose for ResyncPool, not an outage
                    continue
                if isinstance(error, XapiError) and error.code == SESSION_INVALID:
                    attempt = 0
                    log.info("XAPI session invalid; logging in again", extra={"cluster_id": self.cluster_id})
                    continue
                if not isinstance(error, XapiConnectionError | XapiError | CredentialsKeyError):
                    # Database trouble: the view may be ahead of the mirror; rebuild it from the mirror.
                    resume = True
                    log.warning("watcher error", extra={"cluster_id": self.cluster_id}, exc_info=True)
                self._on_failure(error, attempt)
                attempt += 1
            finally:
                with self._client_lock:
                    self._client = None
                if client is not None:
                    self._set_connected(False)
                    client.close()
        self._set_connected(False)
        self._status(sync_state="IDLE", connected=False)

    def _take_resync_abort(self) -> bool:
        with self._sync_condition:
            pending = self._resync_abort_pending
            self._resync_abort_pending = False
            return pending

    def _resync_wanted(self) -> bool:
        with self._sync_condition:
            return self._resync_requested

    def _on_failure(self, error: BaseException, attempt: int) -> None:
        delay = backoff_delay(attempt, self.settings.backoff_base, self.settings.backoff_cap)
        message = f"{type(error).__name__}: {error}"
        log.warning(
            "XAPI watch failed; backing off",
            extra={"cluster_id": self.cluster_id, "error": message, "retry_in_s": round(delay, 3)},
        )
        self.connected_url = ""  # a lost master: start again from the registered URL and known hosts
        self._status(sync_state="BACKING_OFF", connected=False, last_error=message[:2000], last_error_time=utcnow())
        try:
            self.repository.increment_reconnects(self.cluster_id)
        except Exception:
            log.debug("could not count the reconnect", exc_info=True)
        if self.metrics is not None:
            self.metrics.reconnects.labels(self.cluster_id).inc()
        self._stop.wait(delay)

    def _follow(self, client: XapiClient, *, resume: bool) -> None:
        view: PoolView | None = None
        token = ""
        if resume:
            config = self.repository.pool_config(self.cluster_id)
            if config is None or config.config_generation != self.generation:
                raise StaleWatcherError(self.cluster_id)
            if config.event_token:
                vms, _hosts = self.repository.load_mirror(self.cluster_id)
                view = PoolView.restore(config.watch_state, [(ref, vm.facts) for ref, vm in vms])
                token = config.event_token
        if view is None:
            view, token = self._full_list(client)
        self._status(sync_state="WATCHING")
        # Pipelined: a producer thread fetches and decodes the next event.from (and folds it into the view) while
        # this thread commits the previous batch. Batches are committed in order, each with the token that follows
        # it, so a restart resumes exactly as before; the producer's errors surface here after the batches that
        # preceded them, and an error here stops the producer (breaking its call) before it propagates.
        handoff: queue.Queue[_Fetched | BaseException] = queue.Queue(maxsize=1)
        done = threading.Event()
        producer = threading.Thread(
            target=self._produce,
            args=(client, view, token, handoff, done),
            name=f"xsha-fetch-{self.cluster_id}",
            daemon=True,
        )
        producer.start()
        try:
            while not self._stop.is_set():
                try:
                    item = handoff.get(timeout=_HANDOFF_POLL)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise item
                item.batch.lag_ms = int((time.monotonic() - item.received) * 1000)
                result = self._apply(item.batch)
                self._after_batch(item.batch, result.revisions, item.received)
                if item.full:
                    self._full_list_applied(item.batch, result.revisions)
        finally:
            done.set()
            if producer.is_alive():
                client.abort()  # breaks a blocked event.from; the caller closes this client anyway
                producer.join(self.settings.request_timeout)

    def _produce(
        self,
        client: XapiClient,
        view: PoolView,
        token: str,
        handoff: queue.Queue[_Fetched | BaseException],
        done: threading.Event,
    ) -> None:
        """The pipeline's producer: event.from, fold into the view, build the batch (and a full re-list when
        one is due), hand over in order. Any error is handed over too, and ends it."""

        def hand_over(item: _Fetched | BaseException) -> None:
            while not done.is_set():
                try:
                    handoff.put(item, timeout=_HANDOFF_POLL)
                    return
                except queue.Full:
                    continue

        try:
            while not done.is_set() and not self._stop.is_set():
                if self._resync_wanted():
                    view, listed = self._fetch_full_list(client)
                    token = listed.batch.token
                    hand_over(listed)
                    continue
                try:
                    batch = client.event_from(WATCHED_CLASSES, token, self.settings.event_timeout)
                except XapiError as error:
                    if error.code == EVENT_FROM_TOKEN_PARSE_FAILURE:
                        log.warning("XAPI refused the event token; re-listing", extra={"cluster_id": self.cluster_id})
                        view, listed = self._fetch_full_list(client)
                        token = listed.batch.token
                        hand_over(listed)
                        continue
                    raise
                received = time.monotonic()
                delta = view.apply(batch.events)
                hand_over(
                    _Fetched(
                        Batch(
                            cluster_id=self.cluster_id,
                            config_generation=self.generation,
                            token=batch.token,
                            pool=view.pool_facts(),
                            vms=view.changed_vms(delta),
                            removed_vm_uuids=view.removed_vm_uuids(delta),
                            vm_refs=view.vm_refs_by_uuid(delta),
                            hosts=view.changed_hosts(delta),
                            removed_host_uuids=view.removed_host_uuids(delta),
                            watch_state=view.watch_state(),
                            host_addresses=view.host_addresses(),
                            events=len(batch.events),
                        ),
                        received,
                    )
                )
                token = batch.token
                mismatch = view.counts_mismatch(batch.valid_ref_counts)
                if mismatch:
                    log.warning(
                        "valid_ref_counts differ from the refs held; re-listing",
                        extra={"cluster_id": self.cluster_id, "mismatch": {k: list(v) for k, v in mismatch.items()}},
                    )
                    view, listed = self._fetch_full_list(client)
                    token = listed.batch.token
                    hand_over(listed)
        except BaseException as error:
            hand_over(error)

    def _full_list(self, client: XapiClient) -> tuple[PoolView, str]:
        view, listed = self._fetch_full_list(client)
        listed.batch.lag_ms = int((time.monotonic() - listed.received) * 1000)
        result = self._apply(listed.batch)
        self._after_batch(listed.batch, result.revisions, listed.received)
        self._full_list_applied(listed.batch, result.revisions)
        return view, listed.batch.token

    def _fetch_full_list(self, client: XapiClient) -> tuple[PoolView, _Fetched]:
        with self._sync_condition:
            self._resync_requested = False  # this list answers every request made so far
        self._status(sync_state="LISTING")
        batch = client.event_from(WATCHED_CLASSES, "", self.settings.event_timeout)
        received = time.monotonic()
        view = PoolView()
        view.apply(batch.events)
        listed = Batch(
            cluster_id=self.cluster_id,
            config_generation=self.generation,
            token=batch.token,
            pool=view.pool_facts(),
            vms=view.all_vms(),
            vm_refs=view.vm_refs_by_uuid(),
            hosts=view.all_hosts(),
            full=True,
            watch_state=view.watch_state(),
            host_addresses=view.host_addresses(),
            events=len(batch.events),
        )
        return view, _Fetched(listed, received, full=True)

    def _apply(self, batch: Batch) -> BatchResult:
        """Writes a batch under this watcher's lease (holder and epoch checked in the batch's transaction)."""
        if self.lease is not None:
            batch.lease_holder, batch.lease_epoch = self.lease
        return self.repository.apply_batch(batch)

    def _full_list_applied(self, batch: Batch, changes: int) -> None:
        log.info(
            "full list applied",
            extra={"cluster_id": self.cluster_id, "vms": len(batch.vms), "changes": changes},
        )
        if self.metrics is not None:
            self.metrics.full_syncs.labels(self.cluster_id).inc()
        self._status(sync_state="WATCHING")
        with self._sync_condition:
            self._full_syncs += 1
            self._sync_condition.notify_all()

    def _after_batch(self, batch: Batch, changes: int, received: float) -> None:
        self._known_addresses = list(batch.host_addresses or [])
        self._master_address = batch.pool.master_address if batch.pool is not None else ""
        if self.metrics is not None:
            self.metrics.events.labels(self.cluster_id).inc(batch.events)
            self.metrics.changes.inc(changes)
            self.metrics.lag.labels(self.cluster_id).set(time.monotonic() - received)

    # ---------------------------------------------------------------------------- command connection

    @contextmanager
    def _command(self) -> Iterator[XapiClient]:
        with self._command_lock:
            if self._command_client is None:
                self._command_client = self.open_client()
            yield self._command_client

    def run_command(self, action: Callable[[XapiClient], T]) -> T:
        """Run `action` on the pool's command connection (separate from the watcher's, which is busy in
        event.from); one reconnect when the connection broke or the master moved."""
        for attempt in (1, 2):
            try:
                with self._command() as client:
                    return action(client)
            except XapiConnectionError:
                self._drop_command_client()
                if attempt == 2:
                    raise
            except XapiError as error:
                if error.code not in (HOST_IS_SLAVE, SESSION_INVALID) or attempt == 2:
                    raise
                self._drop_command_client()
        raise AssertionError("unreachable")

    def _drop_command_client(self) -> None:
        with self._command_lock:
            if self._command_client is not None:
                self._command_client.close()
                self._command_client = None
