"""Figure 1's search for the highest sustained rate, against a model consumer: a consumer that applies `capacity`
changes a second falls behind at any higher rate, its lag growing by (1 - capacity / rate) each second."""

from __future__ import annotations

import pytest

from bench.fig_ingest import CONFIRM_ATTEMPTS, Trial, find_sustained_rate, step_down

WINDOW, CONFIRM = 4.0, 16.0


class ModelConsumer:
    def __init__(self, capacity: float) -> None:
        self.capacity = capacity
        self.asked: list[tuple[int, float]] = []

    def lag_after(self, rate: int, seconds: float) -> float:
        return max(0.0, 1 - self.capacity / rate) * seconds

    def trial(self, rate: int, window: float) -> Trial:
        self.asked.append((rate, window))
        lag = self.lag_after(rate, window)
        return Trial(rate, lag < 1.0, float(rate), lag / 2, lag, lag, int(window / 0.05), 0, window=window)


def search(consumer: ModelConsumer, start: int = 2000, cap: int = 20000) -> int:
    return find_sustained_rate(consumer.trial, start, cap=cap, window=WINDOW, confirm_window=CONFIRM, bisections=2).best


def test_a_rate_that_passes_the_short_window_but_falls_behind_is_not_reported() -> None:
    consumer = ModelConsumer(6000)
    # The short window alone would report 7,000/s, a rate at which the lag passes 1 s after 7 s.
    assert consumer.lag_after(7000, WINDOW) < 1.0 < consumer.lag_after(7000, 7.1)
    best = search(consumer)
    assert 0 < best <= 6000 / (1 - 1 / CONFIRM)  # holds for the whole confirmation window
    assert consumer.lag_after(best, CONFIRM) < 1.0
    assert (7000, CONFIRM) in consumer.asked  # the short windows' best was tried long, and failed
    assert (step_down(7000), CONFIRM) in consumer.asked  # a fifth lower held
    assert best > step_down(7000)  # and so did the rate halfway back up
    assert consumer.asked[-1] == (best, CONFIRM)


def test_a_consumer_that_keeps_up_is_confirmed_at_the_rate_the_search_found() -> None:
    class Steady(ModelConsumer):
        """No backlog up to its capacity, whatever the window; overwhelmed beyond it."""

        def lag_after(self, rate: int, seconds: float) -> float:
            return 0.01 if rate <= self.capacity else seconds

    consumer = Steady(9000)
    best = search(consumer)
    # 2,000, 4,000 and 8,000 pass, 16,000 fails; the bisection passes nothing higher; 8,000 holds for 16 s.
    assert best == 8000
    assert [window for _, window in consumer.asked].count(CONFIRM) == 1


def test_at_the_cap_the_cap_is_confirmed() -> None:
    consumer = ModelConsumer(50_000)
    assert search(consumer, cap=20_000) == 20_000
    assert consumer.asked[-1] == (20_000, CONFIRM)


def test_no_rate_is_reported_when_none_holds_for_the_long_window() -> None:
    class Flaky(ModelConsumer):
        def trial(self, rate: int, window: float) -> Trial:
            result = super().trial(rate, window)
            result.passed = result.passed and window == WINDOW
            return result

    consumer = Flaky(6000)
    assert search(consumer) == 0
    assert [window for _, window in consumer.asked].count(CONFIRM) == CONFIRM_ATTEMPTS


@pytest.mark.parametrize(("rate", "lower"), [(10_000, 8_000), (7_000, 5_600), (300, 200), (200, 100), (100, 0), (0, 0)])
def test_step_down(rate: int, lower: int) -> None:
    assert step_down(rate) == lower
