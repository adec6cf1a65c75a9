"""Figure 3: initial sync of one pool. From RegisterPool to the complete mirror (the pool WATCHING with its
full list applied), sync_service as a child process, over JSON-RPC and XML-RPC; against the stock XenAPI SDK
fetching and decoding VM.get_all_records over XML-RPC (and, for reference, the bare JSON-RPC fetch)."""

from __future__ import annotations

import time

import XenAPI

from bench.common import (
    XAPI_PASSWORD,
    XAPI_USER,
    BenchOptions,
    FigureResult,
    SimProcess,
    SyncProcess,
    fresh_database,
    log,
    pool_scenario,
    summary,
    wait_for,
)
from sync_service.xapi import XapiEndpoint, connect

POOL = "initial"


def sdk_fetch_seconds(url: str) -> float:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(XAPI_USER, XAPI_PASSWORD, "1.0", "xsha-bench")
    try:
        started = time.perf_counter()
        records = session.xenapi.VM.get_all_records()
        elapsed = time.perf_counter() - started
        assert records
        return elapsed
    finally:
        session.xenapi.session.logout()


def json_fetch_seconds(url: str) -> float:
    client = connect(XapiEndpoint(url), XAPI_USER, XAPI_PASSWORD, wire="json", timeout=120)
    try:
        started = time.perf_counter()
        records = client.call("VM.get_all_records")
        elapsed = time.perf_counter() - started
        assert records
        return elapsed
    finally:
        client.logout()
        client.close()


def run(options: BenchOptions) -> list[FigureResult]:
    repeats = options.repeat_count(3)
    vms = options.size("initial_sync_vms", 10_000, 2_000)
    db = options.primary_db
    scenario = {"time_scale": 0.01, "pools": [pool_scenario(POOL, vms=vms, hosts=16)]}
    log(f"figure 3: initial sync of {vms} VMs x {repeats} on {db}")
    sdk: list[float] = []
    bare_json: list[float] = []
    xsha: dict[str, list[float]] = {"json": [], "xml": []}
    with SimProcess(scenario, options.work_dir, "initial") as sim:
        url = sim.master_url(POOL)
        for _ in range(repeats):
            sdk.append(sdk_fetch_seconds(url))
            bare_json.append(json_fetch_seconds(url))
        log(f"  SDK VM.get_all_records {summary(sdk)['median']:.2f} s; JSON {summary(bare_json)['median']:.2f} s")
        for wire in ("json", "xml"):
            with (
                fresh_database(db, options.work_dir, f"initial-{wire}") as url_db,
                SyncProcess(url_db, options.work_dir, f"initial-{wire}", wire=wire) as sync,
            ):
                for repeat in range(repeats):
                    cluster = f"init-{wire}-{repeat}"
                    started = time.perf_counter()
                    sync.register(cluster, url)
                    wait_for(lambda c=cluster: sync.watching(c), 600, f"{cluster} mirrored", interval=0.01)  # type: ignore[misc]
                    xsha[wire].append(time.perf_counter() - started)
                    log(f"  sync_service over {wire}: {xsha[wire][-1]:.2f} s")
                    sync.deregister(cluster)
    sdk_median = summary(sdk)["median"]
    json_median = summary(xsha["json"])["median"]
    xml_median = summary(xsha["xml"])["median"]
    met = json_median <= 2.0 and json_median <= 2 * sdk_median
    return [
        FigureResult(
            figure=3,
            name=f"initial sync: {vms} VMs, RegisterPool to complete mirror",
            target="<= 2 s over JSON-RPC, and <= 2 x the bare XenAPI SDK's VM.get_all_records over XML-RPC",
            unit="s",
            values=xsha["json"],
            met=met,
            db=db,
            wire="json",
            details={
                "vms": vms,
                "sdk_get_all_records_xml_s": summary(sdk),
                "bare_json_get_all_records_s": summary(bare_json),
                "ratio_to_sdk_xml": round(json_median / sdk_median, 3),
                "xsha_over_xml_s": summary(xsha["xml"]),
                "xsha_xml_ratio_to_sdk_xml": round(xml_median / sdk_median, 3),
                "xsha_xml_met_2x_sdk": xml_median <= 2 * sdk_median,
            },
        )
    ]
