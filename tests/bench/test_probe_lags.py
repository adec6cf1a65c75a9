"""How a trial times its probes: a probe counts from its rename to the first time the consumer showed that name or
a later name of the same probe VM (xapi_sim coalesces two renames made before any fetch, as XAPI does)."""

from __future__ import annotations

import math

import pytest

from bench.fig_ingest import Observer, probe_lags


def observer_with(*marks: tuple[int, str, float]) -> Observer:
    observer = Observer()
    for probe, name, when in marks:
        observer.mark(probe, name, when)
    return observer


def test_each_probe_is_timed_from_its_rename_to_its_own_name_showing() -> None:
    sent = [(0, "p-0", 10.0), (1, "p-1", 10.05), (0, "p-2", 10.8)]
    result = probe_lags(observer_with((0, "p-0", 10.02), (1, "p-1", 10.5), (0, "p-2", 10.9)), sent)
    assert result.lags == pytest.approx([0.02, 0.45, 0.1])
    assert (result.lost, result.superseded) == (0, 0)


def test_a_probe_renamed_again_before_it_showed_is_timed_by_the_later_name() -> None:
    # p-0 and p-2 went out back to back after a stall; the consumer only ever saw p-2 on probe VM 0.
    sent = [(0, "p-0", 10.0), (1, "p-1", 10.01), (0, "p-2", 10.02)]
    result = probe_lags(observer_with((1, "p-1", 10.1), (0, "p-2", 10.3)), sent)
    assert result.lags == pytest.approx([0.3, 0.09, 0.28])
    assert (result.lost, result.superseded) == (0, 1)


def test_a_later_name_of_another_probe_vm_does_not_stand_in() -> None:
    sent = [(0, "p-0", 10.0), (1, "p-1", 10.05)]
    result = probe_lags(observer_with((1, "p-1", 10.1)), sent)
    assert math.isinf(result.lags[0])
    assert result.lags[1] == pytest.approx(0.05)
    assert (result.lost, result.superseded) == (1, 0)


def test_an_earlier_name_never_stands_in_for_a_later_one() -> None:
    # The consumer showed p-0 but never p-1: the mirror is stuck behind p-1's rename.
    sent = [(0, "p-0", 10.0), (0, "p-1", 10.8)]
    result = probe_lags(observer_with((0, "p-0", 10.1)), sent)
    assert result.lags[0] == pytest.approx(0.1)
    assert math.isinf(result.lags[1])
    assert result.lost == 1


def test_a_probe_is_reflected_at_the_earliest_of_its_own_and_later_names() -> None:
    # An observer that polls can first catch a later name and only then (a stale read) the earlier one.
    sent = [(0, "p-0", 10.0), (0, "p-1", 10.1)]
    result = probe_lags(observer_with((0, "p-1", 10.2), (0, "p-0", 10.4)), sent)
    assert result.lags == pytest.approx([0.2, 0.1])
    assert result.superseded == 0
