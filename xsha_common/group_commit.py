"""Group commit: concurrent callers share one transaction.

One caller at a time leads: it takes every job queued so far (up to `max_group`) and runs them together, then hands
the lead to the oldest waiting caller, whose job is first in the queue. A lone caller leads at once, so an idle
service adds no delay and no thread hop; under load, many small transactions become a few larger ones. Used for
ha_service's decisions and for sync_service's event batches from many pools.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass
class _Slot(Generic[J, R]):
    job: J
    result: R | None = None
    error: BaseException | None = None
    done: bool = False
    # Held from the start: a waiting caller blocks acquiring it and one release wakes it. Each slot is woken at
    # most once, and a bare lock is cheaper to make and to signal than an Event (a visible share of a decision).
    wake: threading.Lock = field(default_factory=_held_lock)


class GroupCommit(Generic[J, R]):
    """`run(jobs)` returns one outcome per job, in order: a result, or the exception that job's caller raises.
    Should `run` itself raise, every job of that group raises it."""

    def __init__(self, run: Callable[[Sequence[J]], Sequence[R | BaseException]], *, max_group: int = 64) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._run = run
        self._max_group = max_group
        self._lock = threading.Lock()
        self._pending: list[_Slot[J, R]] = []
        self._leading = False

    @property
    def queued(self) -> int:
        """Jobs waiting for a run (not counting the group running now)."""
        with self._lock:
            return len(self._pending)

    def submit(self, job: J) -> R:
        """Runs `job` (with whatever else is queued) and returns its result, or raises its error."""
        slot: _Slot[J, R] = _Slot(job)
        with self._lock:
            self._pending.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wake.acquire()
            # Woken either with the outcome, or promoted to lead with this job first in the queue.
        if not slot.done:
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # R itself may be None-able

    def _lead(self, own: _Slot[J, R]) -> None:
        """Runs the queued group, whose first job is `own` (the leader's: it is not waiting, so not woken)."""
        with self._lock:
            group = self._pending[: self._max_group]
            del self._pending[: self._max_group]
        try:
            outcomes = self._run([slot.job for slot in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"group commit: {len(outcomes)} outcomes for {len(group)} jobs")
            for slot, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    slot.error = outcome
                else:
                    slot.result = outcome
        except BaseException as error:
            for slot in group:
                slot.error = error
        finally:
            for slot in group:
                slot.done = True
            with self._lock:
                successor = self._pending[0] if self._pending else None
                if successor is None:
                    self._leading = False
            for slot in group:
                if slot is not own:
                    slot.wake.release()
            if successor is not None:
                successor.wake.release()
