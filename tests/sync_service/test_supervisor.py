"""The supervisor's change-log retention: compaction steps paced and bounded per housekeeping round."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet

from sync_service.crypto import CredentialsCipher
from sync_service.store.repository import Compaction, Repository
from sync_service.supervisor import RetentionSettings, Supervisor
from sync_service.watcher import WatcherSettings


@dataclass
class FakeClock:
    now: float = 100.0

    def monotonic(self) -> float:
        return self.now


@dataclass
class StepRepository:
    """Compaction steps that each take `step_seconds` of the fake clock (a binary fraction, so sums are exact);
    finished after `steps_due` of them."""

    clock: FakeClock
    step_seconds: float
    steps_due: int
    calls: list[dict[str, Any]] = field(default_factory=list)

    def compact(self, **arguments: Any) -> Compaction:
        self.calls.append(arguments)
        self.clock.now += self.step_seconds
        return Compaction(compacted_through=len(self.calls), finished=len(self.calls) >= self.steps_due)


@dataclass
class RecordingStop:
    """The supervisor's stop event: records each pause and lets the fake time pass."""

    clock: FakeClock
    stopped: bool = False
    pauses: list[float] = field(default_factory=list)

    def wait(self, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.clock.now += seconds
        return self.stopped


def _supervisor(
    monkeypatch: pytest.MonkeyPatch, steps_due: int, *, stopped: bool = False
) -> tuple[Supervisor, StepRepository, RecordingStop]:
    clock = FakeClock()
    monkeypatch.setattr(time, "monotonic", clock.monotonic)  # the module's clock: the supervisor calls it by name
    repository = StepRepository(clock, step_seconds=0.125, steps_due=steps_due)
    retention = RetentionSettings(keep_changes=50, keep_seconds=0, step_revisions=7, round_seconds=1.0)
    supervisor = Supervisor(
        cast(Repository, repository),
        CredentialsCipher(Fernet.generate_key().decode()),
        WatcherSettings(),
        retention=retention,
    )
    stop = RecordingStop(clock, stopped=stopped)
    supervisor._stop = cast(Any, stop)
    return supervisor, repository, stop


def test_a_round_runs_steps_until_the_log_is_within_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor, repository, stop = _supervisor(monkeypatch, steps_due=3)
    assert supervisor.compact() is True
    assert repository.calls == [{"keep_changes": 50, "keep_seconds": 0, "max_revisions": 7}] * 3
    assert stop.pauses == [0.125, 0.125]  # after each unfinished step, a pause as long as it took


def test_a_round_stops_after_its_time_and_the_next_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor, repository, stop = _supervisor(monkeypatch, steps_due=8)
    # Steps of 0.125 s, each followed by a pause as long: the fourth step and its pause would reach the round's 1 s.
    assert supervisor.compact() is False
    assert len(repository.calls) == 4 and stop.pauses == [0.125] * 3
    assert supervisor.compact() is True
    assert len(repository.calls) == 8


def test_a_round_ends_when_the_supervisor_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    supervisor, repository, stop = _supervisor(monkeypatch, steps_due=8, stopped=True)
    assert supervisor.compact() is False
    assert len(repository.calls) == 1 and len(stop.pauses) == 1
