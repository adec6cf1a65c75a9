"""ha_service's tables. Times are epoch seconds (double): portable across SQLite, MariaDB and PostgreSQL.

Every table is prefixed ``ha_`` so both services can share one database; the Alembic version table is
``alembic_version_ha``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from xsha_common.db import make_metadata

VERSION_TABLE = "alembic_version_ha"
SETTINGS_ROW_ID = 1
EVENT_REVISION_COUNTER = "ha_event_revision"
EVENT_FLOOR_COUNTER = "ha_event_floor"  # events with a revision <= floor are no longer retained
CONTROLLER_NAME = "controller"

# Column sizes. CloudStack's instance names are short ("i-2-10-VM", "r-4-VM"); cluster ids are numbers or uuids.
CLUSTER_ID_LENGTH = 64
INSTANCE_NAME_LENGTH = 255
UUID_LENGTH = 64
REQUEST_ID_LENGTH = 128


class Base(DeclarativeBase):
    metadata = make_metadata()


class SettingsRow(Base):
    """The global settings: one row (id 1), versioned for optimistic concurrency (expected_version)."""

    __tablename__ = "ha_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    native_ha_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    drift_repair_mode: Mapped[str] = mapped_column(String(32), nullable=False)
    restart_overdue_grace_s: Mapped[float] = mapped_column(Double, nullable=False)
    agent_disconnected_grace_s: Mapped[float] = mapped_column(Double, nullable=False)
    heartbeat_interval_s: Mapped[float] = mapped_column(Double, nullable=False)
    heartbeat_timeout_s: Mapped[float] = mapped_column(Double, nullable=False)
    unprotected_retry_interval_s: Mapped[float] = mapped_column(Double, nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)


class ClusterOverrideRow(Base):
    """A cluster-scoped value of xenserver.native.ha.enabled."""

    __tablename__ = "ha_cluster_overrides"

    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), primary_key=True)
    native_ha_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)


class ClusterPinRow(Base):
    """A cluster's pinned mode (R2). The primary key makes pinning race-free: the first INSERT wins.

    A migration takes the pin over by updating `mode`, `pinned_by` and `migration_id` (later issue).
    """

    __tablename__ = "ha_cluster_pins"

    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16), nullable=False)
    pinned_by: Mapped[str] = mapped_column(String(INSTANCE_NAME_LENGTH), nullable=False)
    pin_time: Mapped[float] = mapped_column(Double, nullable=False)
    migration_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ClusterStateRow(Base):
    """Per-cluster controller memory (alerts already raised)."""

    __tablename__ = "ha_cluster_state"

    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), primary_key=True)
    unfenced_notified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)


class ManagedVmRow(Base):
    """A VM ha_service decided: its decision, what the orchestrator wants, and what the controller last saw."""

    __tablename__ = "ha_managed_vms"
    __table_args__ = (
        UniqueConstraint("cluster_id", "instance_name"),
        Index("ix_ha_managed_vms_vm_uuid", "vm_uuid"),
        Index("ix_ha_managed_vms_cluster_id_protection_state", "cluster_id", "protection_state"),
        # The controller's tick finds the few rows it must look at again through these, not by reading every row.
        Index("ix_ha_managed_vms_down_since", "down_since"),
        Index("ix_ha_managed_vms_agent_status", "agent_status", "agent_status_time"),
        Index("ix_ha_managed_vms_present_protection", "present", "protection_state", "config_confirmed"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), nullable=False)
    instance_name: Mapped[str] = mapped_column(String(INSTANCE_NAME_LENGTH), nullable=False)
    vm_uuid: Mapped[str | None] = mapped_column(String(UUID_LENGTH), nullable=True)
    vm_type: Mapped[str] = mapped_column(String(32), nullable=False)
    offering_ha_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    redundant_router: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # The decision (R4).
    mode: Mapped[str] = mapped_column(String(16), nullable=False)
    ha_restart_priority: Mapped[str] = mapped_column(String(16), nullable=False)
    ha_order: Mapped[int] = mapped_column(BigInteger, nullable=False)
    start_delay_s: Mapped[int] = mapped_column(BigInteger, nullable=False)
    restarter: Mapped[str] = mapped_column(String(16), nullable=False)
    warnings_json: Mapped[str] = mapped_column(Text, nullable=False)
    pinned_cluster: Mapped[bool] = mapped_column(Boolean, nullable=False)
    decide_time: Mapped[float] = mapped_column(Double, nullable=False)
    decision_request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), nullable=True)
    # The orchestrator's view.
    wanted_state: Mapped[str] = mapped_column(String(16), nullable=False)
    agent_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    agent_status_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    agent_replace_emitted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Protection (R5) and config sync (R11).
    protection_state: Mapped[str] = mapped_column(String(16), nullable=False)
    unprotected_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    config_confirmed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    protection_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_protection_attempt: Mapped[float | None] = mapped_column(Double, nullable=True)
    drift_reported: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    # Last observation from the mirror (R7 transitions).
    observed_revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    present: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    ever_present: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    observed_power_state: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    observed_host_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), nullable=False, default="")
    observed_priority: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    observed_order: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    observed_start_delay_s: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    observed_since: Mapped[float | None] = mapped_column(Double, nullable=True)
    last_running_host_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), nullable=False, default="")
    # Seen Running at least once: before that a Halted VM is being deployed, not down.
    was_running: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # The controller's memory of the current unplanned outage (domain VmMemory): since when, whether it began with
    # the host dying, which action kinds it already asked for (comma-separated), overdue alert sent.
    down_since: Mapped[float | None] = mapped_column(Double, nullable=True)
    host_failed: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    actions_requested: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    overdue_notified: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)


class RequestRow(Base):
    """Answers of mutations by request id (idempotent retry): the serialized response proto."""

    __tablename__ = "ha_requests"

    method: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(REQUEST_ID_LENGTH), primary_key=True)
    response: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    create_time: Mapped[float] = mapped_column(Double, nullable=False)


class HaEventRow(Base):
    """HA actions and notifications, by revision (one counter, committed in revision order).

    `pending_key` is set while an action is pending ("cluster/instance/KIND") and unique, so at most one pending
    action per VM and kind can exist whatever races; NULLs do not collide on any of the three backends.
    """

    __tablename__ = "ha_events"
    __table_args__ = (
        UniqueConstraint("event_id"),
        UniqueConstraint("pending_key"),
        Index("ix_ha_events_cluster_id_revision", "cluster_id", "revision"),
        # Pages of actions in revision order, all of them or those in one state (pending ones above all).
        Index("ix_ha_events_category_revision", "category", "revision"),
        Index("ix_ha_events_category_state_revision", "category", "action_state", "revision"),
        Index("ix_ha_events_ack_time", "ack_time"),
    )

    revision: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False)
    category: Mapped[str] = mapped_column(String(16), nullable=False)  # ACTION | NOTIFICATION
    kind: Mapped[str] = mapped_column(String(48), nullable=False)
    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), nullable=False)
    instance_name: Mapped[str] = mapped_column(String(INSTANCE_NAME_LENGTH), nullable=False, default="")
    vm_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), nullable=False, default="")
    action_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    pending_key: Mapped[str | None] = mapped_column(String(400), nullable=True)
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # serialized HaAction / HaNotification
    create_time: Mapped[float] = mapped_column(Double, nullable=False)
    ack_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    ack_message: Mapped[str] = mapped_column(Text, nullable=False, default="")


class CounterRow(Base):
    """Named counters, incremented with UPDATE ... SET value = value + n inside the writing transaction."""

    __tablename__ = "ha_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ControllerStateRow(Base):
    """The controller's progress through sync_service's change stream; lease columns for single-active later."""

    __tablename__ = "ha_controller_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    sync_revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    holder: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    lease_expire_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    fencing_token: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)


# --- R8 migrations between HA modes ------------------------------------------------------------------------------


class MigrationRow(Base):
    """A planned (and maybe applied) move of a cluster between HA modes. `id` orders ListMigrations pages."""

    __tablename__ = "ha_migrations"
    __table_args__ = (
        UniqueConstraint("migration_id"),
        UniqueConstraint("plan_request_id"),
        Index("ix_ha_migrations_cluster_id_state", "cluster_id", "state"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    migration_id: Mapped[str] = mapped_column(String(64), nullable=False)
    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), nullable=False)
    source_mode: Mapped[str] = mapped_column(String(16), nullable=False)  # "" when the version was unknown
    target_mode: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # PLANNED BLOCKED APPLYING SUCCEEDED FAILED
    mirror_revision: Mapped[int] = mapped_column(BigInteger, nullable=False)
    problems_json: Mapped[str] = mapped_column(Text, nullable=False)
    plan_request_id: Mapped[str | None] = mapped_column(String(REQUEST_ID_LENGTH), nullable=True)
    # The cluster's last SUCCEEDED migration when planned: another one since makes the plan stale.
    base_migration_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time: Mapped[float] = mapped_column(Double, nullable=False)
    start_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    finish_time: Mapped[float | None] = mapped_column(Double, nullable=True)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)


class MigrationStepRow(Base):
    """One step of a migration; its state is committed with the step's result (APPLYING = about to call XAPI)."""

    __tablename__ = "ha_migration_steps"

    migration_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)  # SET_VM_HA_PRIORITY CHANGE_HOST_FENCING PIN_MODE
    instance_name: Mapped[str] = mapped_column(String(INSTANCE_NAME_LENGTH), nullable=False, default="")
    vm_uuid: Mapped[str] = mapped_column(String(UUID_LENGTH), nullable=False, default="")
    from_priority: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    to_priority: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    to_order: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    to_start_delay_s: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    state: Mapped[str] = mapped_column(String(16), nullable=False)  # PENDING APPLYING SUCCEEDED SKIPPED FAILED
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    added_at_apply: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    finish_time: Mapped[float | None] = mapped_column(Double, nullable=True)


class MigrationLeaseRow(Base):
    """Who is applying a migration on a cluster, until when: one apply per cluster across replicas.

    Taken and renewed under a row lock (SELECT ... FOR UPDATE; BEGIN IMMEDIATE on SQLite); `token` grows with every
    new holder, and each step's commit checks holder and token, so an apply whose lease was taken over stops.
    """

    __tablename__ = "ha_migration_leases"

    cluster_id: Mapped[str] = mapped_column(String(CLUSTER_ID_LENGTH), primary_key=True)
    migration_id: Mapped[str] = mapped_column(String(64), nullable=False)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    token: Mapped[int] = mapped_column(BigInteger, nullable=False)
    expire_time: Mapped[float] = mapped_column(Double, nullable=False)
    update_time: Mapped[float] = mapped_column(Double, nullable=False)
