"""Figure 2: detection latency. A change in xapi_sim -> committed in sync_service's database -> received by a
WatchChanges client (asking for up to 500 changes a response), at 10% and 50% of figure 1's sustained rate (SQLite,
JSON-RPC), under that background load.

Probe renames are timed as in figure 1; "received" is when the driver's WatchChanges stream delivers the probe's
change, "committed" is the change's commit_time (stamped by sync_service in the writing transaction)."""

from __future__ import annotations

import threading
import time

import grpc
from google.protobuf import duration_pb2

from bench import fig_ingest
from bench.common import (
    BenchOptions,
    FigureResult,
    SimProcess,
    fresh_database,
    log,
    percentile,
    rounded,
    summary,
)
from bench.fig_ingest import IngestRig, Observer, Probe, probe_lags, xsha_consumer
from xsha_api.v1 import sync_service_pb2

CLOUDSTACK_PING_S = 60.0
# The watcher asks for changes in batches: a busy stream is one message per burst.
CHANGES_PER_RESPONSE = 500


class WatchObserver:
    """Follows WatchChanges (VMs) from the current revision; marks probe renames when received and committed."""

    def __init__(self, address: str, metadata: tuple[tuple[str, str], ...], since: int, probes: list[Probe]) -> None:
        self.received = Observer()
        self.committed = Observer()
        self.index = {probe.uuid: i for i, probe in enumerate(probes)}
        self.channel = grpc.insecure_channel(address)
        from xsha_api.v1 import sync_service_pb2_grpc

        stub = sync_service_pb2_grpc.HypervisorSyncServiceStub(self.channel)
        interval = duration_pb2.Duration()
        interval.FromMilliseconds(500)
        self.call = stub.WatchChanges(
            sync_service_pb2.WatchChangesRequest(
                since_revision=since,
                kinds=[sync_service_pb2.RESOURCE_KIND_VM],
                bookmark_interval=interval,
                max_changes_per_response=CHANGES_PER_RESPONSE,
            ),
            metadata=metadata,
        )
        self.changes = 0
        self._thread = threading.Thread(target=self._run, name="watch-observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self.call:
                if not (item.HasField("changes") or item.HasField("change")):
                    continue
                now = time.time()
                for change in item.changes.changes if item.HasField("changes") else (item.change,):
                    self.changes += 1
                    vm = change.vm
                    probe = self.index.get(vm.uuid)
                    if probe is not None:
                        self.received.mark(probe, vm.name, now)
                        self.committed.mark(probe, vm.name, change.commit_time.ToNanoseconds() / 1e9)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.call.cancel()  # type: ignore[no-untyped-call]
        self._thread.join(5)
        self.channel.close()


def run(options: BenchOptions) -> list[FigureResult]:
    repeats = options.repeat_count(3)
    vms = options.size("latency_vms", 20_000, 4_000)
    base_rate = fig_ingest.LAST_BEST.get("sqlite-json") or options.size("latency_rate", 5_000, 5_000)
    db = options.primary_db
    log(f"figure 2: detection latency at 10% / 50% of {base_rate}/s, {repeats} repeats on {db}")
    results: dict[int, dict[str, list[float]]] = {}
    with SimProcess(fig_ingest.ingest_scenario(vms), options.work_dir, "latency") as sim:
        rig = IngestRig(sim, options, vms)
        try:
            with (
                fresh_database(db, options.work_dir, "latency") as url,
                xsha_consumer(rig, url, "json") as (_db_observer, sync, applied),
            ):
                address, metadata = sync.address, sync.metadata
                for percent in (10, 50):
                    rate = max(10, base_rate * percent // 100)
                    bucket = results.setdefault(percent, {"received_p50": [], "received_p99": []})
                    bucket.setdefault("committed_p50", [])
                    bucket.setdefault("committed_p99", [])
                    bucket["rate"] = [float(rate)]
                    for _ in range(repeats):
                        watch = WatchObserver(address, metadata, applied(), rig.probes)
                        try:
                            rig.trial(rate, watch.received)
                            received = probe_lags(watch.received, rig.last_sent).lags
                            committed = probe_lags(watch.committed, rig.last_sent).lags
                        finally:
                            watch.close()
                        bucket["received_p50"].append(percentile(received, 50))
                        bucket["received_p99"].append(percentile(received, 99))
                        bucket["committed_p50"].append(percentile(committed, 50))
                        bucket["committed_p99"].append(percentile(committed, 99))
                        log(
                            f"  {percent}% ({rate}/s): received p50 {bucket['received_p50'][-1] * 1000:.1f} ms "
                            f"p99 {bucket['received_p99'][-1] * 1000:.1f} ms; committed p50 "
                            f"{bucket['committed_p50'][-1] * 1000:.1f} ms"
                        )
        finally:
            rig.close()
    figures = []
    for percent, bucket in sorted(results.items()):
        p50 = summary(bucket["received_p50"])
        p99 = summary(bucket["received_p99"])
        met = p50["median"] <= 0.020 and p99["median"] <= 0.100
        figures.append(
            FigureResult(
                figure=2,
                name=f"detection latency p50 at {percent}% of figure 1's rate (xapi_sim -> DB -> WatchChanges)",
                target="p50 <= 20 ms, p99 <= 100 ms",
                unit="ms",
                values=[v * 1000 for v in bucket["received_p50"]],
                met=met,
                db=db,
                wire="json",
                details={
                    "rate_changes_per_s": int(bucket["rate"][0]),
                    "base_rate": base_rate,
                    "received_p99_ms": {k: rounded(v * 1000, 2) for k, v in p99.items()},
                    "committed_p50_ms": {k: rounded(v * 1000, 2) for k, v in summary(bucket["committed_p50"]).items()},
                    "committed_p99_ms": {k: rounded(v * 1000, 2) for k, v in summary(bucket["committed_p99"]).items()},
                    "ratio_p50_to_cloudstack_60s_ping": rounded(p50["median"] / CLOUDSTACK_PING_S, 6),
                    "ratio_p99_to_cloudstack_60s_ping": rounded(p99["median"] / CLOUDSTACK_PING_S, 6),
                    "cloudstack_ping_speedup_p50": rounded(CLOUDSTACK_PING_S / p50["median"], 0)
                    if p50["median"]
                    else None,
                },
            )
        )
    return figures
