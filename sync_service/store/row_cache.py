"""The mirror rows this replica last wrote or read, by pool, kept so a batch need not read them again.

A cached row stands for the database's row in one of two ways:
- **Trusted, with no read at all**, while the pool's tag still matches: the pool row's `rows_stamp`, which every
  transaction that writes the pool's mirror rows sets to a new random value, and the lease epoch the rows were
  written under. An equal stamp means no other transaction wrote the pool's rows since this replica's last commit;
  an equal epoch means no other replica held the pool in between (a replica that did not stamp, during an upgrade,
  still took the lease). When the tag differs, the pool's cached rows are all dropped: any of them may be stale.
- **Checked by version** otherwise (for a VM: its id, revision and XAPI ref), by a narrow read of those columns.
  Every write of a row's content takes a new revision from the change log's counter, so an equal version means
  equal content whoever wrote last.

What a transaction read or wrote is put here only after it commits, with the stamp it wrote: a rolled-back
transaction's revisions are handed out again, to other content, and its stamp is not the database's. A commit whose
outcome is unknown leaves the cache with the earlier tag; if the commit did land, its stamp differs from that tag.
Compaction deletes removed rows without stamping: the caller never trusts a cached row that is removed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")


class RowCache(Generic[V]):
    """At most `max_entries` rows, by (pool, key) (0: none). When full it starts over rather than track recency on
    every access: the rows needed again come back with the next read of them."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries cannot be negative")
        self.max_entries = max_entries
        self._pools: dict[str, dict[str, V]] = {}
        self._tags: dict[str, Hashable] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def get(self, pool: str, key: str) -> V | None:
        rows = self._pools.get(pool)
        return rows.get(key) if rows is not None else None

    def tag(self, pool: str) -> Hashable | None:
        """The tag the pool's rows were committed with (None: none kept)."""
        return self._tags.get(pool)

    def forget(self, pool: str) -> None:
        """Drop the pool's rows and tag: another writer may have changed any of them."""
        self._tags.pop(pool, None)
        rows = self._pools.pop(pool, None)
        if rows is not None:
            self._size -= len(rows)

    def put_committed(self, rows: Mapping[tuple[str, str], V], tags: Mapping[str, Hashable]) -> None:
        """Rows by (pool, key) as a transaction that has committed left them, and the tag it left each pool's rows
        with. A pool it wrote without rows to keep still gets its tag: its other cached rows stayed current."""
        if not self.max_entries:
            return
        if self._size + len(rows) > self.max_entries:
            self._pools.clear()
            self._tags.clear()
            self._size = 0
        if len(rows) > self.max_entries:
            return
        for (pool, key), row in rows.items():
            pool_rows = self._pools.setdefault(pool, {})
            if key not in pool_rows:
                self._size += 1
            pool_rows[key] = row
        self._tags.update(tags)
