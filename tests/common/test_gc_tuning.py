"""freeze_startup_objects: start-up garbage is collected, what is alive is frozen, later objects are not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from xsha_common.gc_tuning import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen_afterwards() -> Iterator[None]:
    yield
    gc.unfreeze()


def _tracked(obj: object) -> bool:
    """Whether a collection of any generation would walk `obj` (frozen objects are in none)."""
    return any(candidate is obj for candidate in gc.get_objects())


@pytest.mark.usefixtures("unfrozen_afterwards")
def test_objects_alive_at_start_up_are_frozen_and_later_ones_are_not() -> None:
    alive = [_Node()]
    assert _tracked(alive)

    frozen = freeze_startup_objects()

    assert frozen == gc.get_freeze_count() > 0
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
