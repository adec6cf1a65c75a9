"""Figure 1: ingest. The highest sustained rate of VM changes mirrored with p99 lag < 1 s.

One xapi_sim process serves one pool of full-size VM records. A trial asks xapi_sim to flip VM power states
(`sim.mutate_vms(count, rate, "power_state")`, every flip a real change of a mirrored column) at a fixed rate for a
window; meanwhile the driver renames a few probe VMs 20 times a second (`sim.change_vm`) and times each rename
until it is visible: in the mirror's table (polled every 10 ms) for sync_service and the naive mirror, or on the
bare loop's stdout. Because event.from hands out everything changed since the last token, a probe is visible only
once every change made before it has been applied, so probe lag is the pipeline's lag. A probe renamed again before
any consumer could see it (xapi_sim coalesces the two, as XAPI does) counts as reflected when a later name of the
same probe VM is visible (see probe_lags). A trial passes when the
probes' p99 lag is under 1 s (none lost) and xapi_sim kept up with the asked rate; the search doubles the rate
while trials pass, then bisects, then confirms the rate found with a trial four times as long (stepping down until
one passes, then trying halfway back up), so that a consumer slowly falling behind is not counted as keeping up.

Consumers: sync_service (child process, JSON-RPC and XML-RPC, per database), the bare loop (the limit), the naive
mirror (XenAPI SDK + one UPDATE and commit per VM event), and xapi_sim's own ceiling (produce + serve).
"""

from __future__ import annotations

import http.client
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from bench.common import (
    XAPI_PASSWORD,
    XAPI_USER,
    BenchError,
    BenchOptions,
    DbReader,
    FigureResult,
    SimControlJson,
    SimProcess,
    SyncProcess,
    database_available,
    fresh_database,
    log,
    percentile,
    pool_scenario,
    rounded,
    wait_for,
)
from bench.consumers import NAIVE_TABLE

POOL = "ingest"
PROBES = 16
PROBE_INTERVAL = 0.05
MAX_LAG = 1.0


@dataclass(frozen=True)
class Probe:
    ref: str
    uuid: str


class Observer:
    """Where a consumer shows what it has applied: `seen[(probe index, name)]` = first time it was visible."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], float] = {}
        self.lock = threading.Lock()

    def mark(self, probe: int, name: str, when: float) -> None:
        with self.lock:
            self.seen.setdefault((probe, name), when)

    def seen_at(self, probe: int, name: str) -> float | None:
        with self.lock:
            return self.seen.get((probe, name))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class ProbeLags:
    lags: list[float]  # per probe sent, in order; inf where the consumer never reflected it
    lost: int
    superseded: int  # reflected only by a later name of the same probe VM


def probe_lags(observer: Observer, sent: list[tuple[int, str, float]]) -> ProbeLags:
    """Each probe's lag: from its rename to the first time the consumer showed that name or a later one of the same
    probe VM. When xapi_sim stalls, the probes held up behind it go out back to back, and a probe VM renamed twice
    before any fetch shows only its last name (event.from's coalescing). The consumer then never had the chance to
    show the first, but showing the later name means it has applied everything up to it; timing the first probe by
    the later name's appearance is never earlier than the truth."""
    lags = [math.inf] * len(sent)
    superseded = 0
    reflected_at: dict[int, float] = {}  # probe VM -> earliest time any of its later names was seen
    for i in range(len(sent) - 1, -1, -1):
        probe, name, at = sent[i]
        own = observer.seen_at(probe, name)
        seen = min((t for t in (own, reflected_at.get(probe)) if t is not None), default=None)
        if seen is not None:
            reflected_at[probe] = seen
            lags[i] = max(0.0, seen - at)
            if own is None:
                superseded += 1
    return ProbeLags(lags, sum(1 for lag in lags if lag == math.inf), superseded)


class DbObserver(Observer):
    """Polls `table` for the probe rows' names every `interval` seconds."""

    def __init__(self, db_url: str, table: str, probes: list[Probe], interval: float = 0.01) -> None:
        super().__init__()
        self.reader = DbReader(db_url)
        self.index = {probe.uuid: i for i, probe in enumerate(probes)}
        marks = ",".join("?" for _ in probes)
        self.sql = f"SELECT uuid, name_label FROM {table} WHERE uuid IN ({marks})"
        self.params = [probe.uuid for probe in probes]
        self.interval = interval
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="db-observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.reader.rows(self.sql, self.params)
            except Exception:  # a locked SQLite file or a busy server: try again at the next tick
                rows = []
            now = time.time()
            self.polls += 1
            for uuid, name in rows:
                self.mark(self.index[uuid], str(name), now)
            self._stop.wait(self.interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.reader.close()


class StdoutObserver(Observer):
    """Reads `SEEN ref name time` lines of a bare-loop child."""

    def __init__(self, process: subprocess.Popen[bytes], probes: list[Probe]) -> None:
        super().__init__()
        self.process = process
        self.index = {probe.ref: i for i, probe in enumerate(probes)}
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stdout-observer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            parts = raw.decode().split()
            if parts and parts[0] == "READY":
                self.ready.set()
            elif len(parts) == 4 and parts[0] == "SEEN" and parts[1] in self.index:
                self.mark(self.index[parts[1]], parts[2], float(parts[3]))


@dataclass
class Trial:
    rate: int
    passed: bool
    achieved_rate: float
    lag_p50: float
    lag_p99: float
    lag_max: float
    probes: int
    lost: int
    superseded: int = 0
    applied: int | None = None
    cpu_consumer: float | None = None
    window: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "window_s": self.window,
            "passed": self.passed,
            "achieved_rate": round(self.achieved_rate, 1),
            "lag_p50_s": rounded(self.lag_p50),
            "lag_p99_s": rounded(self.lag_p99),
            "lag_max_s": rounded(self.lag_max),
            "probes": self.probes,
            "lost": self.lost,
            "superseded": self.superseded,
            **({"db_changes": self.applied} if self.applied is not None else {}),
            **({"consumer_cpu_cores": round(self.cpu_consumer, 2)} if self.cpu_consumer is not None else {}),
        }


@dataclass
class SearchResult:
    best: int
    trials: list[Trial] = field(default_factory=list)


# Confirmation trials after the search before a consumer is given no sustained rate at all.
CONFIRM_ATTEMPTS = 5


def step_down(rate: int) -> int:
    """The next rate to confirm after `rate` did not hold: a fifth lower, in hundreds; 0 below 100/s."""
    lower = int(round(rate * 0.8, -2))
    return lower if 100 <= lower < rate else (rate - 100 if rate > 100 else 0)


def find_sustained_rate(
    trial: Callable[[int, float], Trial], start: int, *, cap: int, window: float, confirm_window: float, bisections: int
) -> SearchResult:
    """Doubles the rate while trials of `window` pass (up to `cap`), then bisects between the last pass and the
    first failure. The rate found must then pass a trial of `confirm_window`, which catches a consumer whose lag
    grows too slowly to cross 1 s within the short window; while it does not, the rate steps down (step_down),
    at most CONFIRM_ATTEMPTS times, and once one holds, the rate halfway back up to the last that failed is tried
    long as well. The best rate is the highest confirmed, or 0."""
    result = SearchResult(best=0)

    def passes(rate: int, length: float) -> bool:
        outcome = trial(rate, length)
        result.trials.append(outcome)
        return outcome.passed

    rate = start
    low, high = 0, 0
    while True:
        if passes(rate, window):
            low = rate
            if rate >= cap:
                break
            rate = min(rate * 2, cap)
        else:
            high = rate
            if low == 0:
                if rate <= 100:
                    break
                rate //= 2
                if rate < start // 8:
                    break
                continue
            break
    for _ in range(bisections):
        if not (low and high) or high - low <= max(100, low // 10):
            break
        mid = int(round((low + high) / 2, -2))
        if passes(mid, window):
            low = mid
        else:
            high = mid
    rate, failed = low, 0
    for _ in range(CONFIRM_ATTEMPTS):
        if rate <= 0:
            return result
        if passes(rate, confirm_window):
            result.best = rate
            break
        failed, rate = rate, step_down(rate)
    else:
        return result
    # A step down is a fifth: one more long trial halfway back up to the rate that failed.
    mid = int(round((result.best + failed) / 2, -2))
    if failed and result.best < mid < failed and passes(mid, confirm_window):
        result.best = mid
    return result


class IngestRig:
    """The running xapi_sim, its probes, and the trial / search procedure shared by every consumer."""

    def __init__(self, sim: SimProcess, options: BenchOptions, vms: int) -> None:
        self.sim = sim
        # Each VM changes at most once a second below this rate, so event.from's coalescing cannot make a slow
        # consumer look fast (within the 1 s lag budget, no change is folded into another).
        self.cap = vms
        self.options = options
        self.control: SimControlJson = sim.control(POOL)
        # A second connection for probes, so stats polls never delay a probe.
        self.probe_control = SimControlJson(sim.master_url(POOL))
        self.url = sim.master_url(POOL)
        self.probes: list[Probe] = []
        for n in range(1, PROBES + 1):
            ref = self.control.xapi("VM.get_by_name_label", f"{POOL}-vm-{n}")[0]
            self.probes.append(Probe(ref, self.control.xapi("VM.get_uuid", ref)))
        self.window = options.size("ingest_window_ms", 4000, 2000) / 1000  # one search trial's length
        # The rate a search finds must then hold for this long: a consumer that falls behind by under 0.25 s a
        # second still passes a 4 s window, but its lag grows past 1 s in a longer one.
        self.confirm_window = options.size("ingest_confirm_ms", 16000, 6000) / 1000
        self.trial_no = 0
        self.last_sent: list[tuple[int, str, float]] = []

    def mutations(self) -> int:
        return int(self.control.sim("stats")["mutations"])

    def drain(self, observer: Observer, timeout: float = 60.0) -> None:
        """Until the consumer has caught up with everything (a fresh probe is visible)."""
        self.trial_no += 1
        name = f"drain-{self.trial_no}"
        self.probe_control.sim("change_vm", self.probes[0].ref, "name_label", name)
        wait_for(lambda: observer.seen_at(0, name) is not None, timeout, "the consumer to catch up", 0.02)

    def trial(
        self,
        rate: int,
        observer: Observer,
        *,
        pid: int | None = None,
        applied: Callable[[], int] | None = None,
        window: float | None = None,
    ) -> Trial:
        window = window or self.window
        self.drain(observer)
        self.trial_no += 1
        count = int(rate * window)
        before = self.mutations()
        applied_before = applied() if applied is not None else 0
        cpu_before = _cpu(pid)
        sent: list[tuple[int, str, float]] = []
        start = time.time()
        self.control.sim("mutate_vms", count, rate, "power_state")
        steps = int(window / PROBE_INTERVAL)
        for i in range(steps):
            delay = start + i * PROBE_INTERVAL - time.time()
            if delay > 0:
                time.sleep(delay)
            probe = i % len(self.probes)
            name = f"p{self.trial_no}-{i}"
            at = time.time()
            self.probe_control.sim("change_vm", self.probes[probe].ref, "name_label", name)
            sent.append((probe, name, at))
        self.last_sent = sent
        # xapi_sim must have produced the asked rate, else the trial measured xapi_sim, not the consumer.
        done_at = wait_for(
            lambda: time.time() if self.mutations() >= before + count else None,
            window * 4 + 10,
            "xapi_sim to finish the mutations",
            0.02,
        )
        achieved = count / max(done_at - start, window)
        last_sent = sent[-1][2]
        deadline = max(time.time(), last_sent + MAX_LAG) + 1.0
        while time.time() < deadline and probe_lags(observer, sent).lost:
            time.sleep(0.02)
        cpu = (_cpu(pid) - cpu_before) / (time.time() - start) if pid is not None else None
        reflected = probe_lags(observer, sent)
        lags, lost = reflected.lags, reflected.lost
        p99 = percentile(lags, 99)
        passed = p99 < MAX_LAG and lost == 0 and achieved >= 0.9 * rate
        trial = Trial(
            rate=rate,
            passed=passed,
            achieved_rate=achieved,
            lag_p50=percentile(lags, 50),
            lag_p99=p99,
            lag_max=max(lags),
            probes=len(sent),
            lost=lost,
            superseded=reflected.superseded,
            applied=(applied() - applied_before) if applied is not None else None,
            cpu_consumer=cpu,
            window=window,
        )
        log(
            f"  rate {rate}/s for {window:g} s: {'pass' if passed else 'FAIL'} p50 {trial.lag_p50 * 1000:.0f} ms "
            f"p99 {trial.lag_p99 * 1000:.0f} ms lost {lost} superseded {reflected.superseded} achieved {achieved:.0f}/s"
        )
        return trial

    def search(
        self, observer: Observer, start: int, *, pid: int | None = None, applied: Callable[[], int] | None = None
    ) -> SearchResult:
        """The consumer's highest sustained rate (see find_sustained_rate)."""

        def trial(rate: int, window: float) -> Trial:
            return self.trial(rate, observer, pid=pid, applied=applied, window=window)

        return find_sustained_rate(
            trial,
            start,
            cap=self.cap,
            window=self.window,
            confirm_window=self.confirm_window,
            bisections=1 if self.options.quick else 2,
        )

    def close(self) -> None:
        self.probe_control.close()


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    from bench.common import cpu_seconds

    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


# ------------------------------------------------------------------------------------------------ consumers


@contextmanager
def bare_consumer(rig: IngestRig, wire: str) -> Iterator[tuple[Observer, int]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.consumers",
            "bare",
            "--url",
            rig.url,
            "--wire",
            wire,
            "--probes",
            ",".join(p.ref for p in rig.probes),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    observer = StdoutObserver(process, rig.probes)
    try:
        if not observer.ready.wait(300):
            raise BenchError(f"the bare {wire} loop did not start")
        yield observer, process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@contextmanager
def naive_consumer(rig: IngestRig, db_url: str) -> Iterator[tuple[Observer, int]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.consumers", "naive", "--url", rig.url, "--db", db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    observer: Observer | None = None
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("READY"):
            raise BenchError(f"the naive mirror did not start: {line!r}")
        observer = DbObserver(db_url, NAIVE_TABLE, rig.probes)
        yield observer, process.pid
    finally:
        if observer is not None:
            observer.close()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@contextmanager
def xsha_consumer(rig: IngestRig, db_url: str, wire: str) -> Iterator[tuple[Observer, SyncProcess, Callable[[], int]]]:
    with ExitStack() as stack:
        sync = stack.enter_context(SyncProcess(db_url, rig.options.work_dir, f"ingest-{wire}", wire=wire))
        sync.register(POOL, rig.url)
        sync.wait_watching(POOL, timeout=600)
        observer = DbObserver(db_url, "sync_vms", rig.probes)
        stack.callback(observer.close)
        counter = DbReader(db_url)
        stack.callback(counter.close)

        def applied() -> int:
            return int(counter.rows("SELECT value FROM sync_counters WHERE name = ?", ["revision"])[0][0])

        yield observer, sync, applied


# ------------------------------------------------------------------------------------------ xapi_sim ceiling


def sim_ceiling(rig: IngestRig, changes: int) -> dict[str, float]:
    """How fast xapi_sim produces changes (one mutate_vms call) and serves them (event.from of the backlog,
    bytes received, no decoding): the rate no consumer of this simulator can exceed."""
    control = SimControlJson(rig.url)
    login = control.client.call("session.login_with_password", XAPI_USER, XAPI_PASSWORD, "1.0", "xsha-bench")
    first = control.client.call("event.from", login, ["vm"], "", 1.0)
    token = first["token"]
    del first
    started = time.perf_counter()
    control.sim("mutate_vms", changes, 0, "power_state")
    produce_s = time.perf_counter() - started
    parts = urlsplit(rig.url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=120)
    body = orjson.dumps({"jsonrpc": "2.0", "method": "event.from", "params": [login, ["vm"], token, 1.0], "id": 1})
    started = time.perf_counter()
    connection.request("POST", "/jsonrpc", body, {"Content-Type": "application/json"})
    payload = connection.getresponse().read()
    serve_s = time.perf_counter() - started
    connection.close()
    control.close()
    produce = changes / produce_s
    serve = changes / serve_s
    return {
        "changes": changes,
        "produce_per_s": round(produce),
        "serve_per_s": round(serve),
        "produce_and_serve_per_s": round(1 / (1 / produce + 1 / serve)),
        "served_bytes": len(payload),
    }


# ------------------------------------------------------------------------------------------------- figure

# The best sync_service rate on SQLite over JSON-RPC found by this run's figure 1 (figure 2 takes its rates from it).
LAST_BEST: dict[str, int] = {}


def ingest_scenario(vms: int) -> dict[str, Any]:
    # 32 hosts: a power flip rewrites its host's resident_VMs list, so fewer VMs per host keep xapi_sim's own
    # cost per change (and the host records in every batch) small.
    return {"time_scale": 0.01, "pools": [pool_scenario(POOL, vms=vms, hosts=32)]}


def run(options: BenchOptions) -> list[FigureResult]:
    vms = options.size("ingest_vms", 20_000, 4_000)
    start_rate = options.size("ingest_start_rate", 2_000, 2_000)
    dbs = [db for db in options.dbs if database_available(db) is None]
    skipped = {db: database_available(db) for db in options.dbs if db not in dbs}
    results: list[FigureResult] = []
    scenario = ingest_scenario(vms)
    log(f"figure 1: ingest, {vms} VMs, databases {dbs}")
    with SimProcess(scenario, options.work_dir, "ingest") as sim:
        rig = IngestRig(sim, options, vms)
        try:
            ceiling = sim_ceiling(rig, min(vms, 10_000))
            log(f" xapi_sim ceiling {ceiling}")
            limits: dict[str, SearchResult] = {}
            for wire in ("json", "xml"):
                log(f" bare loop over {wire}")
                with bare_consumer(rig, wire) as (observer, pid):
                    limits[wire] = rig.search(observer, start_rate, pid=pid)
            naive: dict[str, SearchResult] = {}
            xsha: dict[tuple[str, str], SearchResult] = {}
            for db in dbs:
                with fresh_database(db, options.work_dir, f"naive-{db}") as url:
                    log(f" naive mirror on {db}")
                    with naive_consumer(rig, url) as (observer, pid):
                        naive[db] = rig.search(observer, 250, pid=pid)
                for wire in ("json", "xml"):
                    with fresh_database(db, options.work_dir, f"ingest-{db}-{wire}") as url:
                        log(f" sync_service on {db} over {wire}")
                        with xsha_consumer(rig, url, wire) as (observer, sync, applied):
                            xsha[(db, wire)] = rig.search(observer, start_rate, pid=sync.pid, applied=applied)
        finally:
            rig.close()

    if ("sqlite", "json") in xsha:
        LAST_BEST["sqlite-json"] = xsha[("sqlite", "json")].best
    for db in dbs:
        for wire in ("json", "xml"):
            found = xsha[(db, wire)]
            limit = limits[wire].best
            naive_best = naive[db].best
            goal = 5000 if db == "sqlite" else 3000
            ratio_limit = found.best / limit if limit else math.nan
            ratio_naive = found.best / naive_best if naive_best else math.inf
            met = ratio_limit >= 0.5 and ratio_naive >= 5
            if wire == "json":
                met = met and found.best >= goal
            target = (
                f">= {goal} changes/s (JSON-RPC), >= 0.5 x bare loop, >= 5 x naive mirror"
                if wire == "json"
                else ">= 0.5 x bare XML-RPC loop, >= 5 x naive mirror (no absolute target over XML-RPC)"
            )
            results.append(
                FigureResult(
                    figure=1,
                    name=f"ingest: highest sustained VM change rate with p99 lag < 1 s ({db}, {wire.upper()}-RPC)",
                    target=target,
                    unit="changes/s",
                    values=[float(found.best)],
                    met=met,
                    db=db,
                    wire=wire,
                    details={
                        "vms": vms,
                        "rate_cap": vms,
                        "at_cap": found.best >= vms,
                        "window_s": rig.window,
                        "confirm_window_s": rig.confirm_window,
                        "bare_loop_changes_per_s": limit,
                        # At the cap the bare loop's own limit was not found, so the ratio is an upper bound.
                        "bare_loop_at_cap": limit >= vms,
                        "ratio_to_bare_loop": rounded(ratio_limit, 3),
                        "naive_mirror_changes_per_s": naive_best,
                        "naive_wire": "xml (XenAPI SDK)",
                        "ratio_to_naive_mirror": rounded(ratio_naive, 2),
                        "xapi_sim_ceiling": ceiling,
                        "trials": [t.to_json() for t in found.trials],
                        "bare_loop_trials": [t.to_json() for t in limits[wire].trials],
                        "naive_trials": [t.to_json() for t in naive[db].trials],
                    },
                )
            )
    for db, reason in skipped.items():
        results.append(FigureResult(1, f"ingest ({db})", "", "changes/s", [], False, db=db, error=f"skipped: {reason}"))
    return results
