"""Scenario files (YAML or a dict): the pools, hosts and VMs a simulator starts with. Format: docs/xapi_sim.md."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xapi_sim.pool import SimPool, VmSpec
from xapi_sim.records import GIB, MIB, NULL_REF, XapiDateTime, new_ref, new_uuid

POOL_KEYS = {
    "name",
    "version",
    "software_version",
    "jsonrpc",
    "credentials",
    "ha_enabled",
    "ha_host_failures_to_tolerate",
    "ha_allow_overcommit",
    "time_scale",
    "vm_boot_seconds",
    "ha_retry_seconds",
    "dom0_memory_gib",
    "templates",
    "hosts",
    "vms",
    "snapshots",
}


@dataclass(slots=True)
class HostListen:
    ip: str
    port: int


@dataclass(slots=True)
class BuiltPool:
    pool: SimPool
    listen: dict[str, HostListen]  # host ref -> where its endpoint listens


def load(source: dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    with open(source, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a scenario is a mapping with a 'pools' list")
    return data


def _memory(entry: dict[str, Any], default: int) -> int:
    if "memory_gib" in entry:
        return int(float(entry["memory_gib"]) * GIB)
    if "memory_mib" in entry:
        return int(entry["memory_mib"]) * MIB
    if "memory" in entry:
        return int(entry["memory"])
    return default


def _credentials(value: Any) -> dict[str, str]:
    if value is None:
        return {"root": "password"}
    if isinstance(value, dict) and "username" in value:
        return {str(value["username"]): str(value.get("password", ""))}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(c["username"]): str(c.get("password", "")) for c in value}
    raise ValueError("credentials: a mapping user -> password, or {username, password}")


def build(source: dict[str, Any] | str | Path) -> list[BuiltPool]:
    data = load(source)
    default_ip = str(data.get("bind", "127.0.0.1"))
    loopback = str(data.get("listen", "port")) == "loopback"
    next_loopback = [2]
    built: list[BuiltPool] = []
    names: set[str] = set()
    for index, spec in enumerate(data.get("pools") or []):
        unknown = set(spec) - POOL_KEYS
        if unknown:
            raise ValueError(f"pool #{index}: unknown keys {sorted(unknown)}")
        name = str(spec.get("name", f"pool-{index}"))
        if name in names:
            raise ValueError(f"duplicate pool name {name!r}")
        names.add(name)
        pool = SimPool(
            name,
            version=str(spec.get("version", "citrix-hypervisor-8.2")),
            software_version=spec.get("software_version"),
            jsonrpc=bool(spec.get("jsonrpc", True)),
            credentials=_credentials(spec.get("credentials")),
            ha_enabled=bool(spec.get("ha_enabled", False)),
            ha_host_failures_to_tolerate=int(spec.get("ha_host_failures_to_tolerate", 1)),
            ha_allow_overcommit=bool(spec.get("ha_allow_overcommit", False)),
            time_scale=float(spec.get("time_scale", data.get("time_scale", 1.0))),
            vm_boot_seconds=float(spec.get("vm_boot_seconds", data.get("vm_boot_seconds", 0.2))),
            ha_retry_seconds=float(spec.get("ha_retry_seconds", 2.0)),
            dom0_memory=int(float(spec.get("dom0_memory_gib", 4)) * GIB),
            templates=spec.get("templates", ("Other install media", "CentOS 7", "Windows Server 2019 (64-bit)")),
        )
        listen: dict[str, HostListen] = {}
        for host_spec in _host_specs(spec.get("hosts", 2), name):
            if "address" in host_spec:
                ip = str(host_spec["address"])
            elif loopback:
                ip = f"127.0.0.{next_loopback[0]}"
                next_loopback[0] += 1
            else:
                ip = default_ip
            port = int(host_spec.get("port", 0))
            host = pool.add_host(str(host_spec["name"]), _memory(host_spec, 256 * GIB), ip)
            listen[host.ref] = HostListen(ip, port)
        for vm_spec in spec.get("vms") or []:
            entry = dict(vm_spec)
            count = int(entry.pop("count", 1))
            if "count" not in vm_spec and "name" in entry:
                entry["name"] = str(entry["name"]).replace("{", "{{").replace("}", "}}")
            pool.add_vms(count, VmSpec.from_dict(entry))
        _add_snapshots(pool, int(spec.get("snapshots", 0)))
        with pool.store.lock:
            pool.refresh_ha_plan()
        built.append(BuiltPool(pool, listen))
    if not built:
        raise ValueError("a scenario needs at least one pool")
    return built


def _host_specs(value: Any, pool_name: str) -> list[dict[str, Any]]:
    if isinstance(value, int):
        value = {"count": value}
    if isinstance(value, dict):
        count = int(value.get("count", 1))
        pattern = str(value.get("name_pattern", f"{pool_name}-host-{{n}}"))
        ports = list(value.get("ports", []))
        hosts = []
        for n in range(count):
            entry = {k: v for k, v in value.items() if k not in ("count", "name_pattern", "ports")}
            entry["name"] = pattern.format(n=n + 1, i=n)
            if n < len(ports):
                entry["port"] = ports[n]
            hosts.append(entry)
        return hosts
    if isinstance(value, list):
        return [
            {"name": f"{pool_name}-host-{n + 1}", **(h if isinstance(h, dict) else {"name": str(h)})}
            for n, h in enumerate(value)
        ]
    raise ValueError("hosts: a count, {count, memory_gib, name_pattern, ports} or a list of hosts")


def _add_snapshots(pool: SimPool, count: int) -> None:
    """Snapshots are VM objects too (is_a_snapshot), as on a real pool: clients must filter them."""
    if count <= 0:
        return
    store = pool.store
    with store.lock:
        sources = pool.user_vms()[:count]
        for vm in sources:
            rec = dict(vm.rec)
            rec.update(
                {
                    "uuid": new_uuid(),
                    "name_label": f"{vm.rec['name_label']} snapshot",
                    "is_a_snapshot": True,
                    "snapshot_of": vm.ref,
                    "snapshot_time": XapiDateTime.now(),
                    "power_state": "Halted",
                    "resident_on": NULL_REF,
                    "domid": -1,
                    "ha_always_run": False,
                    "allowed_operations": ["revert", "clone", "copy", "export", "destroy"],
                }
            )
            snap = store.add("VM", new_ref(), rec, notify=False)
            store.modify(vm, {"snapshots": [*vm.rec["snapshots"], snap.ref]}, notify=False)
