"""Plain data of ha_service's policy: enums with CloudStack's names and frozen records.

Nothing here does I/O. Times are seconds (float, any epoch the caller likes, as long as it is the same one for
every value passed to one function call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

# XAPI's values for VM.ha_restart_priority. "best-effort" is never decided by xsha, only observed.
RESTART_PRIORITY = "restart"
BEST_EFFORT_PRIORITY = "best-effort"
NO_PRIORITY = ""


class HaMode(StrEnum):
    CLOUDSTACK = "CLOUDSTACK"
    NATIVE = "NATIVE"


class VmType(StrEnum):
    User = "User"
    DomainRouter = "DomainRouter"
    ConsoleProxy = "ConsoleProxy"
    SecondaryStorageVm = "SecondaryStorageVm"
    ElasticIpVm = "ElasticIpVm"
    ElasticLoadBalancerVm = "ElasticLoadBalancerVm"
    InternalLoadBalancerVm = "InternalLoadBalancerVm"
    NetScalerVm = "NetScalerVm"

    @property
    def is_system(self) -> bool:
        return self is not VmType.User


# System VMs whose liveness CloudStack's capacity scan guarantees (restart, recreate; CLOUDSTACK-5247 adds replace).
CAPACITY_SCANNED_SYSTEM_VMS = frozenset({VmType.ConsoleProxy, VmType.SecondaryStorageVm})


class PowerState(StrEnum):
    """CloudStack's vm_instance.power_state."""

    PowerOn = "PowerOn"
    PowerOff = "PowerOff"
    PowerUnknown = "PowerUnknown"
    PowerReportMissing = "PowerReportMissing"


class XapiPowerState(StrEnum):
    Halted = "Halted"
    Paused = "Paused"
    Running = "Running"
    Suspended = "Suspended"

    @classmethod
    def parse(cls, value: str | None) -> XapiPowerState | None:
        """XAPI's value (case-insensitive, since some clients lower-case enums); None when not a power state."""
        if value is None:
            return None
        wanted = value.strip().lower()
        for member in cls:
            if member.value.lower() == wanted:
                return member
        return None


class AgentStatus(StrEnum):
    Up = "Up"
    Down = "Down"
    Disconnected = "Disconnected"
    Alert = "Alert"
    Connecting = "Connecting"


class Restarter(StrEnum):
    """Who restarts a VM when it goes down."""

    HYPERVISOR = "HYPERVISOR"
    CLOUDSTACK = "CLOUDSTACK"
    NONE = "NONE"


class WantedState(StrEnum):
    """What the orchestrator told ha_service about a VM (the analogue of CloudStack's pending-job check)."""

    RUNNING = "RUNNING"
    STOPPED_ON_PURPOSE = "STOPPED_ON_PURPOSE"
    UNKNOWN = "UNKNOWN"


class WarningCode(StrEnum):
    POOL_HA_DISABLED = "POOL_HA_DISABLED"
    POOL_HA_OVERCOMMITTED = "POOL_HA_OVERCOMMITTED"
    NO_FAILOVER_PLAN = "NO_FAILOVER_PLAN"
    POOL_NOT_SYNCED = "POOL_NOT_SYNCED"
    REDUNDANT_VR_RECOMMENDED = "REDUNDANT_VR_RECOMMENDED"
    POOL_UNFENCED = "POOL_UNFENCED"
    VM_UNPROTECTED = "VM_UNPROTECTED"
    VERSION_CROSS_CHECK_SKIPPED = "VERSION_CROSS_CHECK_SKIPPED"


@dataclass(frozen=True)
class HaWarning:
    code: WarningCode
    message: str


class ActionKind(StrEnum):
    RESTART_VM = "RESTART_VM"
    RESTART_SYSTEM_VM = "RESTART_SYSTEM_VM"
    RECREATE_SYSTEM_VM = "RECREATE_SYSTEM_VM"
    REPLACE_SYSTEM_VM = "REPLACE_SYSTEM_VM"


class ActionCause(StrEnum):
    HALTED = "HALTED"
    # xapi leaves a dead host's VMs "Running" without pool HA: the orchestrator must fence the host and reset the
    # VM's power state before restarting it, or the VM could run twice on shared storage.
    HOST_DEAD_STILL_RUNNING = "HOST_DEAD_STILL_RUNNING"
    GONE_FROM_HYPERVISOR = "GONE_FROM_HYPERVISOR"
    AGENT_DISCONNECTED = "AGENT_DISCONNECTED"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    vm_uuid: str
    cause: ActionCause
    message: str
    host_uuid: str | None = None  # the host to fence for HOST_DEAD_STILL_RUNNING, else where the VM was seen

    @property
    def needs_fencing(self) -> bool:
        return self.cause is ActionCause.HOST_DEAD_STILL_RUNNING


class NotificationKind(StrEnum):
    VM_RESTARTED_BY_HYPERVISOR = "VM_RESTARTED_BY_HYPERVISOR"
    HA_RESTART_OVERDUE = "HA_RESTART_OVERDUE"
    POOL_UNFENCED = "POOL_UNFENCED"
    HA_CONFIG_DRIFT_REPAIRED = "HA_CONFIG_DRIFT_REPAIRED"
    HA_CONFIG_DRIFT_DETECTED = "HA_CONFIG_DRIFT_DETECTED"
    VM_UNPROTECTED = "VM_UNPROTECTED"


@dataclass(frozen=True)
class Notification:
    kind: NotificationKind
    message: str
    vm_uuid: str | None = None
    cluster_id: str | None = None
    old_host_uuid: str | None = None
    new_host_uuid: str | None = None
    downtime_seconds: float | None = None


class ModeReason(StrEnum):
    VERSION_GATE = "VERSION_GATE"
    PINNED = "PINNED"
    CLUSTER_OVERRIDE = "CLUSTER_OVERRIDE"
    GLOBAL_SETTING = "GLOBAL_SETTING"
    VERSION_UNKNOWN = "VERSION_UNKNOWN"


class VersionSupport(StrEnum):
    SUPPORTED = "SUPPORTED"
    UNSUPPORTED = "UNSUPPORTED"
    UNKNOWN = "UNKNOWN"


class ProtectionStatus(StrEnum):
    PROTECTED = "PROTECTED"
    UNPROTECTED = "UNPROTECTED"
    NOT_APPLICABLE = "NOT_APPLICABLE"


class UnprotectedReason(StrEnum):
    # XAPI refused "restart" because the pool's failover plan would break (also how a non-agile VM fails).
    HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN = "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN"
    XAPI_REFUSED = "XAPI_REFUSED"  # any other XAPI error on set_ha_restart_priority
    HA_CONFIG_NOT_APPLIED = "HA_CONFIG_NOT_APPLIED"  # decided "restart", hypervisor does not (yet) say so
    POOL_HA_DISABLED = "POOL_HA_DISABLED"  # priority set, but the pool has no HA to honour it
    POOL_NOT_SYNCED = "POOL_NOT_SYNCED"


@dataclass(frozen=True)
class VersionFacts:
    """What the pool master reports (host.API_version_major/minor, software_version keys); any may be missing.

    API versions are accepted as XAPI sends them (strings) or as ints.
    """

    api_version_major: int | str | None = None
    api_version_minor: int | str | None = None
    product_brand: str | None = None
    product_version: str | None = None


@dataclass(frozen=True)
class VersionVerdict:
    support: VersionSupport
    reason: str
    api_version: tuple[int, int] | None = None
    warnings: tuple[HaWarning, ...] = ()

    @property
    def supported(self) -> bool:
        return self.support is VersionSupport.SUPPORTED

    @property
    def unknown(self) -> bool:
        return self.support is VersionSupport.UNKNOWN


@dataclass(frozen=True)
class ModeResolution:
    """A cluster's effective mode and why. mode is None only with reason VERSION_UNKNOWN (-> FAILED_PRECONDITION)."""

    mode: HaMode | None
    reason: ModeReason
    detail: str

    @property
    def unknown(self) -> bool:
        return self.mode is None


@dataclass(frozen=True)
class ModeSettings:
    """xenserver.native.ha.enabled and the per-cluster overrides (cluster id -> mode)."""

    native_ha_enabled: bool = False
    cluster_overrides: Mapping[str, HaMode] = field(default_factory=dict)

    def configured_mode(self, cluster_id: str) -> HaMode:
        """The mode the settings give a cluster, before the version gate and pins."""
        override = self.cluster_overrides.get(cluster_id)
        if override is not None:
            return override
        return HaMode.NATIVE if self.native_ha_enabled else HaMode.CLOUDSTACK


@dataclass(frozen=True)
class PinConflict:
    cluster_id: str
    pinned_mode: HaMode
    configured_mode_after: HaMode


@dataclass(frozen=True)
class SettingsUpdateCheck:
    """Outcome of checking a settings update against the pins (R2).

    allowed False -> refuse with FAILED_PRECONDITION / HA_MODE_PINNED naming `conflicts`. allowed True with
    conflicts (apply-to-unpinned-only) -> those clusters keep their pinned mode; report them as left as they were.
    """

    allowed: bool
    conflicts: tuple[PinConflict, ...]
    message: str

    @property
    def clusters_left_as_they_were(self) -> tuple[str, ...]:
        return tuple(c.cluster_id for c in self.conflicts) if self.allowed else ()


@dataclass(frozen=True)
class PoolHaFacts:
    """Pool HA facts as the mirror reports them; None values mean XAPI did not say (or the field was garbage)."""

    ha_enabled: bool
    ha_overcommitted: bool = False
    ha_host_failures_to_tolerate: int | None = None
    ha_plan_exists_for: int | None = None


@dataclass(frozen=True)
class HaConfig:
    """A VM's HA config in XAPI's terms."""

    ha_restart_priority: str = NO_PRIORITY
    order: int = 0
    start_delay: int = 0


@dataclass(frozen=True)
class DeploymentRequest:
    mode: HaMode  # the cluster's effective mode (resolve it first; an unknown mode never gets here)
    vm_type: VmType
    offering_ha: bool
    pool_ha: PoolHaFacts | None  # None: pool not synced
    cluster_pinned: bool = False
    redundant_router: bool = False  # DomainRouter only
    order: int = 0
    start_delay: int = 0


@dataclass(frozen=True)
class DeploymentDecision:
    mode: HaMode
    ha_config: HaConfig
    restarter: Restarter
    warnings: tuple[HaWarning, ...]
    pins_cluster: bool  # the caller pins the cluster to `mode` (atomically) when True

    @property
    def ha_restart_priority(self) -> str:
        return self.ha_config.ha_restart_priority

    @property
    def order(self) -> int:
        return self.ha_config.order

    @property
    def start_delay(self) -> int:
        return self.ha_config.start_delay


@dataclass(frozen=True)
class Protection:
    status: ProtectionStatus
    reason: UnprotectedReason | None = None
    detail: str = ""


class DriftResponse(StrEnum):
    REPAIR = "REPAIR"
    REPORT_ONLY = "REPORT_ONLY"


@dataclass(frozen=True)
class RetryBackoff:
    initial_seconds: float = 30.0
    factor: float = 2.0
    max_seconds: float = 600.0


@dataclass(frozen=True)
class RetryDecision:
    retry_now: bool
    next_attempt_at: float | None  # None: nothing to retry


@dataclass(frozen=True)
class HaConfigDrift:
    expected: HaConfig
    observed: HaConfig
    fields: tuple[str, ...]  # names of HaConfig fields that differ


@dataclass(frozen=True)
class DriftIntent:
    response: DriftResponse
    drift: HaConfigDrift
    apply: HaConfig | None  # SetVmHaConfig payload when repairing
    notification: Notification  # REPAIRED: emit once the repair succeeded; DETECTED: emit now


class Fencer(StrEnum):
    XENSERVER_HA = "XENSERVER_HA"
    STORAGE_HEARTBEAT = "STORAGE_HEARTBEAT"
    NONE = "NONE"


@dataclass(frozen=True)
class FencingSettings:
    heartbeat_interval_seconds: int = 60  # xenserver.heartbeat.interval
    heartbeat_timeout_seconds: int = 120  # xenserver.heartbeat.timeout


@dataclass(frozen=True)
class FencingPolicy:
    mode: HaMode
    storage_heartbeat_enabled: bool
    heartbeat_interval_seconds: int | None
    heartbeat_timeout_seconds: int | None
    fenced_by: Fencer
    unfenced: bool
    warnings: tuple[HaWarning, ...] = ()
    notification: Notification | None = None  # POOL_UNFENCED alert


# --- reconcile (R7) inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManagedVm:
    vm_uuid: str
    cluster_id: str
    vm_type: VmType
    ha_enabled: bool
    mode: HaMode  # effective mode of its cluster
    wanted: WantedState
    decided: HaConfig
    redundant_router: bool = False
    # Set while XAPI refuses the decided priority (R5): the missing "restart" is then not drift but a retry.
    unprotected_reason: UnprotectedReason | None = None
    # The hypervisor has reported the decided config (R11): until then a difference is the decision not yet
    # applied (first application, silent), not drift.
    config_confirmed: bool = True


@dataclass(frozen=True)
class VmObservation:
    """One mirror view of a VM."""

    at: float
    present: bool = True
    power_state: XapiPowerState | None = None
    resident_host: str | None = None
    ha: HaConfig | None = None


@dataclass(frozen=True)
class HostView:
    live: bool
    since: float | None = None  # when the mirror saw liveness change to the current value


@dataclass(frozen=True)
class AgentState:
    status: AgentStatus
    since: float


@dataclass(frozen=True)
class PendingAction:
    kind: ActionKind
    cause: ActionCause


@dataclass(frozen=True)
class GracePeriods:
    ha_restart_overdue_seconds: float = 300.0
    agent_disconnected_seconds: float = 300.0  # 2 x ping.interval * ping.timeout (150 s)
    # How far apart the mirror may report a host's death and its VMs' reset (event.from batches are unordered):
    # a host death later than this after an outage began is not that outage's cause.
    event_skew_seconds: float = 60.0


@dataclass(frozen=True)
class VmMemory:
    """What the controller keeps per managed VM between reconcile calls (returned updated by reconcile_vm)."""

    last: VmObservation | None = None
    last_running_host: str | None = None
    down_since: float | None = None  # start of the current unplanned outage (Halted seen or host death)
    host_failed: bool = False  # the current outage began with the VM's host dying
    actions_requested: frozenset[ActionKind] = frozenset()  # in the current outage: one action of each kind
    overdue_notified: bool = False
    drift_reported: HaConfig | None = None  # observed config already notified as drift


@dataclass(frozen=True)
class ReconcileInput:
    vm: ManagedVm
    current: VmObservation
    now: float
    memory: VmMemory = VmMemory()
    hosts: Mapping[str, HostView] = field(default_factory=dict)  # at least the current and last-running hosts
    agent: AgentState | None = None  # system VMs
    pending_actions: tuple[PendingAction, ...] = ()
    grace: GracePeriods = GracePeriods()
    cluster_migrating: bool = False
    drift_repair_enabled: bool = True
    # Pool HA on: XenServer fences a dead host and XAPI halts its VMs itself (no power-state reset needed).
    pool_ha_enabled: bool = False


@dataclass(frozen=True)
class ReconcileResult:
    owner: Restarter
    actions: tuple[Action, ...]
    notifications: tuple[Notification, ...]
    drift: DriftIntent | None
    memory: VmMemory
