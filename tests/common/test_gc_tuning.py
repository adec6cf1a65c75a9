"""gc_tuning: start-up garbage is collected, what is alive is frozen, later objects are not; the young threshold
keeps a batch's short-lived objects from starting collections while garbage cycles are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from xsha_common.gc_tuning import YOUNG_THRESHOLD, freeze_startup_objects, raise_young_threshold, tune_for_serving


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()


@pytest.fixture
def thresholds_restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


class _Collections:
    """Counts the collector's runs while installed as a gc callback."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.runs += 1


def _collections_during_burst(objects: int) -> int:
    """How many collections start while `objects` dicts are alive at once, then freed (an event batch's rows)."""
    gc.collect()  # the young generation's count starts from zero
    counter = _Collections()
    gc.callbacks.append(counter)
    try:
        burst = [{"row": n} for n in range(objects)]
        del burst
    finally:
        gc.callbacks.remove(counter)
    return counter.runs


def _tracked(obj: object) -> bool:
    """Whether a collection of any generation would walk `obj` (frozen objects are in none)."""
    return any(candidate is obj for candidate in gc.get_objects())


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_objects_alive_at_start_up_are_frozen_and_later_ones_are_not() -> None:
    alive = [_Node()]
    assert _tracked(alive)

    frozen = freeze_startup_objects()

    assert frozen > 0
    # A frozen object freed since (another thread's, under pytest-xdist) leaves the permanent generation; none joins.
    assert 0 < gc.get_freeze_count() <= frozen
    assert not _tracked(alive)
    later = [_Node()]
    assert _tracked(later)


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_garbage_cycles_left_by_start_up_are_collected_not_frozen() -> None:
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second
    assert gone() is not None  # only the cycle collector can free a cycle

    freeze_startup_objects()

    assert gone() is None


@pytest.mark.usefixtures("thresholds_restored")
def test_the_young_threshold_is_raised_and_the_older_ones_kept() -> None:
    gc.set_threshold(700, 10, 10)

    raise_young_threshold()

    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)


@pytest.mark.usefixtures("thresholds_restored")
@pytest.mark.parametrize("threshold", [0, -1])
def test_a_threshold_that_would_turn_collection_off_is_refused(threshold: int) -> None:
    before = gc.get_threshold()

    with pytest.raises(ValueError, match="cycle collector off"):
        raise_young_threshold(threshold)

    assert gc.get_threshold() == before


@pytest.mark.usefixtures("thresholds_restored")
def test_a_batch_of_short_lived_objects_starts_collections_only_at_the_default_threshold() -> None:
    batch = YOUNG_THRESHOLD // 2

    gc.set_threshold(700, 10, 10)
    assert _collections_during_burst(batch) >= batch // 700 - 1

    raise_young_threshold()
    assert _collections_during_burst(batch) == 0


@pytest.mark.usefixtures("thresholds_restored")
def test_garbage_cycles_are_still_collected_without_an_explicit_collection() -> None:
    raise_young_threshold()
    gc.collect()
    first, second = _Node(), _Node()
    first.other, second.other = second, first
    gone = weakref.ref(first)
    del first, second

    for _ in range(YOUNG_THRESHOLD):  # more cycles: two objects each, none freed by reference counting
        left, right = _Node(), _Node()
        left.other, right.other = right, left
    del left, right

    assert gone() is None


@pytest.mark.usefixtures("thresholds_restored", "unfrozen_afterwards")
def test_tuning_for_serving_raises_the_threshold_and_freezes_start_up_objects() -> None:
    alive = [_Node()]

    frozen = tune_for_serving()

    assert frozen == gc.get_freeze_count() > 0
    assert not _tracked(alive)
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
