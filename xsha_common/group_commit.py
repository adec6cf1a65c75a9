"""Group commit: concurrent callers share one transaction.

One caller at a time leads: it takes every job queued so far (up to `max_group`) and runs them together, then hands
the lead to the oldest waiting caller, whose job is first in the queue. A lone caller leads at once, so an idle
service adds no delay and no thread hop; under load, many small transactions become a few larger ones. Used for
ha_service's decisions and for sync_service's event batches from many pools.

Coroutines submit with `submit_async`: their jobs join the same queue, and since a coroutine must not block its
event loop, a group whose oldest job came from one is run by the group commit's own runner thread. The loop is
woken once per group, not once per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
    # A waiting thread: held from the start, it blocks acquiring it and one release wakes it. Each slot is woken at
    # most once, and a bare lock is cheaper to make and to signal than an Event (a visible share of a decision).
    wake: threading.Lock | None = field(default_factory=_held_lock)
    # A waiting coroutine instead: its future, settled on its loop.
    future: asyncio.Future[R] | None = None


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
        self._runner: ThreadPoolExecutor | None = None

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
            assert slot.wake is not None
            slot.wake.acquire()
            # Woken either with the outcome, or promoted to lead with this job first in the queue.
        if not slot.done:
            self._lead(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]  # R itself may be None-able

    async def submit_async(self, job: J) -> R:
        """`submit` for a coroutine: waits for the outcome without blocking the event loop.

        Should the caller be cancelled, the job still runs (as a thread's would); only its outcome is dropped."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        slot: _Slot[J, R] = _Slot(job, wake=None, future=future)
        with self._lock:
            self._pending.append(slot)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead_on_runner()
        return await future

    def _lead_on_runner(self) -> None:
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self._runner.submit(self._lead, None)

    def _lead(self, own: _Slot[J, R] | None) -> None:
        """Runs queued groups, the first of which starts with `own` (the calling thread's job, which is not woken;
        None on the runner thread), until the lead passes to a waiting thread or nothing is left."""
        while True:
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
                _wake(group, own)
            if successor is None:
                return
            if successor.wake is not None:
                successor.wake.release()
                return
            if own is not None:  # a thread with its outcome in hand: the runner takes the coroutines' jobs
                self._lead_on_runner()
                return
            # On the runner, with a coroutine's job next: lead on.


def _wake(group: Sequence[_Slot[Any, Any]], own: _Slot[Any, Any] | None) -> None:
    """Wakes every waiter of a finished group: threads one by one, each event loop once for all its coroutines."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Slot[Any, Any]]] = {}
    for slot in group:
        if slot is own:
            continue
        if slot.future is not None:
            by_loop.setdefault(slot.future.get_loop(), []).append(slot)
        elif slot.wake is not None:
            slot.wake.release()
    for loop, slots in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_settle, slots)


def _settle(slots: Sequence[_Slot[Any, Any]]) -> None:
    for slot in slots:
        future = slot.future
        if future is None or future.done():  # cancelled by its caller
            continue
        if slot.error is not None:
            future.set_exception(slot.error)
        else:
            future.set_result(slot.result)
