"""Version presets: what `host.software_version` and `host.API_version_*` say on each product release."""

from __future__ import annotations

from typing import Any

# API versions follow reference/xapi.md; software_version keys and values are modelled on real hosts of each release.
PRESETS: dict[str, dict[str, Any]] = {
    "xenserver-6.1": {
        "api": (1, 10),
        "software_version": {
            "product_version": "6.1.0",
            "product_version_text": "6.1",
            "product_version_text_short": "6.1",
            "platform_name": "XCP",
            "platform_version": "1.6.10",
            "product_brand": "XenServer",
            "build_number": "59235p",
            "date": "2012-09-05",
            "linux": "2.6.32.43-0.4.1.xs1.6.10.734.170748xen",
            "xapi": "1.3",
            "xen": "4.1.3",
            "xencenter_min": "1.10",
            "xencenter_max": "1.10",
            "network_backend": "openvswitch",
            "dbv": "2012.0901",
        },
    },
    "xenserver-6.2": {
        "api": (2, 0),
        "software_version": {
            "product_version": "6.2.0",
            "product_version_text": "6.2",
            "product_version_text_short": "6.2",
            "platform_name": "XCP",
            "platform_version": "1.8.0",
            "product_brand": "XenServer",
            "build_number": "70446c",
            "date": "2013-06-14",
            "linux": "2.6.32.43-0.4.1.xs1.8.0.835.170778xen",
            "xapi": "1.3",
            "xen": "4.1.5",
            "xencenter_min": "2.0",
            "xencenter_max": "2.0",
            "network_backend": "openvswitch",
            "dbv": "2013.0621",
        },
    },
    "xenserver-6.5": {
        "api": (2, 3),
        "software_version": {
            "product_version": "6.5.0",
            "product_version_text": "6.5",
            "product_version_text_short": "6.5",
            "platform_name": "XCP",
            "platform_version": "1.9.0",
            "product_brand": "XenServer",
            "build_number": "90233c",
            "date": "2015-01-08",
            "linux": "3.10.41-323",
            "xapi": "1.3",
            "xen": "4.4.1-xs90192",
            "xencenter_min": "2.3",
            "xencenter_max": "2.3",
            "network_backend": "openvswitch",
            "dbv": "2014.1127",
        },
    },
    "xenserver-7.0": {
        "api": (2, 5),
        "software_version": {
            "product_version": "7.0.0",
            "product_version_text": "7.0",
            "product_version_text_short": "7.0",
            "platform_name": "XCP",
            "platform_version": "2.1.0",
            "product_brand": "XenServer",
            "build_number": "125380c",
            "date": "2016-05-12",
            "linux": "3.10.96-484.383030",
            "xapi": "1.9",
            "xen": "4.6.1-xs125300",
            "xencenter_min": "2.6",
            "xencenter_max": "2.6",
            "network_backend": "openvswitch",
            "db_schema": "5.102",
        },
    },
    "xenserver-7.1": {
        "api": (2, 6),
        "software_version": {
            "product_version": "7.1.0",
            "product_version_text": "7.1",
            "product_version_text_short": "7.1",
            "platform_name": "XCP",
            "platform_version": "2.2.0",
            "product_brand": "XenServer",
            "build_number": "137272c",
            "date": "2017-02-14",
            "linux": "4.4.0+2",
            "xapi": "1.9",
            "xen": "4.7.1-1-d",
            "xencenter_min": "2.7",
            "xencenter_max": "2.7",
            "network_backend": "openvswitch",
            "db_schema": "5.120",
        },
    },
    # Citrix Hypervisor 8.x is branded "Citrix Hypervisor" in the GUI, but software_version keeps
    # product_brand "XenServer" (as on real 8.2 / 8.2 CU1 hosts), so clients must not expect the new brand there.
    "citrix-hypervisor-8.2": {
        "api": (2, 15),
        "software_version": {
            "product_version": "8.2.0",
            "product_version_text": "8.2",
            "product_version_text_short": "8.2",
            "platform_name": "XCP",
            "platform_version": "3.2.0",
            "product_brand": "XenServer",
            "build_number": "release/stockholm/master/7",
            "git_id": "0",
            "hostname": "localhost",
            "date": "2020-06-05",
            "linux": "4.19.0+1",
            "xapi": "1.20",
            "xen": "4.13.1-8.2.1",
            "xencenter_min": "2.16",
            "xencenter_max": "2.16",
            "network_backend": "openvswitch",
            "db_schema": "5.602",
        },
    },
    "xcp-ng-8.2": {
        "api": (2, 16),
        "software_version": {
            "product_version": "8.2.1",
            "product_version_text": "8.2",
            "product_version_text_short": "8.2",
            "platform_name": "XCP",
            "platform_version": "3.2.1",
            "product_brand": "XCP-ng",
            "build_number": "release/yangtze/master/58",
            "git_id": "0",
            "hostname": "localhost",
            "date": "2022-02-11",
            "linux": "4.19.0+1",
            "xapi": "1.20",
            "xen": "4.13.5-9.38",
            "xencenter_min": "2.16",
            "xencenter_max": "2.16",
            "network_backend": "openvswitch",
            "db_schema": "5.603",
        },
    },
    "xcp-ng-8.3": {
        "api": (2, 21),
        "software_version": {
            "product_version": "8.3.0",
            "product_version_text": "8.3",
            "product_version_text_short": "8.3",
            "platform_name": "XCP",
            "platform_version": "3.4.0",
            "product_brand": "XCP-ng",
            "build_number": "cloud",
            "git_id": "0",
            "hostname": "localhost",
            "date": "2024-10-02",
            "linux": "4.19.0+1",
            "xapi": "24.19",
            "xapi_build": "24.19.2",
            "xen": "4.17.5-3",
            "xencenter_min": "2.21",
            "xencenter_max": "2.21",
            "network_backend": "openvswitch",
            "db_schema": "5.780",
        },
    },
}

ALIASES: dict[str, str] = {
    "6.1": "xenserver-6.1",
    "6.2": "xenserver-6.2",
    "6.5": "xenserver-6.5",
    "7.0": "xenserver-7.0",
    "7.1": "xenserver-7.1",
    "8.2": "citrix-hypervisor-8.2",
    "xenserver-8.2": "citrix-hypervisor-8.2",
    "xcp-ng-8.2.1": "xcp-ng-8.2",
}


def resolve_preset(name: str) -> str:
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(f"unknown version preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return key


def software_version_for(
    preset: str, hostname: str, overrides: dict[str, Any] | None = None
) -> tuple[dict[str, str], tuple[int, int]]:
    """software_version map and (API major, minor) for a host; an override value of None removes the key."""
    spec = PRESETS[resolve_preset(preset)]
    software: dict[str, str] = dict(spec["software_version"])
    if "hostname" in software or preset:
        software["hostname"] = hostname
    major, minor = spec["api"]
    for key, value in (overrides or {}).items():
        if key == "API_version_major":
            major = int(value)
        elif key == "API_version_minor":
            minor = int(value)
        elif value is None:
            software.pop(key, None)
        else:
            software[key] = str(value)
    return software, (int(major), int(minor))
