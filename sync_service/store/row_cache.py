"""The mirror rows this replica last wrote or read, kept so a batch reads whole only the rows changed since.

A cached row stands for the database's row only while the row still has the version it was cached with (for a VM:
its id, revision and XAPI ref), which the caller checks with a narrow read of those columns. Every write of a row's
content takes a new revision from the change log's counter, so an equal version means equal content whoever wrote
last. What a transaction read or wrote is staged and put here only after it commits: a rolled-back transaction's
revisions are handed out again, to other content.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RowCache(Generic[K, V]):
    """At most `max_entries` rows (0: none). When full it starts over rather than track recency on every access:
    the rows needed again come back with the next read of them."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries cannot be negative")
        self.max_entries = max_entries
        self._rows: dict[K, V] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: K) -> V | None:
        return self._rows.get(key)

    def put_committed(self, rows: Mapping[K, V]) -> None:
        """Rows as a transaction that has committed left them."""
        if not self.max_entries or not rows:
            return
        if len(self._rows) + len(rows) > self.max_entries:
            self._rows.clear()
        if len(rows) > self.max_entries:
            return
        self._rows.update(rows)
