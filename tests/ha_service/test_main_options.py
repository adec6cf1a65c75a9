"""ha_service's settings reach the controller: the tick and the full-resync intervals, defaults and bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from ha_service.__main__ import options_from


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--database-url", f"sqlite:///{tmp_path / 'ha.sqlite'}", "--auth-tokens", "options-test-token", *extra]


def test_the_controller_intervals_default_to_one_and_thirty_seconds(tmp_path: Path) -> None:
    options, *_ = options_from(_args(tmp_path))
    assert options.controller.tick_interval == 1.0
    assert options.controller.full_resync_interval == 30.0


def test_the_full_resync_interval_is_an_operator_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options, *_ = options_from(
        _args(tmp_path, "--controller-full-resync-interval", "5", "--controller-tick-interval", "0.5")
    )
    assert (options.controller.full_resync_interval, options.controller.tick_interval) == (5.0, 0.5)
    monkeypatch.setenv("XSHA_HA_CONTROLLER_FULL_RESYNC_INTERVAL", "120")
    options, *_ = options_from(_args(tmp_path))
    assert options.controller.full_resync_interval == 120.0


@pytest.mark.parametrize("value", ["0.5", "7200", "soon"])
def test_a_full_resync_interval_out_of_range_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as refused:
        options_from(_args(tmp_path, "--controller-full-resync-interval", value))
    assert refused.value.code == 2
    assert "controller_full_resync_interval" in capsys.readouterr().err
