"""ha_service's HA settings (the GlobalSettings of the contract) as plain data, with defaults and validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ha_service.domain.model import FencingSettings, HaMode, ModeSettings

DRIFT_REPAIR = "REPAIR"
DRIFT_REPORT_ONLY = "REPORT_ONLY"
DRIFT_REPAIR_MODES = (DRIFT_REPAIR, DRIFT_REPORT_ONLY)

# Bounds of every duration setting: long enough to mean something, short enough to be a grace period.
MIN_DURATION_SECONDS = 1.0
MAX_DURATION_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True)
class HaSettings:
    """xenserver.native.ha.enabled and the other global settings (seconds for durations)."""

    native_ha_enabled: bool = False
    drift_repair_mode: str = DRIFT_REPAIR
    restart_overdue_grace: float = 120.0
    agent_disconnected_grace: float = 120.0
    heartbeat_interval: float = 60.0  # xenserver.heartbeat.interval
    heartbeat_timeout: float = 120.0  # xenserver.heartbeat.timeout
    unprotected_retry_interval: float = 60.0

    def with_changes(self, **changes: object) -> HaSettings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def drift_repair_enabled(self) -> bool:
        return self.drift_repair_mode == DRIFT_REPAIR

    def fencing(self) -> FencingSettings:
        return FencingSettings(round(self.heartbeat_interval), round(self.heartbeat_timeout))


DURATION_FIELDS = (
    "restart_overdue_grace",
    "agent_disconnected_grace",
    "heartbeat_interval",
    "heartbeat_timeout",
    "unprotected_retry_interval",
)


def settings_problems(settings: HaSettings) -> list[tuple[str, str]]:
    """(field, what to do) for every value out of range."""
    problems: list[tuple[str, str]] = []
    for name in DURATION_FIELDS:
        value = float(getattr(settings, name))
        if not MIN_DURATION_SECONDS <= value <= MAX_DURATION_SECONDS:
            problems.append(
                (name, f"must be between {MIN_DURATION_SECONDS:g} s and {MAX_DURATION_SECONDS:g} s, got {value:g} s")
            )
    if settings.heartbeat_timeout <= settings.heartbeat_interval:
        problems.append(
            ("heartbeat_timeout", "xenserver.heartbeat.timeout must be longer than xenserver.heartbeat.interval")
        )
    if settings.drift_repair_mode not in DRIFT_REPAIR_MODES:
        problems.append(("drift_repair_mode", f"must be one of {', '.join(DRIFT_REPAIR_MODES)}"))
    return problems


def mode_settings(settings: HaSettings, overrides: Mapping[str, bool]) -> ModeSettings:
    return ModeSettings(
        native_ha_enabled=settings.native_ha_enabled,
        cluster_overrides={
            cluster: HaMode.NATIVE if native else HaMode.CLOUDSTACK for cluster, native in overrides.items()
        },
    )
