"""Full-size XAPI record factories (VM, host, host_metrics, pool, message) with real field names and types.

Values are plain Python: str, int (XAPI int: a string on XML-RPC, a number in JSON), float, bool, XapiDateTime,
dict (map, string keys) and list (set). Records share their default containers between objects, so a record's
values must never be mutated in place: every change replaces the value (see model.ObjectStore.modify).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

NULL_REF = "OpaqueRef:NULL"
GIB = 1024**3
MIB = 1024**2


class XapiDateTime(str):
    """An XAPI datetime: `<dateTime.iso8601>` on XML-RPC, a plain string in JSON (as xapi sends it)."""

    __slots__ = ()

    @classmethod
    def at(cls, ts: float) -> XapiDateTime:
        return cls(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(ts)))

    @classmethod
    def now(cls) -> XapiDateTime:
        return cls.at(time.time())


EPOCH = XapiDateTime("19700101T00:00:00Z")


def new_uuid() -> str:
    return str(uuid.uuid4())


def new_ref() -> str:
    return "OpaqueRef:" + str(uuid.uuid4())


# A real VM's `recommendations` (XML from the template) and `last_booted_record` strings are a large share of
# a record's bytes; XML-RPC escapes their angle brackets, JSON their quotes.
_RECOMMENDATIONS = (
    '<restrictions><restriction field="memory-static-max" max="1649267441664"/>'
    '<restriction field="vcpus-max" max="32"/><restriction max="255" property="number-of-vbds"/>'
    '<restriction max="7" property="number-of-vifs"/></restrictions>'
)

_VM_ALLOWED_OPS_HALTED = [
    "changing_NVRAM",
    "changing_dynamic_range",
    "changing_shadow_memory",
    "changing_static_range",
    "make_into_template",
    "migrate_send",
    "destroy",
    "export",
    "start_on",
    "start",
    "clone",
    "copy",
    "snapshot",
]
_VM_ALLOWED_OPS_RUNNING = [
    "changing_dynamic_range",
    "migrate_send",
    "pool_migrate",
    "changing_VCPUs_live",
    "suspend",
    "hard_reboot",
    "hard_shutdown",
    "clean_reboot",
    "clean_shutdown",
    "pause",
    "checkpoint",
    "snapshot",
]
_VM_ALLOWED_OPS_SUSPENDED = ["resume", "resume_on", "hard_shutdown", "snapshot", "export", "copy", "clone"]
_VM_ALLOWED_OPS_PAUSED = ["unpause", "hard_reboot", "hard_shutdown", "snapshot", "checkpoint"]


def vm_allowed_operations(power_state: str, is_template: bool = False) -> list[str]:
    if is_template:
        return ["changing_NVRAM", "changing_memory_limits", "changing_shadow_memory", "clone", "copy", "export"]
    return {
        "Halted": _VM_ALLOWED_OPS_HALTED,
        "Running": _VM_ALLOWED_OPS_RUNNING,
        "Suspended": _VM_ALLOWED_OPS_SUSPENDED,
        "Paused": _VM_ALLOWED_OPS_PAUSED,
    }.get(power_state, [])


_PLATFORM = {
    "timeoffset": "0",
    "device-model": "qemu-upstream-compat",
    "videoram": "8",
    "hpet": "true",
    "secureboot": "false",
    "device_id": "0001",
    "vga": "std",
    "apic": "true",
    "viridian": "true",
    "nx": "true",
    "pae": "true",
    "cores-per-socket": "2",
    "viridian_time_ref_count": "true",
    "acpi": "1",
    "viridian_reference_tsc": "true",
}
_HVM_BOOT_PARAMS = {"order": "cdn", "firmware": "bios"}
_VCPUS_PARAMS: dict[str, str] = {"weight": "256", "cap": "0"}
_BIOS_STRINGS = {
    "bios-vendor": "Xen",
    "bios-version": "",
    "system-manufacturer": "Xen",
    "system-product-name": "HVM domU",
    "system-version": "",
    "system-serial-number": "",
    "baseboard-manufacturer": "",
    "baseboard-product-name": "",
    "baseboard-version": "",
    "baseboard-serial-number": "",
    "baseboard-asset-tag": "",
    "baseboard-location-in-chassis": "",
    "enclosure-asset-tag": "",
    "hp-rombios": "",
    "oem-1": "Xen",
    "oem-2": "MS_VM_CERT/SHA1/bdbeb6e0a816d43fa6d3fe8aaef04c2bad9d3e3d",
}
_LAST_BOOT_CPU_FLAGS = {
    "vendor": "GenuineIntel",
    "features_pv": "1fc9cbf5-f6f83203-2991cbf5-00000123-00000007-209c01a9",
    "features_hvm": "17cbfbff-f7fa3223-2d93fbff-00000523-00000007-219c07ab",
}
_BLOCKED_OPERATIONS: dict[str, str] = {}


def vm_record(
    *,
    uuid_: str,
    name_label: str,
    power_state: str = "Halted",
    resident_on: str = NULL_REF,
    memory: int = 1 * GIB,
    vcpus: int = 2,
    ha_restart_priority: str = "",
    order: int = 0,
    start_delay: int = 0,
    is_a_template: bool = False,
    is_control_domain: bool = False,
    is_a_snapshot: bool = False,
    snapshot_of: str = NULL_REF,
    domid: int = -1,
    other_config: dict[str, str] | None = None,
) -> dict[str, Any]:
    running = power_state in ("Running", "Paused")
    ha_always_run = running and ha_restart_priority == "restart"
    return {
        "uuid": uuid_,
        "allowed_operations": vm_allowed_operations(power_state, is_a_template),
        "current_operations": {},
        "name_label": name_label,
        "name_description": "" if not is_control_domain else "The domain which manages physical devices",
        "power_state": power_state,
        "user_version": 1,
        "is_a_template": is_a_template,
        "is_default_template": False,
        "suspend_VDI": NULL_REF,
        "resident_on": resident_on,
        "scheduled_to_be_resident_on": NULL_REF,
        "affinity": NULL_REF,
        "memory_overhead": 11534336,
        "memory_target": memory if running else 0,
        "memory_static_max": memory,
        "memory_dynamic_max": memory,
        "memory_dynamic_min": memory,
        "memory_static_min": memory // 2,
        "VCPUs_params": _VCPUS_PARAMS,
        "VCPUs_max": vcpus,
        "VCPUs_at_startup": vcpus,
        "actions_after_softreboot": "soft_reboot",
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "consoles": [new_ref()] if running else [],
        "VIFs": [new_ref()],
        "VBDs": [new_ref(), new_ref()],
        "VUSBs": [],
        "crash_dumps": [],
        "VTPMs": [],
        "PV_bootloader": "",
        "PV_kernel": "",
        "PV_ramdisk": "",
        "PV_args": "",
        "PV_bootloader_args": "",
        "PV_legacy_args": "",
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": _HVM_BOOT_PARAMS,
        "HVM_shadow_multiplier": 1.0,
        "platform": _PLATFORM,
        "PCI_bus": "",
        "other_config": other_config if other_config is not None else {},
        "domid": domid,
        "domarch": "x64" if running else "",
        "last_boot_CPU_flags": _LAST_BOOT_CPU_FLAGS if running else {},
        "is_control_domain": is_control_domain,
        "metrics": new_ref(),
        "guest_metrics": new_ref() if running else NULL_REF,
        "last_booted_record": "",
        "recommendations": _RECOMMENDATIONS if not is_control_domain else "",
        "xenstore_data": {"vm-data": "", "vm-data/mmio-hole-size": "268435456"},
        "ha_always_run": ha_always_run,
        "ha_restart_priority": ha_restart_priority,
        "is_a_snapshot": is_a_snapshot,
        "snapshot_of": snapshot_of,
        "snapshots": [],
        "snapshot_time": XapiDateTime.now() if is_a_snapshot else EPOCH,
        "transportable_snapshot_id": "",
        "blobs": {},
        "tags": [],
        "blocked_operations": _BLOCKED_OPERATIONS,
        "snapshot_info": {},
        "snapshot_metadata": "",
        "parent": NULL_REF,
        "children": [],
        "bios_strings": _BIOS_STRINGS,
        "protection_policy": NULL_REF,
        "is_snapshot_from_vmpp": False,
        "snapshot_schedule": NULL_REF,
        "is_vmss_snapshot": False,
        "appliance": NULL_REF,
        "start_delay": start_delay,
        "shutdown_delay": 0,
        "order": order,
        "VGPUs": [],
        "attached_PCIs": [],
        "suspend_SR": NULL_REF,
        "version": 0,
        "generation_id": "0:0",
        "hardware_platform_version": 0,
        "has_vendor_device": False,
        "requires_reboot": False,
        "reference_label": "",
        "domain_type": "hvm" if not is_control_domain else "pv",
        "NVRAM": {},
        "pending_guidances": [],
        "pending_guidances_recommended": [],
        "pending_guidances_full": [],
    }


def dom0_record(uuid_: str, host_ref: str, hostname: str, memory: int) -> dict[str, Any]:
    rec = vm_record(
        uuid_=uuid_,
        name_label=f"Control domain on host: {hostname}",
        power_state="Running",
        resident_on=host_ref,
        memory=memory,
        vcpus=8,
        is_control_domain=True,
        domid=0,
    )
    rec["allowed_operations"] = []
    rec["HVM_boot_policy"] = ""
    rec["HVM_boot_params"] = {}
    rec["platform"] = {}
    rec["other_config"] = {"storage_driver_domain": new_ref(), "is_system_domain": "true", "perfmon": ""}
    return rec


def template_record(uuid_: str, name_label: str) -> dict[str, Any]:
    rec = vm_record(uuid_=uuid_, name_label=name_label, is_a_template=True)
    rec["is_default_template"] = True
    rec["VIFs"] = []
    rec["VBDs"] = []
    rec["other_config"] = {
        "default_template": "true",
        "linux_template": "true",
        "install-methods": "cdrom,nfs,http,ftp",
        "disks": '<provision><disk device="0" size="10737418240" sr="" bootable="true" type="system"/></provision>',
    }
    return rec


def host_record(
    *,
    uuid_: str,
    hostname: str,
    address: str,
    metrics_ref: str,
    control_domain: str,
    software_version: dict[str, str],
    api_version: tuple[int, int],
    memory_overhead: int = 1 * GIB // 4,
) -> dict[str, Any]:
    major, minor = api_version
    return {
        "uuid": uuid_,
        "name_label": hostname,
        "name_description": "Default install",
        "memory_overhead": memory_overhead,
        "allowed_operations": ["vm_migrate", "provision", "vm_resume", "evacuate", "vm_start"],
        "current_operations": {},
        "API_version_major": major,
        "API_version_minor": minor,
        "API_version_vendor": "XenSource",
        "API_version_vendor_implementation": {},
        "enabled": True,
        "software_version": software_version,
        "other_config": {"agent_start_time": "1700000000.", "boot_time": "1700000000.", "iscsi_iqn": ""},
        "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_32p", "hvm-3.0-x86_64"],
        "cpu_configuration": {},
        "sched_policy": "credit",
        "supported_bootloaders": ["pygrub", "eliloader"],
        "resident_VMs": [],
        "logging": {},
        "PIFs": [new_ref(), new_ref()],
        "suspend_image_sr": NULL_REF,
        "crash_dump_sr": NULL_REF,
        "crashdumps": [],
        "patches": [],
        "updates": [],
        "PBDs": [new_ref(), new_ref()],
        "host_CPUs": [new_ref() for _ in range(4)],
        "cpu_info": {
            "cpu_count": "32",
            "socket_count": "2",
            "vendor": "GenuineIntel",
            "speed": "2600.000",
            "modelname": "Intel(R) Xeon(R) CPU E5-2650 v2 @ 2.60GHz",
            "family": "6",
            "model": "62",
            "stepping": "4",
        },
        "hostname": hostname,
        "address": address,
        "metrics": metrics_ref,
        "license_params": {"sku_type": "free", "expiry": "30000101T00:00:00Z"},
        "ha_statefiles": [],
        "ha_network_peers": [],
        "blobs": {},
        "tags": [],
        "external_auth_type": "",
        "external_auth_service_name": "",
        "external_auth_configuration": {},
        "edition": "free",
        "license_server": {"address": "localhost", "port": "27000"},
        "bios_strings": {"bios-vendor": "Dell Inc.", "system-manufacturer": "Dell Inc."},
        "power_on_mode": "",
        "power_on_config": {},
        "local_cache_sr": NULL_REF,
        "chipset_info": {"iommu": "true"},
        "PCIs": [],
        "PGPUs": [],
        "PUSBs": [],
        "ssl_legacy": False,
        "guest_VCPUs_params": {},
        "display": "enabled",
        "virtual_hardware_platform_versions": [0, 1, 2],
        "control_domain": control_domain,
        "updates_requiring_reboot": [],
        "features": [],
        "iscsi_iqn": "",
        "multipathing": False,
        "uefi_certificates": "",
        "certificates": [],
        "editions": ["free"],
        "pending_guidances": [],
        "tls_verification_enabled": False,
        "last_software_update": EPOCH,
        "https_only": False,
    }


def host_metrics_record(uuid_: str, memory_total: int, memory_free: int) -> dict[str, Any]:
    return {
        "uuid": uuid_,
        "memory_total": memory_total,
        "memory_free": memory_free,
        "live": True,
        "last_updated": XapiDateTime.now(),
        "other_config": {},
    }


def pool_record(
    *,
    uuid_: str,
    name_label: str,
    master: str,
    ha_enabled: bool,
    ha_host_failures_to_tolerate: int,
    ha_allow_overcommit: bool,
) -> dict[str, Any]:
    return {
        "uuid": uuid_,
        "name_label": name_label,
        "name_description": "",
        "master": master,
        "default_SR": NULL_REF,
        "suspend_image_SR": NULL_REF,
        "crash_dump_SR": NULL_REF,
        "other_config": {"memory-ratio-hvm": "0.25", "memory-ratio-pv": "0.25"},
        "ha_enabled": ha_enabled,
        "ha_configuration": {},
        "ha_statefiles": [],
        "ha_host_failures_to_tolerate": ha_host_failures_to_tolerate,
        "ha_plan_exists_for": 0,
        "ha_allow_overcommit": ha_allow_overcommit,
        "ha_overcommitted": False,
        "blobs": {},
        "tags": [],
        "gui_config": {},
        "health_check_config": {},
        "wlb_url": "",
        "wlb_username": "",
        "wlb_enabled": False,
        "wlb_verify_cert": False,
        "redo_log_enabled": False,
        "redo_log_vdi": NULL_REF,
        "vswitch_controller": "",
        "restrictions": {"restrict_ha": "false", "restrict_wlb": "true", "restrict_pooling": "false"},
        "metadata_VDIs": [],
        "ha_cluster_stack": "xhad",
        "allowed_operations": ["ha_enable", "cluster_create"],
        "current_operations": {},
        "guest_agent_config": {},
        "cpu_info": {"cpu_count": "32", "socket_count": "2", "vendor": "GenuineIntel"},
        "policy_no_vendor_device": False,
        "live_patching_disabled": False,
        "igmp_snooping_enabled": False,
        "uefi_certificates": "",
        "is_psr_pending": False,
        "tls_verification_enabled": False,
        "repositories": [],
        "client_certificate_auth_enabled": False,
        "client_certificate_auth_name": "",
        "repository_proxy_url": "",
        "repository_proxy_username": "",
        "repository_proxy_password": NULL_REF,
        "migration_compression": False,
        "coordinator_bias": True,
    }


def message_record(*, uuid_: str, name: str, priority: int, cls: str, obj_uuid: str, body: str) -> dict[str, Any]:
    return {
        "uuid": uuid_,
        "name": name,
        "priority": priority,
        "cls": cls,
        "obj_uuid": obj_uuid,
        "timestamp": XapiDateTime.now(),
        "body": body,
    }
