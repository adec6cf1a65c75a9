"""CLI paths the real services cannot show yet or on demand: TLS / mutual TLS, the migration progress bar (the real
ha_service answers UNIMPLEMENTED to migrations in this version), and re-listing after OUT_OF_RANGE. Served by small
fake servicers through the real server builder (auth, TLS, health)."""

# ruff: noqa: N802  (servicer methods carry the RPC names)
from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner, Result

from xsha_api.v1 import common_pb2, ha_service_pb2, ha_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc
from xsha_cli import healthcheck
from xsha_cli.app import app
from xsha_cli.client import ConnectionOptions, ExitCode
from xsha_common.errors import ServiceError
from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server
from xsha_common.testing import TestPki, generate_test_pki

TOKEN = "fake-token-0123456789"
RETAINED_FROM = 40
STEP_FAILED = ha_service_pb2.MIGRATION_STEP_STATE_FAILED
STEP_SUCCEEDED = ha_service_pb2.MIGRATION_STEP_STATE_SUCCEEDED
STEP_PENDING = ha_service_pb2.MIGRATION_STEP_STATE_PENDING
LIST_REVISION = 50


def wait_until_cancelled(context: grpc.ServicerContext) -> None:
    """Keep a stream open, as a watch does, until the client goes away."""
    while context.is_active():
        time.sleep(0.05)


class FakeHa(ha_service_pb2_grpc.HaPolicyServiceServicer):
    def GetSettings(self, request: Any, context: Any) -> ha_service_pb2.GetSettingsResponse:
        return ha_service_pb2.GetSettingsResponse(settings=ha_service_pb2.Settings(version=7))

    def ApplyMigration(self, request: Any, context: Any) -> Iterator[ha_service_pb2.ApplyMigrationResponse]:
        total = 3
        yield ha_service_pb2.ApplyMigrationResponse(state=ha_service_pb2.MIGRATION_STATE_APPLYING, steps_total=total)
        for index in range(total):
            failed = request.migration_id == "m-fails" and index == 1
            step = ha_service_pb2.MigrationStep(
                index=index,
                kind=ha_service_pb2.MIGRATION_STEP_KIND_SET_VM_HA_PRIORITY,
                instance_name=f"i-2-{index}-VM",
                state=STEP_FAILED if failed else STEP_SUCCEEDED,
                message="HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN" if failed else "",
            )  # fmt: skip
            yield ha_service_pb2.ApplyMigrationResponse(
                step=step,
                state=ha_service_pb2.MIGRATION_STATE_APPLYING,
                steps_done=index + 1,
                steps_total=total,
                steps_failed=1 if request.migration_id == "m-fails" and index >= 1 else 0,
            )
        final = (
            ha_service_pb2.MIGRATION_STATE_FAILED
            if request.migration_id == "m-fails"
            else ha_service_pb2.MIGRATION_STATE_SUCCEEDED
        )
        yield ha_service_pb2.ApplyMigrationResponse(
            state=final, steps_done=total, steps_total=total, steps_failed=int(request.migration_id == "m-fails")
        )  # fmt: skip

    def PlanMigration(self, request: Any, context: Any) -> ha_service_pb2.PlanMigrationResponse:
        return ha_service_pb2.PlanMigrationResponse(migration=self._migration(request.cluster_id))

    def GetMigration(self, request: Any, context: Any) -> ha_service_pb2.GetMigrationResponse:
        return ha_service_pb2.GetMigrationResponse(migration=self._migration("c1"))

    def ListMigrations(self, request: Any, context: Any) -> ha_service_pb2.ListMigrationsResponse:
        return ha_service_pb2.ListMigrationsResponse(migrations=[self._migration("c1")])

    @staticmethod
    def _migration(cluster_id: str) -> ha_service_pb2.Migration:
        return ha_service_pb2.Migration(
            migration_id="m-1",
            cluster_id=cluster_id,
            source_mode=common_pb2.HA_MODE_CLOUDSTACK,
            target_mode=common_pb2.HA_MODE_NATIVE,
            state=ha_service_pb2.MIGRATION_STATE_BLOCKED,
            problems=[
                ha_service_pb2.MigrationProblem(
                    code="POOL_HA_DISABLED", message="pool HA is off", how_to_fix="enable pool HA", blocking=True
                )
            ],
            steps=[
                ha_service_pb2.MigrationStep(
                    index=0, kind=ha_service_pb2.MIGRATION_STEP_KIND_PIN_MODE, state=STEP_PENDING, message="pin NATIVE"
                )
            ],
            steps_total=1,
        )

    def ListHaActions(self, request: Any, context: Any) -> ha_service_pb2.ListHaActionsResponse:
        return ha_service_pb2.ListHaActionsResponse(revision=LIST_REVISION)

    def WatchHaEvents(self, request: Any, context: Any) -> Iterator[ha_service_pb2.WatchHaEventsResponse]:
        if request.since_revision < RETAINED_FROM:
            raise ServiceError(grpc.StatusCode.OUT_OF_RANGE, "revision too old; list again", "REVISION_TOO_OLD")
        note = ha_service_pb2.HaNotification(
            notification_id="n1", kind=ha_service_pb2.HA_NOTIFICATION_KIND_POOL_UNFENCED, cluster_id="c1"
        )
        event = ha_service_pb2.HaEvent(revision=request.since_revision + 1, notification=note)
        yield ha_service_pb2.WatchHaEventsResponse(event=event)
        wait_until_cancelled(context)


class FakeSync(sync_service_pb2_grpc.HypervisorSyncServiceServicer):
    def __init__(self) -> None:
        self.watch_requests: list[int] = []

    def ListPools(self, request: Any, context: Any) -> sync_service_pb2.ListPoolsResponse:
        return sync_service_pb2.ListPoolsResponse(revision=LIST_REVISION)

    def ListHosts(self, request: Any, context: Any) -> sync_service_pb2.ListHostsResponse:
        host = sync_service_pb2.Host(uuid="h-1", name="host-one", cluster_id="c1", live=True)
        return sync_service_pb2.ListHostsResponse(hosts=[host], revision=LIST_REVISION)

    def ListVms(self, request: Any, context: Any) -> sync_service_pb2.ListVmsResponse:
        return sync_service_pb2.ListVmsResponse(revision=LIST_REVISION)

    def WatchChanges(self, request: Any, context: Any) -> Iterator[sync_service_pb2.WatchChangesResponse]:
        self.watch_requests.append(request.since_revision)
        if request.since_revision < RETAINED_FROM:
            raise ServiceError(grpc.StatusCode.OUT_OF_RANGE, "revision too old; list again", "REVISION_TOO_OLD")
        vm = sync_service_pb2.Vm(
            name="i-9-VM", resident_host_uuid="h-1", xapi_power_state=common_pb2.XAPI_POWER_STATE_RUNNING
        )
        change = sync_service_pb2.Change(
            revision=request.since_revision + 1,
            type=sync_service_pb2.CHANGE_TYPE_MODIFIED,
            kind=sync_service_pb2.RESOURCE_KIND_VM,
            cluster_id="c1",
            vm=vm,
        )
        yield sync_service_pb2.WatchChangesResponse(change=change)
        wait_until_cancelled(context)


def serve(pki: TestPki | None, *, mutual: bool = False) -> tuple[ServiceServer, FakeSync]:
    fake_sync = FakeSync()  # type: ignore[abstract]
    settings = ServerSettings(
        listen_address="127.0.0.1:0",
        auth_tokens=(TOKEN,),
        tls_cert_file=pki.server.cert_file if pki else None,
        tls_key_file=pki.server.key_file if pki else None,
        tls_client_ca_file=pki.ca.cert_file if pki and mutual else None,
        shutdown_grace_seconds=0.2,
    )
    server = build_server(
        [
            ServiceRegistration(
                ha_service_pb2_grpc.add_HaPolicyServiceServicer_to_server,
                FakeHa(),  # type: ignore[abstract]  # unlisted RPCs answer UNIMPLEMENTED
                "cloudstack.xsha.v1.HaPolicyService",
            ),
            ServiceRegistration(
                sync_service_pb2_grpc.add_HypervisorSyncServiceServicer_to_server,
                fake_sync,
                "cloudstack.xsha.v1.HypervisorSyncService",
            ),
        ],
        settings,
    )
    server.start()
    return server, fake_sync


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return generate_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def plain() -> Iterator[tuple[ServiceServer, FakeSync]]:
    server, fake_sync = serve(None)
    yield server, fake_sync
    server.shutdown(0.2)


def xsha(server: ServiceServer, command: str, **env: str) -> Result:
    environment = {
        "XSHA_HA_ADDRESS": f"127.0.0.1:{server.port}",
        "XSHA_SYNC_ADDRESS": f"127.0.0.1:{server.port}",
        "XSHA_TOKEN": TOKEN,
        "COLUMNS": "250",
        **env,
    }
    return CliRunner().invoke(app, shlex.split(command), env=environment)


def test_mutual_tls_with_ca_and_client_certificate(pki: TestPki) -> None:
    server, _ = serve(pki, mutual=True)
    try:
        env = {"XSHA_HA_ADDRESS": f"localhost:{server.port}", "XSHA_CA_FILE": str(pki.ca.cert_file)}
        without_cert = xsha(server, "settings get", **env)
        assert without_cert.exit_code == ExitCode.UNAVAILABLE
        tls_env = {**env, "XSHA_CERT_FILE": str(pki.client.cert_file), "XSHA_KEY_FILE": str(pki.client.key_file)}
        result = xsha(server, "settings get", **tls_env)
        assert result.exit_code == 0, result.stderr
        assert "version" in result.stdout and "7" in result.stdout
        code, status = healthcheck.check(
            f"localhost:{server.port}",
            ConnectionOptions(ca_file=pki.ca.cert_file, cert_file=pki.client.cert_file, key_file=pki.client.key_file),
        )
        assert (code, status) == (ExitCode.OK, "SERVING")
    finally:
        server.shutdown(0.2)


def test_server_tls_by_ip_with_a_server_name_override(pki: TestPki) -> None:
    server, _ = serve(pki)
    try:
        env = {"XSHA_CA_FILE": str(pki.ca.cert_file), "XSHA_TLS_SERVER_NAME": "localhost"}
        assert xsha(server, "settings get", **env).exit_code == 0
        plaintext = xsha(server, "settings get")
        assert plaintext.exit_code == ExitCode.UNAVAILABLE
    finally:
        server.shutdown(0.2)


def test_half_a_client_certificate_is_a_usage_error(plain: tuple[ServiceServer, FakeSync], pki: TestPki) -> None:
    result = xsha(plain[0], f"--cert-file {pki.client.cert_file} settings get")
    assert result.exit_code == ExitCode.USAGE
    assert "--key-file" in result.stderr


def test_migration_apply_shows_progress_and_the_outcome(plain: tuple[ServiceServer, FakeSync]) -> None:
    result = xsha(plain[0], "migrations apply m-1")
    assert result.exit_code == 0, result.stderr
    assert "3/3" in result.stdout and "SUCCEEDED" in result.stdout

    failed = xsha(plain[0], "migrations apply m-fails")
    assert failed.exit_code == ExitCode.RPC_ERROR
    assert "step 1 failed: i-2-1-VM HA_OPERATION_WOULD_BREAK_FAILOVER_PLAN" in failed.stdout
    assert "apply again" in failed.stderr

    streamed = xsha(plain[0], "-o json migrations apply m-1")
    messages = [json.loads(line) for line in streamed.stdout.splitlines()]
    assert messages[-1]["state"] == "MIGRATION_STATE_SUCCEEDED" and len(messages) == 5


def test_migration_plan_get_list_render(plain: tuple[ServiceServer, FakeSync]) -> None:
    plan = xsha(plain[0], "migrations plan c1 --to native")
    assert plan.exit_code == 0, plan.stderr
    assert (
        "POOL_HA_DISABLED" in plan.stdout and "enable pool HA" in plan.stdout and "CLOUDSTACK -> NATIVE" in plan.stdout
    )
    assert "PIN_MODE" in xsha(plain[0], "migrations get m-1").stdout
    assert "PIN_MODE" not in xsha(plain[0], "migrations get m-1 --no-steps").stdout
    assert "m-1" in xsha(plain[0], "migrations list").stdout
    assert xsha(plain[0], "migrations plan c1 --to sideways").exit_code == ExitCode.USAGE


def test_watch_changes_lists_again_after_out_of_range(plain: tuple[ServiceServer, FakeSync]) -> None:
    server, fake_sync = plain
    result = xsha(server, "watch changes --since 5 --max-changes 1")
    assert result.exit_code == 0, result.stderr
    assert "revision 5 is no longer retained; listing again" in result.stdout
    assert f"at revision {LIST_REVISION}" in result.stdout
    assert fake_sync.watch_requests == [5, LIST_REVISION]
    change_line = next(line for line in result.stdout.splitlines() if "i-9-VM" in line)
    assert f"rev {LIST_REVISION + 1}" in change_line and "host-one" in change_line


def test_watch_events_continues_after_out_of_range(plain: tuple[ServiceServer, FakeSync]) -> None:
    result = xsha(plain[0], "watch events --since 3 --max-events 1")
    assert result.exit_code == 0, result.stderr
    assert "continuing from there" in result.stdout or "continuing from there" in result.stderr
    assert "POOL_UNFENCED" in result.stdout


def test_watch_stops_after_duration(plain: tuple[ServiceServer, FakeSync]) -> None:
    result = xsha(plain[0], "watch changes --since 45 --duration 500ms")
    assert result.exit_code == 0, result.stderr
    assert "i-9-VM" in result.stdout


def test_healthcheck_module_exit_codes(
    plain: tuple[ServiceServer, FakeSync], capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{plain[0].port}"
    assert healthcheck.main([address]) == 0
    assert "SERVING" in capsys.readouterr().out
    assert healthcheck.main([address, "--service", "no.such.Service", "-q"]) == ExitCode.RPC_ERROR
    assert healthcheck.main(["127.0.0.1:1", "-q", "--timeout", "1"]) == ExitCode.UNAVAILABLE
