"""Smoke test of the benchmark suite: every figure runs end to end at a tiny size (SQLite only) and produces the
documented JSON shape. Benchmarks are not tests: nothing here looks at a time or at whether a target was met."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import FIGURES, main, run
from bench.common import BenchOptions, percentile, summary

TINY = {
    "ingest_vms": 200,
    "ingest_start_rate": 100,
    "ingest_window_ms": 500,
    "ingest_confirm_ms": 1000,
    "latency_vms": 200,
    "latency_rate": 100,
    "initial_sync_vms": 200,
    "decision_seconds": 1,
    "decision_clients": 4,
    "failover_vms": 30,
    "memory_pools": 2,
    "memory_pool_vms": 20,
    "many_pools": 3,
    "many_pool_vms": 5,
    "many_pools_rate": 6,
    "many_pools_seconds": 2,
}
VALUE_KEYS = {"median", "min", "max"}


def check_figure(doc: dict[str, Any], number: int) -> None:
    assert doc["figure"] == number
    for key in ("name", "target", "value", "unit", "repeats", "db", "wire", "met", "details"):
        assert key in doc, f"figure {number} lacks {key}: {doc}"
    assert "error" not in doc, doc["error"]
    assert set(doc["value"]) == VALUE_KEYS
    assert all(isinstance(v, int | float) for v in doc["value"].values()), doc["value"]
    assert doc["value"]["min"] <= doc["value"]["median"] <= doc["value"]["max"]
    assert doc["repeats"] >= 1
    assert isinstance(doc["met"], bool)
    assert doc["db"] == "sqlite"
    json.dumps(doc)  # plain JSON, no NaN


@pytest.mark.slow
@pytest.mark.parametrize("number", sorted(FIGURES))
def test_each_figure_runs_at_a_tiny_size(number: int, tmp_path: Path) -> None:
    options = BenchOptions(quick=True, repeats=1, dbs=("sqlite",), work_dir=tmp_path, sizes=dict(TINY))
    document = run(options, [number])
    assert document["machine"]["cores"] >= 1
    assert {"python", "cpu_model", "cores"} <= set(document["machine"])
    figures = document["figures"]
    assert figures, f"figure {number} produced nothing"
    for doc in figures:
        check_figure(doc, number)
        if number == 1:
            details = doc["details"]
            assert details["bare_loop_at_cap"] is (details["bare_loop_changes_per_s"] >= details["rate_cap"])


@pytest.mark.slow
def test_command_line_writes_the_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    sizes = [f"--size=initial_sync_vms={TINY['initial_sync_vms']}"]
    assert (
        main(["--figures", "3", "--quick", "--dbs", "sqlite", "--out", str(out), "--work-dir", str(tmp_path), *sizes])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert [doc["figure"] for doc in printed["figures"]] == [3]


def test_statistics_helpers() -> None:
    assert summary([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert math.isnan(summary([])["median"])
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert percentile([0.5], 99) == 0.5
