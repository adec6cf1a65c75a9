"""GroupCommit: a lone caller runs at once; concurrent callers share runs; outcomes and errors reach their caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from xsha_common.group_commit import GroupCommit
from xsha_common.testing import wait_until


class _Gate:
    """A run function that records each group and holds the first run until released, so others queue up."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def run(self, jobs: Sequence[int]) -> list[int | BaseException]:
        self.groups.append(list(jobs))
        if len(self.groups) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        return [ValueError(f"job {job}") if job < 0 else job * 10 for job in jobs]


def _submit_in_threads(
    commit: GroupCommit[int, int], jobs: list[int]
) -> tuple[dict[int, object], list[threading.Thread]]:
    outcomes: dict[int, object] = {}

    def call(job: int) -> None:
        try:
            outcomes[job] = commit.submit(job)
        except BaseException as error:
            outcomes[job] = error

    threads = [threading.Thread(target=call, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    return outcomes, threads


def _wait_queued(commit: GroupCommit[int, int], depth: int) -> None:
    wait_until(lambda: commit.queued == depth, timeout=5, what=f"{depth} jobs queued")


def test_a_lone_caller_runs_its_job_alone_at_once() -> None:
    gate = _Gate()
    gate.release.set()
    commit: GroupCommit[int, int] = GroupCommit(gate.run)
    assert commit.submit(3) == 30
    assert commit.submit(4) == 40
    assert gate.groups == [[3], [4]]


def test_callers_arriving_during_a_run_share_the_next_run_in_arrival_order() -> None:
    gate = _Gate()
    commit: GroupCommit[int, int] = GroupCommit(gate.run)
    first, first_threads = _submit_in_threads(commit, [1])
    assert gate.first_started.wait(5)
    results: list[dict[int, object]] = []
    threads: list[threading.Thread] = []
    for job in (2, 3, 4):  # one at a time, so the queue order is known
        outcomes, started = _submit_in_threads(commit, [job])
        results.append(outcomes)
        threads += started
        _wait_queued(commit, job - 1)
    gate.release.set()
    for thread in first_threads + threads:
        thread.join(5)
    assert gate.groups == [[1], [2, 3, 4]]
    assert first[1] == 10
    assert [outcome for outcomes in results for outcome in outcomes.values()] == [20, 30, 40]


def test_each_caller_gets_its_own_outcome_and_a_failed_job_fails_only_its_caller() -> None:
    gate = _Gate()
    commit: GroupCommit[int, int] = GroupCommit(gate.run)
    _, first_threads = _submit_in_threads(commit, [1])
    assert gate.first_started.wait(5)
    outcomes, threads = _submit_in_threads(commit, [2, -5, 7])
    _wait_queued(commit, 3)
    gate.release.set()
    for thread in first_threads + threads:
        thread.join(5)
    assert outcomes[2] == 20 and outcomes[7] == 70
    assert isinstance(outcomes[-5], ValueError) and str(outcomes[-5]) == "job -5"
    assert sorted(gate.groups[1]) == [-5, 2, 7]


def test_a_run_that_raises_fails_every_job_of_its_group_and_the_next_group_still_runs() -> None:
    calls: list[list[int]] = []

    def run(jobs: Sequence[int]) -> list[int | BaseException]:
        calls.append(list(jobs))
        if len(calls) == 1:
            raise RuntimeError("database down")
        return [job for job in jobs]

    commit: GroupCommit[int, int] = GroupCommit(run)
    with pytest.raises(RuntimeError, match="database down"):
        commit.submit(1)
    assert commit.submit(2) == 2


def test_a_run_returning_the_wrong_number_of_outcomes_is_an_error_not_a_hang() -> None:
    commit: GroupCommit[int, int] = GroupCommit(lambda jobs: [])
    with pytest.raises(RuntimeError, match="0 outcomes for 1 jobs"):
        commit.submit(1)


def test_groups_never_exceed_max_group_and_every_caller_completes() -> None:
    gate = _Gate()
    commit: GroupCommit[int, int] = GroupCommit(gate.run, max_group=3)
    _, first_threads = _submit_in_threads(commit, [0])
    assert gate.first_started.wait(5)
    outcomes, threads = _submit_in_threads(commit, list(range(1, 11)))
    _wait_queued(commit, 10)
    gate.release.set()
    for thread in first_threads + threads:
        thread.join(5)
        assert not thread.is_alive()
    assert outcomes == {job: job * 10 for job in range(1, 11)}
    assert all(len(group) <= 3 for group in gate.groups)
    assert sorted(job for group in gate.groups for job in group) == list(range(11))


def test_max_group_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_group"):
        GroupCommit(lambda jobs: list(jobs), max_group=0)


def test_many_callers_in_many_rounds_each_get_their_own_result_exactly_once() -> None:
    """Leads handed on and on under contention: every caller is woken once, with its own outcome (a caller woken
    twice, or never, would fail or hang here)."""
    runs: list[int] = []

    def run(jobs: Sequence[int]) -> list[int]:
        runs.append(len(jobs))
        return [job * 2 for job in jobs]

    commit: GroupCommit[int, int] = GroupCommit(run, max_group=5)
    results: dict[int, int] = {}
    failures: list[BaseException] = []

    def caller(base: int) -> None:
        try:
            for n in range(200):
                job = base * 1000 + n
                results[job] = commit.submit(job)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and failures == []
    assert results == {job: job * 2 for job in results} and len(results) == 16 * 200
    assert sum(runs) == 16 * 200 and max(runs) <= 5


# --- coroutines (submit_async) --------------------------------------------------------------------------------------


def test_coroutines_share_runs_on_the_runner_thread_and_get_their_own_outcomes() -> None:
    gate = _Gate()
    run_threads: list[str] = []

    def run(jobs: Sequence[int]) -> list[int | BaseException]:
        run_threads.append(threading.current_thread().name)
        return gate.run(jobs)

    commit: GroupCommit[int, int] = GroupCommit(run)

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(commit.submit_async(1))
        await asyncio.to_thread(gate.first_started.wait, 5)
        others = [asyncio.ensure_future(commit.submit_async(job)) for job in (2, -3, 4)]
        await asyncio.to_thread(_wait_queued, commit, 3)
        gate.release.set()
        return list(await asyncio.gather(first, *others, return_exceptions=True))

    outcomes = asyncio.run(scenario())
    assert outcomes[0] == 10 and outcomes[1] == 20 and outcomes[3] == 40
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "job -3"
    assert gate.groups == [[1], [2, -3, 4]]
    # The event loop never ran a group: it must not block on the database.
    assert run_threads and all(name.startswith("group-commit") for name in run_threads)


def test_threads_and_coroutines_share_one_queue_in_arrival_order() -> None:
    gate = _Gate()
    commit: GroupCommit[int, int] = GroupCommit(gate.run)
    outcomes, threads = _submit_in_threads(commit, [1])
    assert gate.first_started.wait(5)

    async def coroutines() -> list[int]:
        waiting = [asyncio.ensure_future(commit.submit_async(job)) for job in (2, 3)]
        await asyncio.to_thread(_wait_queued, commit, 2)
        more, more_threads = _submit_in_threads(commit, [4])
        await asyncio.to_thread(_wait_queued, commit, 3)
        gate.release.set()
        results = list(await asyncio.gather(*waiting))
        for thread in more_threads:
            await asyncio.to_thread(thread.join, 5)
        outcomes.update(more)
        return results

    assert asyncio.run(coroutines()) == [20, 30]
    for thread in threads:
        thread.join(5)
    assert outcomes == {1: 10, 4: 40}
    assert gate.groups == [[1], [2, 3, 4]]


def test_a_cancelled_coroutine_s_job_still_runs_and_the_others_get_their_outcomes() -> None:
    gate = _Gate()
    commit: GroupCommit[int, int] = GroupCommit(gate.run)

    async def scenario() -> int:
        first = asyncio.ensure_future(commit.submit_async(1))
        await asyncio.to_thread(gate.first_started.wait, 5)
        cancelled = asyncio.ensure_future(commit.submit_async(2))
        kept = asyncio.ensure_future(commit.submit_async(3))
        await asyncio.to_thread(_wait_queued, commit, 2)
        cancelled.cancel()
        gate.release.set()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await first == 10
        return await kept

    assert asyncio.run(scenario()) == 30
    assert gate.groups == [[1], [2, 3]]
