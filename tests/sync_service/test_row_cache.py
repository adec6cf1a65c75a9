"""RowCache: bounded, by pool, with the tag each pool's rows were committed with; filled only with what committed
transactions left."""

from __future__ import annotations

import pytest

from sync_service.store.row_cache import RowCache


def test_rows_put_after_commit_are_found_by_pool_and_newer_ones_replace_them() -> None:
    cache: RowCache[int] = RowCache(10)
    cache.put_committed({("p1", "a"): 1, ("p1", "b"): 2, ("p2", "a"): 5}, {"p1": "s1", "p2": "s2"})
    cache.put_committed({("p1", "a"): 3}, {"p1": "s3"})
    assert (cache.get("p1", "a"), cache.get("p1", "b"), cache.get("p2", "a"), cache.get("p1", "c")) == (3, 2, 5, None)
    assert (cache.tag("p1"), cache.tag("p2"), cache.tag("p3")) == ("s3", "s2", None)
    assert len(cache) == 3


def test_forgetting_a_pool_drops_its_rows_and_tag_and_nothing_else() -> None:
    cache: RowCache[int] = RowCache(10)
    cache.put_committed({("p1", "a"): 1, ("p1", "b"): 2, ("p2", "a"): 5}, {"p1": "s1", "p2": "s2"})
    cache.forget("p1")
    cache.forget("p9")  # never kept: nothing to do
    assert (cache.get("p1", "a"), cache.get("p1", "b"), cache.tag("p1")) == (None, None, None)
    assert (cache.get("p2", "a"), cache.tag("p2"), len(cache)) == (5, "s2", 1)


def test_a_pool_written_without_rows_to_keep_still_gets_its_new_tag() -> None:
    cache: RowCache[int] = RowCache(10)
    cache.put_committed({("p1", "a"): 1}, {"p1": "s1"})
    cache.put_committed({}, {"p1": "s2"})
    assert (cache.get("p1", "a"), cache.tag("p1")) == (1, "s2")


def test_a_full_cache_starts_over_instead_of_growing() -> None:
    cache: RowCache[int] = RowCache(4)
    cache.put_committed({("p1", "1"): 1, ("p1", "2"): 2, ("p2", "3"): 3}, {"p1": "s1", "p2": "s2"})
    cache.put_committed({("p1", "4"): 4, ("p1", "5"): 5}, {"p1": "s3"})  # would make 5: the old rows go
    assert len(cache) == 2 and cache.get("p1", "1") is None and cache.get("p1", "5") == 5
    assert (cache.tag("p1"), cache.tag("p2")) == ("s3", None)  # p2 kept no rows, so no tag
    cache.put_committed({("p1", str(n)): n for n in range(10, 20)}, {"p1": "s4"})  # more than it may hold at all
    assert len(cache) == 0 and cache.tag("p1") is None


def test_a_cache_of_size_zero_keeps_nothing_and_a_negative_size_is_refused() -> None:
    cache: RowCache[int] = RowCache(0)
    cache.put_committed({("p1", "a"): 1}, {"p1": "s1"})
    assert cache.get("p1", "a") is None and cache.tag("p1") is None
    with pytest.raises(ValueError, match="negative"):
        RowCache(-1)
