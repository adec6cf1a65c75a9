"""HypervisorSyncService over gRPC: validate -> handler -> convert. Errors are ServiceErrors, which the
server's error interceptor turns into rich statuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import grpc

from sync_service import converters
from sync_service.crypto import Credentials
from sync_service.domain import HA_RESTART_PRIORITIES
from sync_service.handlers import MAX_CHANGES_PER_RESPONSE, SyncHandlers
from sync_service.store.repository import VmFilter
from sync_service.validation import (
    MAX_NAME,
    Violations,
    check_cluster_id,
    check_credentials,
    check_ha_config,
    check_master_url,
    check_request_id,
    check_tls,
    check_uuid,
    decode_page_token,
    encode_page_token,
    fingerprint,
    page_size,
)
from sync_service.xapi.tls import TlsOptions
from xsha_api.v1 import sync_service_pb2, sync_service_pb2_grpc

SERVICE_NAME: Final = "cloudstack.xsha.v1.HypervisorSyncService"
MIN_BOOKMARK_SECONDS: Final = 0.1
MAX_BOOKMARK_SECONDS: Final = 3600.0
RESYNC_TIMEOUT: Final = 60.0


def _tls_from_proto(message: sync_service_pb2.XapiTlsOptions) -> TlsOptions:
    which = message.WhichOneof("verification")
    if which == "ca_bundle_pem":
        return TlsOptions(ca_bundle_pem=message.ca_bundle_pem)
    if which == "certificate_sha256_fingerprint":
        return TlsOptions(certificate_sha256_fingerprint=message.certificate_sha256_fingerprint)
    if which == "insecure_skip_verify" and message.insecure_skip_verify:
        return TlsOptions(insecure_skip_verify=True)
    return TlsOptions()


class HypervisorSyncServicer(sync_service_pb2_grpc.HypervisorSyncServiceServicer):
    def __init__(self, handlers: SyncHandlers) -> None:
        self.handlers = handlers

    # ------------------------------------------------------------------------------------- registry

    def RegisterPool(  # noqa: N802
        self, request: sync_service_pb2.RegisterPoolRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.RegisterPoolResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id)
        check_master_url(violations, "master_url", request.master_url)
        check_request_id(violations, "request_id", request.request_id)
        if not request.HasField("credentials"):
            violations.add("credentials", "are required: the XAPI user name and password of the pool")
        else:
            check_credentials(violations, "credentials", request.credentials.username, request.credentials.password)
        tls = check_tls(violations, "tls", _tls_from_proto(request.tls), request.master_url)
        violations.raise_if_any()
        pool = self.handlers.register_pool(
            request.cluster_id,
            request.master_url.rstrip("/"),
            Credentials(request.credentials.username, request.credentials.password),
            tls,
            request.request_id,
        )
        return sync_service_pb2.RegisterPoolResponse(pool=converters.pool_to_proto(pool))

    def UpdatePool(  # noqa: N802
        self, request: sync_service_pb2.UpdatePoolRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.UpdatePoolResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id)
        check_request_id(violations, "request_id", request.request_id)
        master_url: str | None = None
        if request.HasField("master_url"):
            check_master_url(violations, "master_url", request.master_url)
            master_url = request.master_url.rstrip("/")
        credentials: Credentials | None = None
        if request.HasField("credentials"):
            check_credentials(violations, "credentials", request.credentials.username, request.credentials.password)
            credentials = Credentials(request.credentials.username, request.credentials.password)
        tls: TlsOptions | None = None
        if request.HasField("tls"):
            effective_url = master_url
            if effective_url is None and request.cluster_id and not violations.items:
                effective_url = self.handlers.get_pool(request.cluster_id).master_url
            tls = check_tls(violations, "tls", _tls_from_proto(request.tls), effective_url)
        violations.raise_if_any()
        pool = self.handlers.update_pool(
            request.cluster_id,
            master_url=master_url,
            credentials=credentials,
            tls=tls,
            request_id=request.request_id,
        )
        return sync_service_pb2.UpdatePoolResponse(pool=converters.pool_to_proto(pool))

    def DeregisterPool(  # noqa: N802
        self, request: sync_service_pb2.DeregisterPoolRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.DeregisterPoolResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id)
        check_request_id(violations, "request_id", request.request_id)
        violations.raise_if_any()
        self.handlers.deregister_pool(request.cluster_id, request.request_id)
        return sync_service_pb2.DeregisterPoolResponse()

    def GetPool(  # noqa: N802
        self, request: sync_service_pb2.GetPoolRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.GetPoolResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id)
        violations.raise_if_any()
        return sync_service_pb2.GetPoolResponse(
            pool=converters.pool_to_proto(self.handlers.get_pool(request.cluster_id))
        )

    def ListPools(  # noqa: N802
        self, request: sync_service_pb2.ListPoolsRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.ListPoolsResponse:
        violations = Violations()
        limit = page_size(violations, "page_size", request.page_size)
        violations.raise_if_any()
        after_id, _ = decode_page_token(request.page_token, "pools", "")
        page = self.handlers.list_pools(after_id=after_id, limit=limit)
        return sync_service_pb2.ListPoolsResponse(
            pools=[converters.pool_to_proto(pool) for pool in page.items],
            next_page_token=encode_page_token("pools", page.last_key, page.revision, ""),
            revision=page.revision,
        )

    def ResyncPool(  # noqa: N802
        self, request: sync_service_pb2.ResyncPoolRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.ResyncPoolResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id)
        violations.raise_if_any()
        remaining = context.time_remaining()
        timeout = RESYNC_TIMEOUT if remaining is None else max(0.1, min(RESYNC_TIMEOUT, remaining - 0.5))
        pool = self.handlers.resync_pool(request.cluster_id, timeout)
        return sync_service_pb2.ResyncPoolResponse(pool=converters.pool_to_proto(pool))

    # ---------------------------------------------------------------------------------------- mirror

    def ListHosts(  # noqa: N802
        self, request: sync_service_pb2.ListHostsRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.ListHostsResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id, required=False)
        limit = page_size(violations, "page_size", request.page_size)
        violations.raise_if_any()
        filter_key = fingerprint([request.cluster_id, request.include_removed])
        after_id, revision = decode_page_token(request.page_token, "hosts", filter_key)
        page = self.handlers.list_hosts(
            cluster_id=request.cluster_id,
            include_removed=request.include_removed,
            after_id=after_id,
            limit=limit,
            revision=revision,
        )
        return sync_service_pb2.ListHostsResponse(
            hosts=[converters.host_to_proto(host) for host in page.items],
            next_page_token=encode_page_token("hosts", page.last_key, page.revision, filter_key),
            revision=page.revision,
        )

    def GetVm(  # noqa: N802
        self, request: sync_service_pb2.GetVmRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.GetVmResponse:
        violations = Violations()
        which = request.WhichOneof("key")
        if which == "uuid":
            check_uuid(violations, "uuid", request.uuid)
        elif which == "name":
            check_cluster_id(violations, "name.cluster_id", request.name.cluster_id)
            if not request.name.name:
                violations.add("name.name", "is required: the VM's name_label (CloudStack's instance name)")
            elif len(request.name.name) > MAX_NAME:
                violations.add("name.name", f"is longer than {MAX_NAME} characters")
        else:
            violations.add("key", "set uuid, or name (cluster_id and name)")
        violations.raise_if_any()
        if which == "uuid":
            vm = self.handlers.get_vm(uuid=request.uuid)
        else:
            vm = self.handlers.get_vm(cluster_id=request.name.cluster_id, name=request.name.name)
        return sync_service_pb2.GetVmResponse(vm=converters.vm_to_proto(vm))

    def ListVms(  # noqa: N802
        self, request: sync_service_pb2.ListVmsRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.ListVmsResponse:
        violations = Violations()
        check_cluster_id(violations, "cluster_id", request.cluster_id, required=False)
        check_uuid(violations, "resident_host_uuid", request.resident_host_uuid, required=False)
        limit = page_size(violations, "page_size", request.page_size)
        xapi_states = []
        for index, value in enumerate(request.xapi_power_states):
            state = converters.XAPI_POWER_STATE_FROM_PROTO.get(value)
            if state is None or value == 0:
                violations.add(f"xapi_power_states[{index}]", "must be HALTED, PAUSED, RUNNING or SUSPENDED")
            else:
                xapi_states.append(state)
        power_states = []
        for index, power_value in enumerate(request.power_states):
            power = converters.POWER_STATE_FROM_PROTO.get(power_value)
            if power is None:
                violations.add(
                    f"power_states[{index}]", "must be POWER_ON, POWER_OFF, POWER_UNKNOWN or POWER_REPORT_MISSING"
                )
            else:
                power_states.append(power)
        for index, priority in enumerate(request.ha_restart_priorities):
            if priority not in HA_RESTART_PRIORITIES:
                violations.add(f"ha_restart_priorities[{index}]", 'must be "restart", "best-effort" or ""')
        if len(request.name_prefix) > MAX_NAME:
            violations.add("name_prefix", f"is longer than {MAX_NAME} characters")
        violations.raise_if_any()
        vm_filter = VmFilter(
            cluster_id=request.cluster_id,
            resident_host_uuid=request.resident_host_uuid,
            xapi_power_states=tuple(xapi_states),
            power_states=tuple(power_states),
            ha_restart_priorities=tuple(request.ha_restart_priorities) if request.ha_restart_priorities else None,
            name_prefix=request.name_prefix,
            include_removed=request.include_removed,
        )
        filter_key = fingerprint(
            [
                vm_filter.cluster_id,
                vm_filter.resident_host_uuid,
                [s.value for s in vm_filter.xapi_power_states],
                [s.value for s in vm_filter.power_states],
                vm_filter.ha_restart_priorities,
                vm_filter.name_prefix,
                vm_filter.include_removed,
            ]
        )
        after_id, revision = decode_page_token(request.page_token, "vms", filter_key)
        page = self.handlers.list_vms(vm_filter, after_id=after_id, limit=limit, revision=revision)
        return sync_service_pb2.ListVmsResponse(
            vms=[converters.vm_to_proto(vm) for vm in page.items],
            next_page_token=encode_page_token("vms", page.last_key, page.revision, filter_key),
            revision=page.revision,
        )

    def WatchChanges(  # noqa: N802
        self, request: sync_service_pb2.WatchChangesRequest, context: grpc.ServicerContext
    ) -> Iterator[sync_service_pb2.WatchChangesResponse]:
        violations = Violations()
        if request.since_revision < 0:
            violations.add("since_revision", "must not be negative (0 sends every retained change)")
        kinds: list[str] = []
        for index, kind in enumerate(request.kinds):
            name = converters.KIND_FROM_PROTO.get(kind)
            if name is None:
                violations.add(f"kinds[{index}]", "must be RESOURCE_KIND_POOL, RESOURCE_KIND_HOST or RESOURCE_KIND_VM")
            else:
                kinds.append(name)
        check_cluster_id(violations, "cluster_id", request.cluster_id, required=False)
        interval = self.handlers.watch_settings.default_bookmark_interval
        if request.HasField("bookmark_interval"):
            # Arithmetic, not ToTimedelta(): a duration outside protobuf's range must be refused, not crash.
            seconds = request.bookmark_interval.seconds + request.bookmark_interval.nanos / 1e9
            if seconds < 0:
                violations.add("bookmark_interval", "must not be negative")
            elif seconds == 0:
                pass
            elif seconds < MIN_BOOKMARK_SECONDS:
                violations.add("bookmark_interval", "must be at least 100 ms")
            elif seconds > MAX_BOOKMARK_SECONDS:
                violations.add("bookmark_interval", "must be at most one hour")
            else:
                interval = seconds
        if request.max_changes_per_response > MAX_CHANGES_PER_RESPONSE:
            violations.add("max_changes_per_response", f"must be at most {MAX_CHANGES_PER_RESPONSE}")
        violations.raise_if_any()
        yield from self.handlers.watch(
            request.since_revision,
            kinds=kinds,
            cluster_id=request.cluster_id,
            bookmark_interval=interval,
            max_per_response=max(1, request.max_changes_per_response),
            is_active=context.is_active,
        )

    def SetVmHaConfig(  # noqa: N802
        self, request: sync_service_pb2.SetVmHaConfigRequest, context: grpc.ServicerContext
    ) -> sync_service_pb2.SetVmHaConfigResponse:
        violations = Violations()
        check_uuid(violations, "vm_uuid", request.vm_uuid)
        check_request_id(violations, "request_id", request.request_id)
        order = request.order if request.HasField("order") else None
        start_delay = request.start_delay_seconds if request.HasField("start_delay_seconds") else None
        check_ha_config(violations, request.ha_restart_priority, order, start_delay)
        violations.raise_if_any()
        # Idempotent by nature: the handler writes only what differs from XAPI's current values.
        vm = self.handlers.set_vm_ha_config(request.vm_uuid, request.ha_restart_priority, order, start_delay)
        return sync_service_pb2.SetVmHaConfigResponse(vm=converters.vm_to_proto(vm))
