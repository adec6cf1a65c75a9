"""The Markdown report of a benchmark results file."""

from __future__ import annotations

from typing import Any

from bench.report import render


def document(*figures: dict[str, Any]) -> dict[str, Any]:
    return {
        "date": "2026-11-25T23:00:00+00:00",
        "command": "python -m bench --figures 1,4",
        "quick": False,
        "machine": {"cpu_model": "Test CPU", "cores": 2, "python": "3.11.7"},
        "figures": list(figures),
    }


def figure(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "figure": 1,
        "name": "ingest",
        "target": ">= 5,000/s",
        "value": {"median": 5200.0, "min": 5000.0, "max": 5400.0},
        "unit": "changes/s",
        "repeats": 3,
        "db": "sqlite",
        "wire": "json-rpc",
        "met": True,
    }
    return {**base, **overrides}


def test_each_figure_is_a_row_with_its_target_measure_and_verdict() -> None:
    text = render(
        document(
            figure(),
            figure(figure=4, name="decisions", target="p99 <= 2x", met=False, db="mysql", wire="", repeats=1),
        )
    )
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert rows[0] == (
        "| 1 | ingest | sqlite | json-rpc | >= 5,000/s | 5,200 changes/s (min 5,000, max 5,400, n=3) | yes |"
    )
    assert rows[1].startswith("| 4 | decisions | mysql | - | p99 <= 2x | 5,200 changes/s | **no** |")
    assert "Test CPU, 2 cores, Python 3.11.7" in text


def test_a_failed_figure_says_why() -> None:
    text = render(document(figure(error="RuntimeError('sim died')", value={}, met=False)))
    assert "failed: RuntimeError('sim died')" in text
