"""The data plane behind the servicer: registry, mirror queries, the watch stream, the HA-config write.

Takes validated, domain-level arguments and returns domain objects; raises ServiceError for expected failures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Final, TypeVar

import grpc
import orjson
from google.protobuf import timestamp_pb2
from sqlalchemy.exc import IntegrityError

from sync_service.crypto import Credentials, CredentialsCipher
from sync_service.domain import (
    NULL_REF,
    MirrorHost,
    MirrorVm,
    PoolInfo,
    observe_vm,
    utcnow,
    vm_facts_from_raw,
    vm_from_record,
)
from sync_service.store.repository import Page, PoolNotFoundError, Repository, VmFilter
from sync_service.supervisor import Supervisor
from sync_service.xapi import TlsOptions, XapiClient, XapiConnectionError, XapiError
from sync_service.xapi.client import as_int
from sync_service.xapi.errors import HANDLE_INVALID, INVALID_VALUE, SESSION_AUTHENTICATION_FAILED, UUID_INVALID
from xsha_api.v1 import common_pb2, sync_service_pb2
from xsha_common.db import retry_transient
from xsha_common.errors import (
    FieldViolation,
    ServiceError,
    already_exists,
    failed_precondition,
    invalid_arguments,
    not_found,
    out_of_range,
    unavailable,
)

log = logging.getLogger(__name__)

WATCH_BATCH: Final = 500
MAX_CHANGES_PER_RESPONSE: Final = 1000
T = TypeVar("T")


def _retrying_conflicts(transaction: Callable[[], T]) -> T:
    """A registry write retried at once when it loses a lock conflict (a deadlock with another replica's lease or
    batch write): a few quick tries, so the caller sees UNAVAILABLE only when the database itself is down."""
    return retry_transient(transaction, attempts=4, backoff=0.05, max_backoff=0.2)


def _change_batch(payloads: Sequence[bytes]) -> sync_service_pb2.WatchChangesResponse:
    """A response of stored Change payloads, each parsed in place (no copy of a parsed Change)."""
    response = sync_service_pb2.WatchChangesResponse()
    changes = response.changes.changes
    for payload in payloads:
        changes.add().MergeFromString(payload)
    return response


@dataclass(frozen=True)
class WatchSettings:
    # Fallback poll of the change log, so commits of other replicas are seen without an in-process wake-up.
    poll_interval: float = 0.5
    default_bookmark_interval: float = 5.0


def _pool_not_found(cluster_id: str) -> ServiceError:
    return not_found("pool", cluster_id, reason="POOL_NOT_FOUND", hint="register the pool first, or list the pools")


def xapi_error_to_service_error(error: XapiError, *, vm_uuid: str = "") -> ServiceError:
    """XAPI failures of SetVmHaConfig as gRPC statuses, the XAPI code kept in ErrorInfo reason and metadata."""
    metadata = {"xapi_code": error.code, "xapi_params": orjson.dumps(list(error.params)).decode()}
    if vm_uuid:
        metadata["vm_uuid"] = vm_uuid
    reason = error.code if error.code.replace("_", "").isalnum() and error.code.isupper() else "XAPI_ERROR"
    if error.code == INVALID_VALUE:
        field = error.params[0] if error.params else "ha_restart_priority"
        return invalid_arguments(
            [FieldViolation(field, f"XAPI refused the value: {error}", reason)], reason=reason, metadata=metadata
        )
    if error.code in (HANDLE_INVALID, UUID_INVALID):
        return ServiceError(
            grpc.StatusCode.NOT_FOUND,
            f"XAPI no longer knows VM {vm_uuid} ({error}); list the VMs again",
            reason[:63],
            metadata=metadata,
        )
    if error.code == SESSION_AUTHENTICATION_FAILED:
        return failed_precondition(
            "XAPI refused the pool's credentials; update the pool with valid credentials",
            reason,
            metadata=metadata,
        )
    return failed_precondition(
        f"XAPI refused the change: {error}; fix the pool state it names (e.g. its HA failover plan) and retry",
        reason[:63],
        metadata=metadata,
    )


class SyncHandlers:
    def __init__(
        self,
        repository: Repository,
        supervisor: Supervisor,
        cipher: CredentialsCipher,
        *,
        watch: WatchSettings | None = None,
    ) -> None:
        self.repository = repository
        self.supervisor = supervisor
        self.cipher = cipher
        self.watch_settings = watch or WatchSettings()

    # ------------------------------------------------------------------------------------- registry

    def register_pool(
        self,
        cluster_id: str,
        master_url: str,
        credentials: Credentials | None,
        tls: TlsOptions,
        request_id: str,
    ) -> PoolInfo:
        for _ in range(2):
            existing = self.repository.pool_registration(cluster_id)
            if existing is not None:
                pool, encrypted, registered_request = existing
                if request_id and request_id == registered_request:
                    return pool
                if self._same_registration(pool, encrypted, master_url, credentials, tls):
                    return pool
                raise already_exists(
                    "pool",
                    cluster_id,
                    reason="POOL_ALREADY_REGISTERED",
                    hint="the cluster has a pool registered with another configuration; use UpdatePool to change it",
                )
            try:
                encrypted = self.cipher.encrypt(credentials) if credentials is not None else None
                pool = _retrying_conflicts(
                    partial(
                        self.repository.register_pool,
                        cluster_id=cluster_id,
                        master_url=master_url,
                        credentials_encrypted=encrypted,
                        tls_ca_bundle_pem=tls.ca_bundle_pem,
                        tls_fingerprint=tls.certificate_sha256_fingerprint,
                        tls_insecure=tls.insecure_skip_verify,
                        request_id=request_id,
                    )
                )
            except IntegrityError:
                continue  # a concurrent registration of the same cluster won: compare with it
            if tls.insecure_skip_verify:
                log.warning("pool registered with TLS verification off", extra={"cluster_id": cluster_id})
            log.info("pool registered", extra={"cluster_id": cluster_id, "master_url": master_url})
            self.supervisor.reconcile()
            return pool
        raise ServiceError(grpc.StatusCode.ABORTED, "concurrent registrations raced; retry", "CONCURRENT_MODIFICATION")

    def _same_registration(
        self,
        pool: PoolInfo,
        encrypted: bytes | None,
        master_url: str,
        credentials: Credentials | None,
        tls: TlsOptions,
    ) -> bool:
        if pool.master_url != master_url or (pool.tls_ca_bundle_pem, pool.tls_fingerprint, pool.tls_insecure) != (
            tls.ca_bundle_pem,
            tls.certificate_sha256_fingerprint,
            tls.insecure_skip_verify,
        ):
            return False
        if encrypted is None or credentials is None:
            return encrypted is None and credentials is None
        try:
            return self.cipher.decrypt(encrypted) == credentials
        except Exception:
            return False

    def update_pool(
        self,
        cluster_id: str,
        *,
        master_url: str | None,
        credentials: Credentials | None,
        tls: TlsOptions | None,
        request_id: str,
    ) -> PoolInfo:
        try:
            encrypted = self.cipher.encrypt(credentials) if credentials is not None else None
            pool = _retrying_conflicts(
                lambda: self.repository.update_pool(
                    cluster_id,
                    master_url=master_url,
                    credentials_encrypted=encrypted,
                    tls=(tls.ca_bundle_pem, tls.certificate_sha256_fingerprint, tls.insecure_skip_verify)
                    if tls is not None
                    else None,
                    request_id=request_id,
                )
            )
        except PoolNotFoundError:
            raise _pool_not_found(cluster_id) from None
        except IntegrityError:
            return self.get_pool(cluster_id)  # the same request_id raced itself: it is done
        self.supervisor.reconcile()
        return pool

    def deregister_pool(self, cluster_id: str, request_id: str) -> None:
        if not _retrying_conflicts(lambda: self.repository.deregister_pool(cluster_id, request_id)):
            raise _pool_not_found(cluster_id)
        log.info("pool deregistered", extra={"cluster_id": cluster_id})
        self.supervisor.reconcile()

    def get_pool(self, cluster_id: str) -> PoolInfo:
        pool = self.repository.find_pool(cluster_id)
        if pool is None:
            raise _pool_not_found(cluster_id)
        return self._live_status(pool)

    def _live_status(self, pool: PoolInfo) -> PoolInfo:
        """A pool no watcher follows is shown as such, whatever the table last said (a pool another replica holds
        the lease of shows the status that replica writes)."""
        watcher = self.supervisor.watcher(pool.cluster_id)
        if self.supervisor.followed_elsewhere(pool.cluster_id):
            return pool
        if watcher is None or not watcher.alive:
            return replace(pool, status=replace(pool.status, state="IDLE", connected=False))
        return pool

    def list_pools(self, *, after_id: int | None, limit: int) -> Page[PoolInfo]:
        page = self.repository.list_pools(after_id=after_id, limit=limit)
        return Page([self._live_status(pool) for pool in page.items], page.last_key, page.revision)

    def resync_pool(self, cluster_id: str, timeout: float) -> PoolInfo:
        self.get_pool(cluster_id)
        watcher = self.supervisor.watcher(cluster_id)
        if watcher is None:
            self.supervisor.reconcile()
            watcher = self.supervisor.watcher(cluster_id)
        if watcher is None:
            raise unavailable(f"pool {cluster_id} is not watched by this replica; retry", "POOL_NOT_WATCHED")
        beyond = watcher.request_resync()
        if not watcher.wait_full_sync(beyond, timeout):
            raise unavailable(
                f"the re-list of pool {cluster_id} did not complete in {timeout:.0f}s (see sync_status.last_error); "
                "it goes on in the background",
                "RESYNC_PENDING",
                retry_delay=5.0,
            )
        return self.get_pool(cluster_id)

    # ---------------------------------------------------------------------------------------- mirror

    def get_vm(self, *, uuid: str = "", cluster_id: str = "", name: str = "") -> MirrorVm:
        vm = self.repository.get_vm(uuid=uuid, cluster_id=cluster_id, name=name)
        if vm is None:
            key = uuid or f"{cluster_id}/{name}"
            raise not_found("VM", key, reason="VM_NOT_FOUND", hint="list the VMs of the cluster")
        return vm

    def list_vms(
        self, vm_filter: VmFilter, *, after_id: int | None, limit: int, revision: int | None
    ) -> Page[MirrorVm]:
        return self.repository.list_vms(vm_filter, after_id=after_id, limit=limit, revision=revision)

    def list_hosts(
        self, *, cluster_id: str, include_removed: bool, after_id: int | None, limit: int, revision: int | None
    ) -> Page[MirrorHost]:
        return self.repository.list_hosts(
            cluster_id=cluster_id, include_removed=include_removed, after_id=after_id, limit=limit, revision=revision
        )

    # ----------------------------------------------------------------------------------------- watch

    def watch(
        self,
        since_revision: int,
        *,
        kinds: Sequence[str],
        cluster_id: str,
        bookmark_interval: float,
        is_active: Callable[[], bool],
        max_per_response: int = 1,
    ) -> Iterator[sync_service_pb2.WatchChangesResponse]:
        """Changes after `since_revision` in revision order, bookmarks when idle, until the client goes away.
        With `max_per_response` above 1, the changes read together go out up to that many to a response."""
        compacted = self.repository.compacted_through()
        current = self.repository.current_revision()
        if since_revision > current:
            raise out_of_range(
                f"revision {since_revision} is ahead of the mirror (at {current}); list again and watch from the "
                "list's revision",
                "REVISION_AHEAD",
                field="since_revision",
                metadata={"current_revision": str(current)},
            )
        position = max(since_revision, compacted) if since_revision == 0 else since_revision
        self._check_retained(position, compacted)
        poll = self.watch_settings.poll_interval
        last_sent = time.monotonic()
        caught_up_once = False
        while is_active():
            read = self.repository.read_changes(position, kinds=kinds, cluster_id=cluster_id, limit=WATCH_BATCH)
            self._check_retained(position, read.compacted_through)
            if max_per_response > 1:
                for start in range(0, len(read.payloads), max_per_response):
                    yield _change_batch(read.payloads[start : start + max_per_response])
            else:
                for payload in read.payloads:
                    yield sync_service_pb2.WatchChangesResponse(change=sync_service_pb2.Change.FromString(payload))
            position = read.position
            now = time.monotonic()
            if read.payloads:
                last_sent = now
                if len(read.payloads) >= WATCH_BATCH:
                    continue
            if not caught_up_once or now - last_sent >= bookmark_interval:
                caught_up_once = True
                last_sent = now
                yield sync_service_pb2.WatchChangesResponse(bookmark=self._bookmark(position))
            wait = min(poll, max(0.0, bookmark_interval - (time.monotonic() - last_sent)))
            self.repository.notifier.wait_beyond(position, max(wait, 0.01))

    @staticmethod
    def _bookmark(revision: int) -> common_pb2.Bookmark:
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        return common_pb2.Bookmark(revision=revision, time=now)

    @staticmethod
    def _check_retained(position: int, compacted: int) -> None:
        if position < compacted:
            raise out_of_range(
                f"revision {position} is older than the retained change log (changes up to {compacted} were "
                "discarded); list again and watch from the list's revision",
                "REVISION_COMPACTED",
                field="since_revision",
                metadata={"compacted_through": str(compacted)},
            )

    # ------------------------------------------------------------------------------------- HA config

    def set_vm_ha_config(self, vm_uuid: str, priority: str, order: int | None, start_delay: int | None) -> MirrorVm:
        mirrored = self.get_vm(uuid=vm_uuid)
        if mirrored.removed:
            raise not_found("VM", vm_uuid, reason="VM_NOT_FOUND", hint="the VM is gone from XAPI")
        # Any replica writes with its own command connection; the pool's owner mirrors the result.
        watcher = self.supervisor.command_watcher(mirrored.cluster_id)
        if watcher is None:
            raise unavailable(
                f"pool {mirrored.cluster_id} is not watched by this replica; retry", "POOL_NOT_WATCHED", retry_delay=5
            )

        def write(client: XapiClient) -> tuple[dict[str, Any], str]:
            ref = client.call("VM.get_by_uuid", vm_uuid)
            record = client.call("VM.get_record", ref)
            # Only what differs is written: a retry, or a value already in place, makes no XAPI write.
            if order is not None and as_int(record.get("order")) != order:
                client.call("VM.set_order", ref, order)
            if start_delay is not None and as_int(record.get("start_delay")) != start_delay:
                client.call("VM.set_start_delay", ref, start_delay)
            if str(record.get("ha_restart_priority", "")) != priority:
                client.call("VM.set_ha_restart_priority", ref, priority)
            after = client.call("VM.get_record", ref)
            resident = str(after.get("resident_on") or NULL_REF)
            host_uuid = "" if resident == NULL_REF else str(client.call("host.get_record", resident).get("uuid", ""))
            return after, host_uuid

        try:
            record, host_uuid = watcher.run_command(write)
        except XapiError as error:
            log.info("XAPI refused an HA config change", extra={"vm_uuid": vm_uuid, "xapi_error": str(error)})
            raise xapi_error_to_service_error(error, vm_uuid=vm_uuid) from None
        except XapiConnectionError as error:
            raise unavailable(
                f"pool {mirrored.cluster_id} is unreachable ({error}); retry later", "POOL_UNREACHABLE", retry_delay=5
            ) from None
        raw = vm_from_record("", record)
        facts = vm_facts_from_raw(raw, host_uuid)
        return observe_vm(
            mirrored,
            facts,
            cluster_id=mirrored.cluster_id,
            pool_uuid=mirrored.pool_uuid,
            now=utcnow(),
            full_report=False,
        )
