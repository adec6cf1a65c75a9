"""RowCache: bounded, and filled only with what committed transactions left."""

from __future__ import annotations

import pytest

from sync_service.store.row_cache import RowCache


def test_rows_put_after_commit_are_found_and_newer_ones_replace_them() -> None:
    cache: RowCache[str, int] = RowCache(10)
    cache.put_committed({"a": 1, "b": 2})
    cache.put_committed({"a": 3})
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (3, 2, None)
    assert len(cache) == 2


def test_a_full_cache_starts_over_instead_of_growing() -> None:
    cache: RowCache[int, int] = RowCache(4)
    cache.put_committed({1: 1, 2: 2, 3: 3})
    cache.put_committed({4: 4, 5: 5})  # would make 5: the old rows go, the new ones stay
    assert len(cache) == 2 and cache.get(1) is None and cache.get(5) == 5
    cache.put_committed({n: n for n in range(10, 20)})  # more than it may hold at all: kept empty
    assert len(cache) == 0


def test_a_cache_of_size_zero_keeps_nothing_and_a_negative_size_is_refused() -> None:
    cache: RowCache[str, int] = RowCache(0)
    cache.put_committed({"a": 1})
    assert cache.get("a") is None
    with pytest.raises(ValueError, match="negative"):
        RowCache(-1)
