"""R1 mode, R2 pins, R4/R5 deployment and protection, R9 fencing, R11 drift, CloudStack power mapping."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ha_service.domain.model import (
    NO_PRIORITY,
    RESTART_PRIORITY,
    DeploymentRequest,
    DriftResponse,
    Fencer,
    FencingSettings,
    HaConfig,
    HaMode,
    ModeReason,
    ModeSettings,
    NotificationKind,
    PoolHaFacts,
    PowerState,
    ProtectionStatus,
    Restarter,
    UnprotectedReason,
    VersionFacts,
    VersionSupport,
    VersionVerdict,
    VmType,
    WarningCode,
    XapiPowerState,
)
from ha_service.domain.policy import (
    backoff_delay,
    check_settings_update,
    cloudstack_power_state,
    decide_deployment,
    deployment_pins_cluster,
    drift_intent,
    effective_mode,
    effective_mode_for_cluster,
    fencing_policy,
    ha_config_drift,
    pool_ha_warnings,
    protection_retry,
    protection_status,
    restarter_for,
    unprotected_notification,
    validate_fencing_settings,
    validate_ha_order,
)
from ha_service.domain.versions import native_ha_supported

NATIVE, CS = HaMode.NATIVE, HaMode.CLOUDSTACK
SUPPORTED = native_ha_supported(VersionFacts("2", "15", "Citrix Hypervisor", "8.2.0"))
TOO_OLD = native_ha_supported(VersionFacts("1", "10", "XenServer", "6.1.0"))
UNKNOWN = native_ha_supported(None)
HEALTHY_POOL = PoolHaFacts(
    ha_enabled=True, ha_overcommitted=False, ha_host_failures_to_tolerate=1, ha_plan_exists_for=1
)


# --- power state ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xapi", "expected"),
    [
        ("Running", PowerState.PowerOn),
        ("Halted", PowerState.PowerOff),
        ("Paused", PowerState.PowerOff),
        ("Suspended", PowerState.PowerOff),
        ("running", PowerState.PowerOn),
        (XapiPowerState.Halted, PowerState.PowerOff),
        (XapiPowerState.Running, PowerState.PowerOn),
        ("Crashed", PowerState.PowerUnknown),
        ("", PowerState.PowerUnknown),
        (None, PowerState.PowerUnknown),
    ],
)
def test_cloudstack_power_state(xapi, expected):
    assert cloudstack_power_state(xapi) is expected


def test_power_mapping_never_reports_missing():
    assert all(cloudstack_power_state(s) is not PowerState.PowerReportMissing for s in XapiPowerState)


# --- R1 effective mode ------------------------------------------------------------------------------------------

OPT_MODES = [None, NATIVE, CS]


@pytest.mark.parametrize(
    ("version", "pinned", "override", "global_native"),
    list(itertools.product([SUPPORTED, TOO_OLD, UNKNOWN], OPT_MODES, OPT_MODES, [False, True])),
)
def test_effective_mode_exhaustive(version, pinned, override, global_native):
    res = effective_mode(version, pinned, override, global_native)
    assert res.detail
    if version is TOO_OLD:
        assert (res.mode, res.reason) == (CS, ModeReason.VERSION_GATE)
        return
    if pinned is not None:
        wanted, reason = pinned, ModeReason.PINNED
    elif override is not None:
        wanted, reason = override, ModeReason.CLUSTER_OVERRIDE
    else:
        wanted, reason = (NATIVE if global_native else CS), ModeReason.GLOBAL_SETTING
    if version is UNKNOWN and wanted is NATIVE:
        assert res.mode is None and res.unknown and res.reason is ModeReason.VERSION_UNKNOWN
    else:
        assert (res.mode, res.reason) == (wanted, reason)
        assert not res.unknown


def test_version_gate_beats_a_native_pin():
    res = effective_mode(TOO_OLD, NATIVE, NATIVE, True)
    assert (res.mode, res.reason) == (CS, ModeReason.VERSION_GATE)
    assert "6.2" in res.detail


def test_unknown_version_with_cloudstack_is_cloudstack():
    res = effective_mode(UNKNOWN, None, None, False)
    assert res.mode is CS and "unknown" in res.detail


def test_effective_mode_for_cluster_reads_pins_and_overrides():
    settings = ModeSettings(native_ha_enabled=True, cluster_overrides={"c2": CS})
    pins = {"c3": CS}
    assert effective_mode_for_cluster("c1", SUPPORTED, pins, settings).mode is NATIVE
    assert effective_mode_for_cluster("c2", SUPPORTED, pins, settings).reason is ModeReason.CLUSTER_OVERRIDE
    assert effective_mode_for_cluster("c3", SUPPORTED, pins, settings).reason is ModeReason.PINNED


# --- R2 pins ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vm_type", "ha", "pinned", "expected"),
    [(t, ha, p, t is VmType.User and ha and not p) for t in VmType for ha in (False, True) for p in (False, True)],
)
def test_deployment_pins_cluster(vm_type, ha, pinned, expected):
    assert deployment_pins_cluster(vm_type, ha, pinned) is expected


SETTINGS = [
    ModeSettings(g, o)
    for g in (False, True)
    for o in ({}, {"p": NATIVE}, {"p": CS}, {"u": NATIVE}, {"p": CS, "u": NATIVE})
]


@pytest.mark.parametrize(("current", "proposed", "pin"), list(itertools.product(SETTINGS, SETTINGS, [NATIVE, CS])))
def test_settings_update_flips_exactly_when_the_pinned_clusters_configured_mode_moves_off_its_pin(
    current, proposed, pin
):
    pins = {"p": pin}
    check = check_settings_update(current, proposed, pins)
    before, after = current.configured_mode("p"), proposed.configured_mode("p")
    flips = after != before and after is not pin
    assert check.allowed is (not flips)
    assert [c.cluster_id for c in check.conflicts] == (["p"] if flips else [])
    relaxed = check_settings_update(current, proposed, pins, apply_to_unpinned_only=True)
    assert relaxed.allowed
    assert relaxed.clusters_left_as_they_were == (("p",) if flips else ())
    assert check.clusters_left_as_they_were == ()


def test_refusal_names_every_pinned_cluster_and_says_what_to_do():
    pins = {"b": CS, "a": CS, "n": NATIVE}
    check = check_settings_update(ModeSettings(False), ModeSettings(True), pins)
    assert not check.allowed
    assert [c.cluster_id for c in check.conflicts] == ["a", "b"]
    assert all(c.configured_mode_after is NATIVE and c.pinned_mode is CS for c in check.conflicts)
    assert "a (pinned CLOUDSTACK)" in check.message and "migrat" in check.message
    assert "unpinned clusters only" in check.message


def test_global_change_spares_clusters_with_their_own_override():
    check = check_settings_update(ModeSettings(False, {"p": CS}), ModeSettings(True, {"p": CS}), {"p": CS})
    assert check.allowed and not check.conflicts


def test_version_gated_clusters_never_flip():
    check = check_settings_update(
        ModeSettings(False), ModeSettings(True), {"old": CS}, version_gated_clusters=frozenset({"old"})
    )
    assert check.allowed and not check.conflicts


def test_unchanged_settings_never_refused():
    s = ModeSettings(True, {"p": CS})
    assert check_settings_update(s, s, {"p": NATIVE, "q": CS}).allowed


# --- R4/R5 deployment -------------------------------------------------------------------------------------------

POOLS = [
    None,
    PoolHaFacts(False),
    HEALTHY_POOL,
    PoolHaFacts(True, True, 1, 1),
    PoolHaFacts(True, False, 2, 1),
    PoolHaFacts(True, True, 2, 0),
    PoolHaFacts(True, False, None, None),
    PoolHaFacts(True, False, 0, 0),
]


@pytest.mark.parametrize(
    ("mode", "vm_type", "ha", "pool", "redundant", "pinned"),
    list(itertools.product([NATIVE, CS], list(VmType), [False, True], POOLS, [False, True], [False, True])),
)
def test_decide_deployment_exhaustive(mode, vm_type, ha, pool, redundant, pinned):
    d = decide_deployment(DeploymentRequest(mode, vm_type, ha, pool, pinned, redundant, order=3, start_delay=7))
    codes = {w.code for w in d.warnings}
    assert d.mode is mode
    assert d.pins_cluster is (vm_type is VmType.User and ha and not pinned)
    if vm_type is not VmType.User:
        assert d.restarter is Restarter.CLOUDSTACK
        assert d.ha_config == HaConfig(NO_PRIORITY, 0, 0)
    elif not ha:
        assert d.restarter is Restarter.NONE
        assert d.ha_config == HaConfig(NO_PRIORITY, 0, 0)
    elif mode is NATIVE:
        assert d.restarter is Restarter.HYPERVISOR
        assert (d.ha_restart_priority, d.order, d.start_delay) == (RESTART_PRIORITY, 3, 7)
    else:
        assert d.restarter is Restarter.CLOUDSTACK
        assert d.ha_restart_priority == NO_PRIORITY
    pool_codes = {
        WarningCode.POOL_HA_DISABLED,
        WarningCode.POOL_HA_OVERCOMMITTED,
        WarningCode.NO_FAILOVER_PLAN,
        WarningCode.POOL_NOT_SYNCED,
    }
    if d.restarter is Restarter.HYPERVISOR:
        assert codes & pool_codes == {w.code for w in pool_ha_warnings(pool)}
    else:
        assert not codes & pool_codes
    vr_warned = vm_type is VmType.DomainRouter and mode is NATIVE and not redundant
    assert (WarningCode.REDUNDANT_VR_RECOMMENDED in codes) is vr_warned
    assert all(w.message for w in d.warnings)


@pytest.mark.parametrize(
    ("pool", "codes"),
    [
        (None, [WarningCode.POOL_NOT_SYNCED]),
        (PoolHaFacts(False, True, 2, 0), [WarningCode.POOL_HA_DISABLED]),  # other facts mean nothing with HA off
        (HEALTHY_POOL, []),
        (PoolHaFacts(True, True, 1, 1), [WarningCode.POOL_HA_OVERCOMMITTED]),
        (PoolHaFacts(True, False, 2, 1), [WarningCode.NO_FAILOVER_PLAN]),
        (PoolHaFacts(True, True, 3, 0), [WarningCode.POOL_HA_OVERCOMMITTED, WarningCode.NO_FAILOVER_PLAN]),
        (PoolHaFacts(True, False, 1, 2), []),
        (PoolHaFacts(True, False, None, 0), []),  # unknown: no guess
        (PoolHaFacts(True, False, 2, None), []),
    ],
)
def test_pool_ha_warnings(pool, codes):
    assert [w.code for w in pool_ha_warnings(pool)] == codes


@given(
    st.sampled_from(list(HaMode)),
    st.sampled_from([t for t in VmType if t is not VmType.User]),
    st.booleans(),
    st.sampled_from(POOLS),
    st.booleans(),
    st.integers(0, 100),
    st.integers(0, 600),
)
def test_system_vms_never_get_a_priority(mode, vm_type, ha, pool, redundant, order, delay):
    d = decide_deployment(DeploymentRequest(mode, vm_type, ha, pool, False, redundant, order, delay))
    assert d.ha_restart_priority == NO_PRIORITY
    assert d.restarter is Restarter.CLOUDSTACK
    assert not d.pins_cluster


@pytest.mark.parametrize(("mode", "vm_type", "ha"), list(itertools.product(list(HaMode), list(VmType), [False, True])))
def test_restarter_for(mode, vm_type, ha):
    r = restarter_for(mode, vm_type, ha)
    assert (r is Restarter.HYPERVISOR) == (mode is NATIVE and vm_type is VmType.User and ha)
    assert (r is Restarter.NONE) == (vm_type is VmType.User and not ha)


@pytest.mark.parametrize(("order", "delay", "problems"), [(0, 0, 0), (5, 10, 0), (-1, 0, 1), (0, -1, 1), (-1, -1, 2)])
def test_validate_ha_order(order, delay, problems):
    assert len(validate_ha_order(order, delay)) == problems


# --- R5 protection and retry ------------------------------------------------------------------------------------

RESTART = HaConfig(RESTART_PRIORITY)
NONE_CFG = HaConfig()


@pytest.mark.parametrize(
    ("decided", "observed", "pool", "refusal", "status", "reason"),
    [
        (NONE_CFG, NONE_CFG, HEALTHY_POOL, None, ProtectionStatus.NOT_APPLICABLE, None),
        (NONE_CFG, RESTART, HEALTHY_POOL, None, ProtectionStatus.NOT_APPLICABLE, None),
        (RESTART, RESTART, HEALTHY_POOL, None, ProtectionStatus.PROTECTED, None),
        (
            RESTART,
            NONE_CFG,
            HEALTHY_POOL,
            "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN",
            ProtectionStatus.UNPROTECTED,
            UnprotectedReason.HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN,
        ),
        (
            RESTART,
            NONE_CFG,
            HEALTHY_POOL,
            "INVALID_VALUE",
            ProtectionStatus.UNPROTECTED,
            UnprotectedReason.XAPI_REFUSED,
        ),
        (RESTART, NONE_CFG, HEALTHY_POOL, None, ProtectionStatus.UNPROTECTED, UnprotectedReason.HA_CONFIG_NOT_APPLIED),
        (RESTART, None, HEALTHY_POOL, None, ProtectionStatus.UNPROTECTED, UnprotectedReason.HA_CONFIG_NOT_APPLIED),
        (
            RESTART,
            HaConfig("best-effort"),
            HEALTHY_POOL,
            None,
            ProtectionStatus.UNPROTECTED,
            UnprotectedReason.HA_CONFIG_NOT_APPLIED,
        ),
        (RESTART, RESTART, PoolHaFacts(False), None, ProtectionStatus.UNPROTECTED, UnprotectedReason.POOL_HA_DISABLED),
        (RESTART, RESTART, None, None, ProtectionStatus.UNPROTECTED, UnprotectedReason.POOL_NOT_SYNCED),
    ],
)
def test_protection_status(decided, observed, pool, refusal, status, reason):
    p = protection_status(decided, observed, pool, refusal)
    assert (p.status, p.reason) == (status, reason)
    note = unprotected_notification("vm1", "c1", p)
    if status is ProtectionStatus.UNPROTECTED:
        assert note is not None and note.kind is NotificationKind.VM_UNPROTECTED and note.vm_uuid == "vm1"
    else:
        assert note is None


def test_backoff_grows_and_caps():
    delays = [backoff_delay(n) for n in range(0, 10)]
    assert delays[:4] == [0.0, 30.0, 60.0, 120.0]
    assert max(delays) == 600.0
    assert delays == sorted(delays)
    assert backoff_delay(10**6) == 600.0


def test_protection_retry():
    refused = protection_status(RESTART, NONE_CFG, HEALTHY_POOL, "HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN")
    assert protection_retry(refused, 0, None, now=100.0).retry_now
    decision = protection_retry(refused, 1, last_attempt_at=100.0, now=120.0)
    assert not decision.retry_now and decision.next_attempt_at == 130.0
    assert protection_retry(refused, 1, last_attempt_at=100.0, now=130.0).retry_now
    assert not protection_retry(refused, 3, last_attempt_at=100.0, now=200.0).retry_now  # 120 s after 3
    # Not fixable by retrying the VM: pool-level, or nothing to do.
    for p in (
        protection_status(RESTART, RESTART, PoolHaFacts(False), None),
        protection_status(RESTART, RESTART, HEALTHY_POOL, None),
        protection_status(NONE_CFG, NONE_CFG, HEALTHY_POOL, None),
    ):
        d = protection_retry(p, 5, 0.0, 10**9)
        assert not d.retry_now and d.next_attempt_at is None


# --- R11 drift --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decided", "observed", "fields"),
    [
        (RESTART, RESTART, None),
        (RESTART, NONE_CFG, ("ha_restart_priority",)),
        (RESTART, HaConfig("best-effort"), ("ha_restart_priority",)),
        (HaConfig(RESTART_PRIORITY, 1, 5), HaConfig(RESTART_PRIORITY, 2, 5), ("order",)),
        (
            HaConfig(RESTART_PRIORITY, 1, 5),
            HaConfig(NO_PRIORITY, 0, 0),
            ("ha_restart_priority", "order", "start_delay"),
        ),
        (NONE_CFG, RESTART, ("ha_restart_priority",)),
        (NONE_CFG, HaConfig(NO_PRIORITY, 4, 9), None),  # XAPI ignores order/delay without a priority
        (NONE_CFG, HaConfig(RESTART_PRIORITY, 4, 9), ("ha_restart_priority",)),
    ],
)
def test_ha_config_drift(decided, observed, fields):
    drift = ha_config_drift(decided, observed)
    if fields is None:
        assert drift is None
    else:
        assert drift is not None and drift.fields == fields
        assert (drift.expected, drift.observed) == (decided, observed)


def test_drift_intent_repair_and_report_only():
    drift = ha_config_drift(RESTART, NONE_CFG)
    assert drift is not None
    repair = drift_intent(drift, "vm1", "c1", repair_enabled=True)
    assert repair.response is DriftResponse.REPAIR and repair.apply == RESTART
    assert repair.notification.kind is NotificationKind.HA_CONFIG_DRIFT_REPAIRED
    report = drift_intent(drift, "vm1", "c1", repair_enabled=False)
    assert report.response is DriftResponse.REPORT_ONLY and report.apply is None
    assert report.notification.kind is NotificationKind.HA_CONFIG_DRIFT_DETECTED
    assert "'restart'" in report.notification.message


# --- R9 fencing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", POOLS)
def test_cloudstack_keeps_the_heartbeat(pool):
    f = fencing_policy(CS, pool, FencingSettings(30, 90))
    assert f.storage_heartbeat_enabled and f.fenced_by is Fencer.STORAGE_HEARTBEAT
    assert (f.heartbeat_interval_seconds, f.heartbeat_timeout_seconds) == (30, 90)
    assert not f.unfenced and f.notification is None


def test_heartbeat_defaults_are_cloudstacks():
    f = fencing_policy(CS, None)
    assert (f.heartbeat_interval_seconds, f.heartbeat_timeout_seconds) == (60, 120)


@pytest.mark.parametrize(
    ("pool", "fenced_by", "unfenced", "codes"),
    [
        (HEALTHY_POOL, Fencer.XENSERVER_HA, False, []),
        (PoolHaFacts(True, True, 2, 0), Fencer.XENSERVER_HA, False, []),
        (PoolHaFacts(False), Fencer.NONE, True, [WarningCode.POOL_UNFENCED]),
        (None, Fencer.XENSERVER_HA, False, [WarningCode.POOL_NOT_SYNCED]),
    ],
)
def test_native_retires_the_heartbeat(pool, fenced_by, unfenced, codes):
    f = fencing_policy(NATIVE, pool, cluster_id="c9")
    assert not f.storage_heartbeat_enabled and f.heartbeat_interval_seconds is None
    assert (f.fenced_by, f.unfenced, [w.code for w in f.warnings]) == (fenced_by, unfenced, codes)
    if unfenced:
        assert f.notification is not None and f.notification.kind is NotificationKind.POOL_UNFENCED
        assert f.notification.cluster_id == "c9"
    else:
        assert f.notification is None


@pytest.mark.parametrize(
    ("interval", "timeout", "ok"), [(60, 120, True), (0, 120, False), (60, 60, False), (5, 6, True)]
)
def test_validate_fencing_settings(interval, timeout, ok):
    assert (validate_fencing_settings(FencingSettings(interval, timeout)) == []) is ok


def test_verdict_support_values_cover_the_gate():
    assert {SUPPORTED.support, TOO_OLD.support, UNKNOWN.support} == set(VersionSupport)
    assert isinstance(SUPPORTED, VersionVerdict)
