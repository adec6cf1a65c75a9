"""Version presets, scenario files, and the subprocess entry point (`python -m xapi_sim`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import XenAPI

from xapi_sim import Simulator
from xapi_sim.testing import JsonRpcClient, wait_until

SCENARIOS = Path(__file__).resolve().parents[2] / "xapi_sim" / "scenarios"


@pytest.mark.parametrize(
    ("preset", "api", "brand", "product", "platform"),
    [
        ("xenserver-6.1", ("1", "10"), "XenServer", "6.1.0", "1.6.10"),
        ("xenserver-6.2", ("2", "0"), "XenServer", "6.2.0", "1.8.0"),
        ("xenserver-6.5", ("2", "3"), "XenServer", "6.5.0", "1.9.0"),
        ("xenserver-7.0", ("2", "5"), "XenServer", "7.0.0", "2.1.0"),
        ("xenserver-7.1", ("2", "6"), "XenServer", "7.1.0", "2.2.0"),
        ("citrix-hypervisor-8.2", ("2", "15"), "XenServer", "8.2.0", "3.2.0"),
        ("xcp-ng-8.2", ("2", "16"), "XCP-ng", "8.2.1", "3.2.1"),
        ("xcp-ng-8.3", ("2", "21"), "XCP-ng", "8.3.0", "3.4.0"),
    ],
)
def test_version_presets(make_sim, preset, api, brand, product, platform):
    sim = make_sim({"pools": [{"name": "v", "version": preset, "hosts": 2}]})
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password")
    for host in session.xenapi.host.get_all():
        record = session.xenapi.host.get_record(host)
        assert (record["API_version_major"], record["API_version_minor"]) == api
        software = record["software_version"]
        assert software["product_brand"] == brand and software["product_version"] == product
        assert software["platform_version"] == platform and software["platform_name"] == "XCP"
        assert {"xapi", "build_number", "date"} <= set(software)


def test_version_overrides_and_missing_keys(make_sim):
    sim = make_sim(
        {
            "pools": [
                {
                    "name": "custom",
                    "version": "xenserver-6.2",
                    "software_version": {"product_version": None, "build_number": "custom", "API_version_minor": 1},
                    "hosts": 1,
                }
            ]
        }
    )
    session = XenAPI.Session(sim.master_url())
    session.xenapi.login_with_password("root", "password")
    host = session.xenapi.host.get_all()[0]
    software = session.xenapi.host.get_software_version(host)
    assert "product_version" not in software and software["build_number"] == "custom"
    assert session.xenapi.host.get_API_version_minor(host) == "1"


def test_several_pools_in_one_simulator_with_own_credentials(make_sim):
    sim = make_sim(
        {
            "pools": [
                {"name": "a", "credentials": {"username": "admin", "password": "s3cret"}, "hosts": 1},
                {"name": "b", "hosts": 2, "vms": [{"count": 3, "name_pattern": "b-{i}"}]},
            ]
        }
    )
    assert set(sim.pools) == {"a", "b"}
    a = XenAPI.Session(sim.master_url("a"))
    a.xenapi.login_with_password("admin", "s3cret")
    b = XenAPI.Session(sim.master_url("b"))
    b.xenapi.login_with_password("root", "password")
    assert a.xenapi.pool.get_name_label(a.xenapi.pool.get_all()[0]) == "a"
    assert len(sim.pool("b").user_vms()) == 3 and len(sim.pool("a").user_vms()) == 0
    with pytest.raises(XenAPI.Failure):
        XenAPI.Session(sim.master_url("a")).xenapi.login_with_password("root", "password")


def test_loopback_addresses_per_host(make_sim):
    sim = make_sim({"listen": "loopback", "pools": [{"name": "lo", "hosts": 2}]})
    hosts = [u.split("//")[1].split(":")[0] for u in sim.host_urls()]
    assert hosts == ["127.0.0.2", "127.0.0.3"]
    with pytest.raises(XenAPI.Failure) as exc:
        XenAPI.Session(sim.host_urls()[1]).xenapi.login_with_password("root", "password")
    assert exc.value.details[1].startswith("127.0.0.2:")


def test_shipped_demo_scenario_builds():
    sim = Simulator.from_scenario(SCENARIOS / "demo.yaml")
    xs82, xs61 = sim.pool("xs82"), sim.pool("xs61")
    assert xs82.pool_obj.rec["ha_enabled"] is True and xs82.jsonrpc
    assert xs61.version == "xenserver-6.1" and not xs61.jsonrpc
    assert len(xs82.user_vms()) == 27


def test_subprocess_with_ready_file(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "xapi_sim", "--scenario", str(SCENARIOS / "demo.yaml"), "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("XAPI_SIM_READY ")
        wait_until(ready.exists, 20, what="ready file")
        info = json.loads(ready.read_text())
        assert json.loads(line.split(" ", 1)[1])["pools"].keys() == info["pools"].keys() == {"xs82", "xs61"}
        xs82 = info["pools"]["xs82"]
        session = XenAPI.Session(xs82["master_url"])
        session.xenapi.login_with_password("root", "password")
        assert len(session.xenapi.host.get_all()) == len(xs82["hosts"]) == 3
        assert JsonRpcClient(xs82["master_url"]).call("sim.info")["version"] == "citrix-hypervisor-8.2"
        assert info["pools"]["xs61"]["jsonrpc"] is False
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
