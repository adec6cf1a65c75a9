"""Every `xsha` command against running services (xapi_sim, sync_service, ha_service), in the order an operator
would use them: look around, change settings, decide deployments, crash hosts and follow what happens."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli.conftest import NATIVE_CLUSTER, OLD_CLUSTER, TOKEN, CliProcess, Services
from xsha_cli import client as cli_client
from xsha_common.testing import wait_until

pytestmark = pytest.mark.timeout(120)


def as_json(services: Services, command: str) -> object:
    result = services.xsha(f"-o json {command}")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: object) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("xsha: ")
    return lines[0]


# --- looking around -------------------------------------------------------------------------------------------------


def test_health_reports_both_services_serving(services: Services) -> None:
    result = services.xsha("health")
    assert result.exit_code == 0, result.stderr
    assert "ha_service" in result.stdout and "sync_service" in result.stdout
    assert result.stdout.count("SERVING") == 2


def test_clusters_status_shows_each_cluster_mode_and_why(services: Services) -> None:
    result = services.xsha("clusters status")
    assert result.exit_code == 0, result.stderr
    assert NATIVE_CLUSTER in result.stdout and OLD_CLUSTER in result.stdout
    assert "VERSION_GATE" in result.stdout

    statuses = as_json(services, "clusters status")
    assert isinstance(statuses, list)
    by_cluster = {status["cluster_id"]: status for status in statuses}
    assert by_cluster[OLD_CLUSTER]["mode_reason"] == "MODE_REASON_VERSION_GATE"
    assert by_cluster[NATIVE_CLUSTER]["pool_ha"]["ha_enabled"] is True

    detail = services.xsha(f"clusters status {OLD_CLUSTER}")
    assert detail.exit_code == 0
    assert "effective mode" in detail.stdout and "CLOUDSTACK" in detail.stdout


def test_unknown_cluster_is_one_line_error_with_reason_and_exit_code_1(services: Services) -> None:
    result = services.xsha("pools get no-such-cluster")
    assert result.exit_code == cli_client.ExitCode.RPC_ERROR
    line = one_line_error(result)
    assert "NOT_FOUND" in line and "[" in line and "_NOT_FOUND]" in line


def test_pools_list_and_get_show_sync_status(services: Services) -> None:
    result = services.xsha("pools list")
    assert result.exit_code == 0, result.stderr
    assert "WATCHING" in result.stdout and "JSON_RPC" in result.stdout and "XML_RPC" in result.stdout

    pool = as_json(services, f"pools get {NATIVE_CLUSTER}")
    assert isinstance(pool, dict)
    assert pool["sync_status"]["state"] == "SYNC_STATE_WATCHING"
    assert pool["has_credentials"] is True
    assert "password" not in json.dumps(pool)

    table = services.xsha(f"pools get {OLD_CLUSTER}")
    assert "events applied" in table.stdout and "XML_RPC" in table.stdout


def test_hosts_list_filters_by_cluster(services: Services) -> None:
    result = services.xsha(f"hosts list --cluster {OLD_CLUSTER}")
    assert result.exit_code == 0, result.stderr
    assert "xs61-host-1" in result.stdout and "xs61-host-2" in result.stdout
    assert "xs82-host" not in result.stdout
    hosts = as_json(services, "hosts list")
    assert isinstance(hosts, list)
    assert len(hosts) == 5
    assert sum(1 for host in hosts if host["is_master"]) == 2


def test_vms_list_filters(services: Services) -> None:
    def names(command: str) -> set[str]:
        vms = as_json(services, f"vms list {command}")
        assert isinstance(vms, list)
        return {vm["name"] for vm in vms}

    assert names(f"--cluster {OLD_CLUSTER}") == {"i-5-1-VM", "i-5-2-VM", "i-5-3-VM"}
    assert names("--xapi-power-state halted") == {"i-2-12-VM"}
    assert names("--power-state PowerOff") == {"i-2-12-VM"}  # CloudStack's spelling works too
    assert names(f"--cluster {NATIVE_CLUSTER} --host xs82-host-2") == {"i-2-10-VM"}
    assert names("--name-prefix i-2-1") == {"i-2-10-VM", "i-2-11-VM", "i-2-12-VM"}
    assert names("--priority none --name-prefix r-") == {"r-4-VM"}
    assert len(names("--limit 2")) == 2

    table = services.xsha(f"vms list --cluster {NATIVE_CLUSTER} --host xs82-host-2")
    assert "i-2-10-VM" in table.stdout and "xs82-host-2" in table.stdout and "RUNNING" in table.stdout


def test_vms_list_follows_every_page(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_client, "PAGE_SIZE", 2)
    vms = as_json(services, "vms list")
    assert isinstance(vms, list)
    assert len(vms) == 7
    assert len({vm["uuid"] for vm in vms}) == 7


def test_vms_list_rejects_an_unknown_power_state_as_usage_error(services: Services) -> None:
    result = services.xsha("vms list --power-state sideways")
    assert result.exit_code == cli_client.ExitCode.USAGE
    assert "power-on" in result.output


def test_vms_get_by_uuid_and_by_name(services: Services) -> None:
    vm = as_json(services, f"vms get i-2-10-VM --cluster {NATIVE_CLUSTER}")
    assert isinstance(vm, dict)
    by_uuid = services.xsha(f"vms get {vm['uuid']}")
    assert by_uuid.exit_code == 0, by_uuid.stderr
    assert "i-2-10-VM" in by_uuid.stdout and "RUNNING" in by_uuid.stdout


# --- settings -------------------------------------------------------------------------------------------------------


def test_settings_get_and_set_durations_and_overrides(services: Services) -> None:
    before = as_json(services, "settings get")
    assert isinstance(before, dict)
    assert before["global"]["native_ha_enabled"] is False

    result = services.xsha(f"settings set --restart-overdue-grace 90s --cluster-override {OLD_CLUSTER}=false")
    assert result.exit_code == 0, result.stderr
    assert "1m30s" in result.stdout and f"override {OLD_CLUSTER}" in result.stdout

    after = as_json(services, "settings get")
    assert isinstance(after, dict)
    assert after["global"]["restart_overdue_grace"] == "90s"
    assert after["cluster_overrides"] == [{"cluster_id": OLD_CLUSTER, "native_ha_enabled": False}]
    assert after["version"] > before["version"]

    cleared = as_json(services, f"settings set --clear-override {OLD_CLUSTER}")
    assert isinstance(cleared, dict)
    assert cleared["settings"]["cluster_overrides"] == []


def test_settings_set_with_a_stale_expected_version_is_aborted(services: Services) -> None:
    result = services.xsha("settings set --heartbeat-interval 30s --expected-version 1")
    assert result.exit_code == cli_client.ExitCode.RPC_ERROR
    assert "ABORTED" in one_line_error(result)


def test_settings_set_rejects_a_bad_duration_as_usage_error(services: Services) -> None:
    result = services.xsha("settings set --heartbeat-interval soon")
    assert result.exit_code == cli_client.ExitCode.USAGE
    assert "duration" in result.output


def test_enable_native_ha_globally(services: Services) -> None:
    result = services.xsha("settings set --native-ha")
    assert result.exit_code == 0, result.stderr
    status = as_json(services, f"clusters status {NATIVE_CLUSTER}")
    assert isinstance(status, dict)
    assert status["effective_mode"] == "HA_MODE_NATIVE"


# --- deployment decisions, wanted state, managed VMs, fencing -------------------------------------------------------


def test_decide_native_and_old_cluster(services: Services) -> None:
    result = services.xsha(f"decide {NATIVE_CLUSTER} i-2-10-VM --ha --request-id d-1")
    assert result.exit_code == 0, result.stderr
    assert "NATIVE" in result.stdout and "restart" in result.stdout and "HYPERVISOR" in result.stdout

    non_ha = as_json(services, f"decide {NATIVE_CLUSTER} i-2-11-VM --no-ha")
    assert isinstance(non_ha, dict)
    assert non_ha["ha_restart_priority"] == "" and non_ha["restarter"] == "RESTARTER_NONE"

    old = as_json(services, f"decide {OLD_CLUSTER} i-5-2-VM --ha --type User")
    assert isinstance(old, dict)
    assert old["mode"] == "HA_MODE_CLOUDSTACK" and old["restarter"] == "RESTARTER_CLOUDSTACK"

    router = as_json(services, f"decide {NATIVE_CLUSTER} r-4-VM --type DomainRouter --ha")
    assert isinstance(router, dict)
    assert router["ha_restart_priority"] == "" and router["vm_type"] == "VM_TYPE_DOMAIN_ROUTER"


def test_vms_wanted_and_managed(services: Services) -> None:
    for cluster, name in ((NATIVE_CLUSTER, "i-2-10-VM"), (NATIVE_CLUSTER, "i-2-11-VM"), (OLD_CLUSTER, "i-5-2-VM")):
        result = services.xsha(f"vms wanted {cluster} {name} running")
        assert result.exit_code == 0, result.stderr
        assert "RUNNING" in result.stdout

    def protected() -> bool:
        vms = as_json(services, f"vms managed --cluster {NATIVE_CLUSTER} --protection protected")
        assert isinstance(vms, list)
        return [vm["decision"]["instance_name"] for vm in vms] == ["i-2-10-VM"]

    wait_until(protected, 30, what="i-2-10-VM protected by XenServer HA")
    table = services.xsha("vms managed")
    assert table.exit_code == 0
    for name in ("i-2-10-VM", "i-2-11-VM", "i-5-2-VM", "r-4-VM"):
        assert name in table.stdout
    assert "PROTECTED" in table.stdout

    # ha_service wrote the priority through sync_service: the mirror shows it.
    assert as_json(services, "vms list --priority restart --name-prefix i-2-10") != []


def test_fencing_follows_the_cluster_mode(services: Services) -> None:
    native = as_json(services, f"fencing {NATIVE_CLUSTER}")
    assert isinstance(native, dict)
    assert native["mechanism"] == "FENCING_MECHANISM_XENSERVER_HA"
    assert native["storage_heartbeat_enabled"] is False
    old = services.xsha(f"fencing {OLD_CLUSTER}")
    assert old.exit_code == 0
    assert "STORAGE_HEARTBEAT" in old.stdout


def test_settings_change_that_would_flip_a_pinned_cluster_is_refused(services: Services) -> None:
    refused = services.xsha("settings set --no-native-ha")
    assert refused.exit_code == cli_client.ExitCode.RPC_ERROR
    line = one_line_error(refused)
    assert "FAILED_PRECONDITION" in line and "[HA_MODE_PINNED]" in line and NATIVE_CLUSTER in line

    applied = as_json(services, "settings set --no-native-ha --apply-to-unpinned-only")
    assert isinstance(applied, dict)
    assert NATIVE_CLUSTER in applied["clusters_left_unchanged"]
    assert applied["settings"]["global"]["native_ha_enabled"] is False
    status = as_json(services, f"clusters status {NATIVE_CLUSTER}")
    assert isinstance(status, dict)
    assert status["effective_mode"] == "HA_MODE_NATIVE" and status["pinned"] is True


# --- live watching and actions --------------------------------------------------------------------------------------


def test_watch_events_shows_native_restart_and_cloudstack_action_until_ctrl_c(services: Services) -> None:
    watch = CliProcess(["watch", "events", "--bookmark-interval", "200ms"], services.env)
    try:
        watch.wait_for("watching HA events")
        for pool_name, host in (("xs82", "xs82-host-2"), ("xs61", "xs61-host-2")):
            pool = services.sim.pool(pool_name)
            pool.crash_host(pool.resolve_host(host))
        watch.wait_for("VM_RESTARTED_BY_HYPERVISOR", 60)
        watch.wait_for("RESTART_VM", 60)
        assert watch.interrupt() == 0
    finally:
        watch.kill()
    output = watch.output()
    restarted = next(line for line in output.splitlines() if "VM_RESTARTED_BY_HYPERVISOR" in line)
    assert NATIVE_CLUSTER in restarted and "i-2-10-VM" in restarted and "xs82-host-2 ->" not in restarted
    action = next(line for line in output.splitlines() if "RESTART_VM" in line)
    assert OLD_CLUSTER in action and "i-5-2-VM" in action


def test_actions_list_and_ack(services: Services) -> None:
    pending = as_json(services, f"actions list --cluster {OLD_CLUSTER} --state pending")
    assert isinstance(pending, list)
    restart = next(action for action in pending if action["kind"] == "HA_ACTION_KIND_RESTART_VM")
    assert restart["instance_name"] == "i-5-2-VM"

    table = services.xsha("actions list")
    assert table.exit_code == 0 and restart["action_id"] in table.stdout

    bad = services.xsha(f"actions ack {restart['action_id']} --outcome pending")
    assert bad.exit_code == cli_client.ExitCode.USAGE

    acked = services.xsha(f"actions ack {restart['action_id']} --outcome succeeded --message restarted-on-host-1")
    assert acked.exit_code == 0, acked.stderr
    assert "SUCCEEDED" in acked.stdout
    done = as_json(services, f"actions list --cluster {OLD_CLUSTER} --state succeeded")
    assert isinstance(done, list)
    assert restart["action_id"] in {action["action_id"] for action in done}


def test_watch_events_replays_history_as_json(services: Services) -> None:
    result = services.xsha("-o json watch events --since 0 --max-events 2")
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(events) == 2
    assert all("event" in event for event in events)


def test_watch_changes_lists_then_follows_new_changes_until_ctrl_c(services: Services) -> None:
    watch = CliProcess(["watch", "changes", "--cluster", NATIVE_CLUSTER, "--kind", "vm"], services.env)
    try:
        watch.wait_for("watching for changes")
        assert "VMs at revision" in watch.output()
        pool = services.sim.pool("xs82")
        pool.change_vm(pool.resolve_vm("i-2-11-VM"), "memory_static_max", str(3 * 1024**3))
        watch.wait_for("i-2-11-VM", 30)
        assert watch.interrupt() == 0
    finally:
        watch.kill()
    line = next(line for line in watch.output().splitlines() if "i-2-11-VM" in line)
    assert "MODIFIED" in line and "vm" in line


def test_watch_changes_from_a_revision_as_json(services: Services) -> None:
    result = services.xsha("-o json watch changes --since 0 --max-changes 3")
    assert result.exit_code == 0, result.stderr
    changes = [json.loads(line)["change"] for line in result.stdout.splitlines() if line.strip()]
    assert len(changes) == 3
    revisions = [int(change["revision"]) for change in changes]
    assert revisions == sorted(revisions)


# --- pool registration ----------------------------------------------------------------------------------------------


def test_pools_register_and_deregister(services: Services) -> None:
    url = services.sim.master_url("scratch")
    result = services.xsha(f"pools register c-scratch {url}", env={"XSHA_XAPI_PASSWORD": "password"})
    assert result.exit_code == 0, result.stderr
    assert "registered the pool of cluster c-scratch" in result.stdout

    def watching() -> bool:
        pool = as_json(services, "pools get c-scratch")
        assert isinstance(pool, dict)
        return bool(pool["sync_status"]["state"] == "SYNC_STATE_WATCHING")

    wait_until(watching, 30, what="c-scratch watched")
    hosts = services.xsha("hosts list --cluster c-scratch")
    assert "scratch-host-1" in hosts.stdout

    conflict = services.xsha("pools register c-scratch http://127.0.0.1:1 --password other")
    assert conflict.exit_code == cli_client.ExitCode.RPC_ERROR
    assert "ALREADY_EXISTS" in one_line_error(conflict)

    declined = services.xsha("pools deregister c-scratch", input="n\n")
    assert declined.exit_code == cli_client.ExitCode.USAGE

    removed = services.xsha("pools deregister c-scratch --yes")
    assert removed.exit_code == 0, removed.stderr
    gone = services.xsha("pools get c-scratch")
    assert gone.exit_code == cli_client.ExitCode.RPC_ERROR


def test_pools_resync(services: Services) -> None:
    result = services.xsha(f"pools resync {OLD_CLUSTER}")
    assert result.exit_code == 0, result.stderr
    assert OLD_CLUSTER in result.stdout


# --- migrations ----------------------------------------------------------------------------------------------------


def test_migration_of_the_old_cluster_to_native_is_blocked(services: Services) -> None:
    result = services.xsha(f"migrations plan {OLD_CLUSTER} --to native")
    assert result.exit_code == 0, result.stderr
    assert "BLOCKED" in result.stdout and "Problems" in result.stdout


def test_migration_plan_apply_get_list(services: Services) -> None:
    planned = as_json(services, f"migrations plan {NATIVE_CLUSTER} --to cloudstack --request-id plan-1")
    assert isinstance(planned, dict)
    assert planned["state"] == "MIGRATION_STATE_PLANNED", planned
    migration_id = planned["migration_id"]
    assert any(step["instance_name"] == "i-2-10-VM" for step in planned["steps"])

    applied = services.xsha(f"migrations apply {migration_id}")
    assert applied.exit_code == 0, applied.stderr
    assert f"migration {migration_id}: SUCCEEDED" in applied.stdout

    shown = services.xsha(f"migrations get {migration_id}")
    assert shown.exit_code == 0 and "SUCCEEDED" in shown.stdout and "Steps" in shown.stdout
    listed = as_json(services, f"migrations list --cluster {NATIVE_CLUSTER}")
    assert isinstance(listed, list)
    assert migration_id in {migration["migration_id"] for migration in listed}
    status = as_json(services, f"clusters status {NATIVE_CLUSTER}")
    assert isinstance(status, dict)
    assert status["effective_mode"] == "HA_MODE_CLOUDSTACK" and status["pinned_mode"] == "HA_MODE_CLOUDSTACK"
    assert as_json(services, "vms list --priority restart --name-prefix i-2-10") == []


def test_unknown_migration_is_not_found(services: Services) -> None:
    result = services.xsha("migrations get no-such-migration")
    assert result.exit_code == cli_client.ExitCode.RPC_ERROR
    assert "NOT_FOUND" in one_line_error(result)


# --- connection problems --------------------------------------------------------------------------------------------


def test_wrong_token_is_exit_code_4(services: Services) -> None:
    result = services.xsha("clusters status", env={"XSHA_TOKEN": "not-the-token"})
    assert result.exit_code == cli_client.ExitCode.AUTH
    assert "UNAUTHENTICATED" in one_line_error(result)


def test_token_from_a_file(services: Services, tmp_path: object) -> None:
    from pathlib import Path

    token_file = Path(str(tmp_path)) / "token"
    token_file.write_text(f"# xsha token\n{TOKEN}\n")
    result = services.xsha(f"--token-file {token_file} settings get", env={"XSHA_TOKEN": ""})
    assert result.exit_code == 0, result.stderr


def test_unreachable_service_is_exit_code_3(services: Services) -> None:
    result = services.xsha("hosts list --cluster x", env={"XSHA_SYNC_ADDRESS": "127.0.0.1:1"})
    assert result.exit_code == cli_client.ExitCode.UNAVAILABLE
    line = one_line_error(result)
    assert "cannot reach sync_service at 127.0.0.1:1" in line and "XSHA_SYNC_ADDRESS" in line


def test_console_script_entry_point_runs(services: Services) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "xsha_cli", "--ha-address", services.ha.address, "--token", TOKEN, "settings", "get"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "xenserver.native.ha.enabled" in completed.stdout
