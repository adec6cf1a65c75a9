"""ha_service's Prometheus metrics: actions, decisions, notifications, controller lag."""

from __future__ import annotations

from xsha_common.metrics import MetricsRegistry


class HaMetrics:
    def __init__(self, registry: MetricsRegistry | None = None) -> None:
        self.registry = registry or MetricsRegistry()
        self.actions = self.registry.counter("ha_actions_emitted", "HA actions emitted, by kind.", ("kind",))
        self.decisions = self.registry.counter("ha_decisions", "VM deployment decisions made, by mode.", ("mode",))
        self.notifications = self.registry.counter(
            "ha_notifications_emitted", "HA notifications emitted, by kind.", ("kind",)
        )
        self.controller_lag = self.registry.gauge(
            "ha_controller_lag_seconds", "Age of the last mirror change the controller processed, at processing."
        )
        self.controller_revision = self.registry.gauge(
            "ha_controller_sync_revision", "Last sync_service revision the controller processed."
        )
        self.controller_connected = self.registry.gauge(
            "ha_controller_connected", "1 while the controller's watch on sync_service is open."
        )
        self.controller_active = self.registry.gauge(
            "ha_controller_active", "1 on the replica whose controller holds the controller lease."
        )
        self.ha_config_writes = self.registry.counter(
            "ha_config_writes", "SetVmHaConfig calls made by the controller, by outcome.", ("outcome",)
        )
