"""The one-command demo: xapi_sim, sync_service and ha_service as child processes on SQLite (data under
./var/demo/), two pools registered, HA and non-HA VMs deployed in both, a host crashed in each, and the outcome as a
timeline: XenServer restarts the protected VM in the native (XenServer 8.2) cluster and ha_service only notifies;
in the old (XenServer 6.1) cluster ha_service asks CloudStack to restart it (RESTART_VM), and the demo, playing the
orchestrator, does so and acknowledges. Then it keeps running for `xsha` until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import grpc
import XenAPI
from cryptography.fernet import Fernet
from rich.console import Console

from xsha_api.v1 import common_pb2, ha_service_pb2, ha_service_pb2_grpc, sync_service_pb2, sync_service_pb2_grpc
from xsha_common.config import split_host_port
from xsha_common.procs import ChildProcess, ProcessFailedError
from xsha_demo.timeline import HaEvents, MirrorChanges, StreamFollower, Timeline, follow_changes, follow_ha_events

DEFAULT_HA_PORT = 50052
DEFAULT_SYNC_PORT = 50061
FINAL_LINE = "Scenario complete"
DEFAULT_SCENARIO = Path(__file__).resolve().parent.parent / "xapi_sim" / "scenarios" / "demo.yaml"
XAPI_USER, XAPI_PASSWORD = "root", "password"  # the demo scenario's credentials

T = TypeVar("T")


class DemoError(Exception):
    """The scenario did not go as expected; the message says what and where the logs are."""


class StopRequestedError(Exception):
    """SIGINT or SIGTERM: stop cleanly."""


@dataclass(frozen=True)
class DemoCluster:
    cluster_id: str
    pool: str  # the simulator's pool name
    label: str
    crash_host: str  # where the demo VMs run, crashed later
    spare_host: str  # where CloudStack restarts a VM in the old cluster


@dataclass(frozen=True)
class DemoVm:
    cluster: DemoCluster
    name: str
    ha: bool


NATIVE = DemoCluster("xs82", "xs82", "xs82 (XenServer 8.2)", "xs82-host-2", "xs82-host-1")
OLD = DemoCluster("xs61", "xs61", "xs61 (XenServer 6.1)", "xs61-host-2", "xs61-host-1")
DEMO_VMS = (
    DemoVm(NATIVE, "i-2-100-VM", ha=True),
    DemoVm(NATIVE, "i-2-101-VM", ha=False),
    DemoVm(OLD, "i-5-100-VM", ha=True),
    DemoVm(OLD, "i-5-101-VM", ha=False),
)


# --- small helpers ----------------------------------------------------------------------------------------------------


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def preferred_port(port: int) -> int:
    """The documented default port when it is free (so `xsha` works without options), else any free port."""
    return port if port and port_is_free(port) else free_port()


@dataclass
class ServicePorts:
    """The two local addresses a service child listens on. They are chosen free but not held until the child binds
    them, so another process can take one meanwhile; `repick` chooses new ones for another start."""

    listen: str
    metrics: str

    @classmethod
    def pick(cls, preferred_listen_port: int) -> ServicePorts:
        return cls(f"127.0.0.1:{preferred_port(preferred_listen_port)}", f"127.0.0.1:{free_port()}")

    def taken_by_another(self) -> bool:
        return not all(port_is_free(split_host_port(address)[1]) for address in (self.listen, self.metrics))

    def repick(self) -> None:
        self.listen = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"


PORT_ATTEMPTS = 3


def start_on_free_ports(
    start: Callable[[ServicePorts], ChildProcess], ports: ServicePorts, attempts: int = PORT_ATTEMPTS
) -> ChildProcess:
    """`start(ports)` (which stops its child when it fails); when it failed while one of the ports is held by another
    process, taken between being chosen and being bound, start again on new ports. Any other failure is raised."""
    attempt = 1
    while True:
        try:
            return start(ports)
        except ProcessFailedError:
            if attempt >= attempts or not ports.taken_by_another():
                raise
        attempt += 1
        ports.repick()


def poll(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            value = condition()
            if value:
                return value
        except grpc.RpcError as error:
            last_error = f" (last error: {error.details() if isinstance(error, grpc.Call) else error})"
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}{last_error}")
        time.sleep(interval)


def sim_control(url: str, method: str, *params: Any) -> Any:
    """A `sim.*` control call of xapi_sim (fault injection), unwrapping XAPI's status envelope."""
    reply = getattr(xmlrpc.client.ServerProxy(url, allow_none=True), method)(*params)
    if reply.get("Status") != "Success":
        raise DemoError(f"{method} failed: {reply.get('ErrorDescription')}")
    return reply["Value"]


class Xapi:
    """What CloudStack itself does through XAPI in the demo (start a VM on a host), with the XenAPI SDK."""

    def __init__(self, url: str) -> None:
        self.session = XenAPI.Session(url)
        self.session.xenapi.login_with_password(XAPI_USER, XAPI_PASSWORD, "1.0", "xsha-demo")

    def start_on(self, vm_name: str, host_name: str) -> None:
        api = self.session.xenapi
        vm = api.VM.get_by_name_label(vm_name)[0]
        host = api.host.get_by_name_label(host_name)[0]
        api.VM.start_on(vm, host, False, False)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the host may be gone; the session dies with it
            self.session.xenapi.session.logout()


# --- the demo ---------------------------------------------------------------------------------------------------------


class Demo:
    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.data_dir: Path = args.data_dir.resolve()
        self.log_dir = self.data_dir / "logs"
        self.token = secrets.token_urlsafe(24)
        self.token_file = self.data_dir / "auth_token"
        self.metadata = (("authorization", f"Bearer {self.token}"),)
        self.children: list[ChildProcess] = []
        self.followers: list[StreamFollower] = []
        self.channels: list[grpc.Channel] = []
        self.pools: dict[str, dict[str, Any]] = {}
        self.ha_ports = ServicePorts.pick(args.ha_port)
        self.sync_ports = ServicePorts.pick(args.sync_port)
        self.timeline = Timeline(console, {NATIVE.cluster_id: NATIVE.label, OLD.cluster_id: OLD.label})
        self.ha: ha_service_pb2_grpc.HaPolicyServiceStub
        self.sync: sync_service_pb2_grpc.HypervisorSyncServiceStub

    # --- setup ----------------------------------------------------------------------------------------------------

    def prepare_data_dir(self) -> None:
        """A fresh demo every run: the previous run's databases, keys and logs are removed."""
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.log_dir.mkdir(parents=True)
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        key_file = self.data_dir / "credentials.key"
        key_file.write_bytes(Fernet.generate_key() + b"\n")
        key_file.chmod(0o600)

    def start_children(self) -> None:
        step = self.console.status("starting xapi_sim, sync_service and ha_service...")
        step.start()
        try:
            ready_file = self.data_dir / "xapi_sim.ready.json"
            sim = self._child("xapi_sim", ["--scenario", str(self.args.scenario), "--ready-file", str(ready_file)], {})
            poll(lambda: self._alive(sim) and ready_file.exists(), 60, "xapi_sim to serve its pools")
            self.pools = json.loads(ready_file.read_text())["pools"]

            common = {"LOG_FORMAT": "text", "AUTH_TOKEN_FILE": str(self.token_file)}
            sync_env = {
                **common,
                "DATABASE_URL": f"sqlite:///{self.data_dir / 'sync_service.sqlite'}",
                "CREDENTIALS_KEY_FILE": str(self.data_dir / "credentials.key"),
                "EVENT_TIMEOUT_SECONDS": "5",
            }
            start_on_free_ports(partial(self._service, "sync_service", "XSHA_SYNC_", sync_env), self.sync_ports)
            ha_env = {
                **common,
                "DATABASE_URL": f"sqlite:///{self.data_dir / 'ha_service.sqlite'}",
                "SYNC_ADDRESS": self.sync_address,
                "SYNC_TOKEN": self.token,
                "CONTROLLER_TICK_INTERVAL": "0.2",
            }
            start_on_free_ports(partial(self._service, "ha_service", "XSHA_HA_", ha_env), self.ha_ports)
        finally:
            step.stop()
        self.console.print(
            f"[green]ready[/]: xapi_sim ({len(self.pools)} pools), sync_service on {self.sync_address}, "
            f"ha_service on {self.ha_address} (SQLite under {self._shown(self.data_dir)})"
        )

    @property
    def ha_address(self) -> str:
        return self.ha_ports.listen

    @property
    def sync_address(self) -> str:
        return self.sync_ports.listen

    def _service(self, module: str, prefix: str, env: dict[str, str], ports: ServicePorts) -> ChildProcess:
        """A service child on `ports`, serving; a child that fails to serve is stopped and forgotten."""
        settings = {**env, "LISTEN_ADDRESS": ports.listen, "METRICS_ADDRESS": ports.metrics}
        child = self._child(module, [], {f"{prefix}{key}": value for key, value in settings.items()})
        try:
            child.wait_until_serving(ports.listen, timeout=60)
        except ProcessFailedError:
            child.stop()
            self.children.remove(child)
            raise
        return child

    def _child(self, module: str, args: list[str], env: dict[str, str]) -> ChildProcess:
        child = ChildProcess.python_module(
            module, module, args, log_path=self.log_dir / f"{module}.log", env={**os.environ, **env}
        )
        self.children.append(child.start())
        return child

    @staticmethod
    def _alive(child: ChildProcess) -> bool:
        if child.returncode is not None:
            raise DemoError(f"{child.name} exited with code {child.returncode}:\n{child.log_tail()}")
        return True

    def connect(self) -> None:
        ha_channel = grpc.insecure_channel(self.ha_address)
        sync_channel = grpc.insecure_channel(self.sync_address)
        self.channels += [ha_channel, sync_channel]
        self.ha = ha_service_pb2_grpc.HaPolicyServiceStub(ha_channel)
        self.sync = sync_service_pb2_grpc.HypervisorSyncServiceStub(sync_channel)

    def call(self, method: Callable[..., T], request: Any) -> T:
        return method(request, metadata=self.metadata, timeout=30)

    def master_url(self, cluster: DemoCluster) -> str:
        return str(self.pools[cluster.pool]["master_url"]).rstrip("/")

    def register_pools(self) -> None:
        patch = ha_service_pb2.GlobalSettingsPatch(native_ha_enabled=True)
        request = ha_service_pb2.UpdateSettingsRequest(request_id="demo-settings")
        getattr(request, "global").CopyFrom(patch)
        self.call(self.ha.UpdateSettings, request)
        self.console.print("operator: xenserver.native.ha.enabled = true (UpdateSettings)")
        for cluster in (NATIVE, OLD):
            self.call(
                self.sync.RegisterPool,
                sync_service_pb2.RegisterPoolRequest(
                    cluster_id=cluster.cluster_id,
                    master_url=self.master_url(cluster),
                    credentials=sync_service_pb2.XapiCredentials(username=XAPI_USER, password=XAPI_PASSWORD),
                    request_id=f"demo-register-{cluster.cluster_id}",
                ),
            )
        for cluster in (NATIVE, OLD):
            pool = poll(partial(self._watched_pool, cluster.cluster_id), 60, f"pool {cluster.cluster_id} synced")
            wire = "JSON-RPC" if pool.sync_status.wire_format == sync_service_pb2.WIRE_FORMAT_JSON_RPC else "XML-RPC"
            self.console.print(
                f"operator: registered pool {pool.name} as cluster {cluster.cluster_id} "
                f"({pool.version.product_brand} {pool.version.product_version}, pool HA "
                f"{'on' if pool.ha.ha_enabled else 'off'}); sync_service follows it over {wire}"
            )

    def _watched_pool(self, cluster_id: str) -> sync_service_pb2.Pool | None:
        pool = self.call(self.sync.GetPool, sync_service_pb2.GetPoolRequest(cluster_id=cluster_id)).pool
        state = pool.sync_status
        watching = state.state == sync_service_pb2.SYNC_STATE_WATCHING and state.HasField("last_full_sync_time")
        return pool if watching else None

    # --- the scenario -----------------------------------------------------------------------------------------------

    def follow_streams(self) -> tuple[MirrorChanges, HaEvents]:
        hosts = self.call(self.sync.ListHosts, sync_service_pb2.ListHostsRequest(page_size=1000))
        host_names = {host.uuid: host.name for host in hosts.hosts}
        mirror = MirrorChanges(self.timeline, [vm.name for vm in DEMO_VMS], host_names)
        ha_events = HaEvents(self.timeline, lambda: mirror.host_names)
        vms = self.call(self.sync.ListVms, sync_service_pb2.ListVmsRequest(page_size=1))
        since_changes = min(vms.revision, hosts.revision)
        since_events = self.call(self.ha.ListHaActions, ha_service_pb2.ListHaActionsRequest(page_size=1)).revision
        self.followers.append(follow_changes(self.sync, self.metadata, since_changes, mirror))
        self.followers.append(follow_ha_events(self.ha, self.metadata, since_events, ha_events))
        return mirror, ha_events

    def deploy(self, vm: DemoVm) -> None:
        cluster = vm.cluster
        decision = self.call(
            self.ha.DecideVmDeployment,
            ha_service_pb2.DecideVmDeploymentRequest(
                cluster_id=cluster.cluster_id,
                instance_name=vm.name,
                vm_type=common_pb2.VM_TYPE_USER,
                offering_ha_enabled=vm.ha,
                request_id=f"demo-deploy-{vm.name}",
            ),
        ).decision
        mode = common_pb2.HaMode.Name(decision.mode).removeprefix("HA_MODE_")
        restarter = ha_service_pb2.Restarter.Name(decision.restarter).removeprefix("RESTARTER_")
        offering = "HA offering" if vm.ha else "non-HA offering"
        priority = decision.ha_restart_priority or "(none)"
        warnings = f"; warnings: {', '.join(w.code for w in decision.warnings)}" if decision.warnings else ""
        self.timeline.add(
            cluster.cluster_id,
            "CloudStack",
            f"deploy {vm.name} ({offering}): DecideVmDeployment -> {mode}, ha_restart_priority {priority}, "
            f"restarted by {restarter}{warnings}",
        )
        url = self.master_url(cluster)
        # CloudStack creates the VM with the decided HA configuration (here through the simulator's control
        # interface, which stands for VM.create + VM.set_ha_restart_priority/order/start_delay).
        spec = {
            "name": vm.name,
            "power_state": "Halted",
            "memory_gib": 2,
            "ha_restart_priority": decision.ha_restart_priority,
            "order": decision.order,
            "start_delay": decision.start_delay_seconds,
        }
        sim_control(url, "sim.add_vms", 1, spec)
        xapi = Xapi(url)
        try:
            xapi.start_on(vm.name, cluster.crash_host)
        finally:
            xapi.close()
        # As CloudStack marks a VM Running once its start job is done: after ha_service observed it running,
        # so the wanted state never meets a stale Halted.
        poll(partial(self._observed_running, vm), 60, f"ha_service to observe {vm.name} running")
        self.call(
            self.ha.SetVmWantedState,
            ha_service_pb2.SetVmWantedStateRequest(
                cluster_id=cluster.cluster_id,
                instance_name=vm.name,
                wanted_state=ha_service_pb2.WANTED_STATE_RUNNING,
                request_id=f"demo-wanted-{vm.name}",
            ),
        )
        self.timeline.add(
            cluster.cluster_id, "CloudStack", f"VM.start_on {vm.name} on {cluster.crash_host}; wanted state RUNNING"
        )

    def _observed_running(self, vm: DemoVm) -> bool:
        managed = self.call(
            self.ha.GetManagedVm,
            ha_service_pb2.GetManagedVmRequest(cluster_id=vm.cluster.cluster_id, instance_name=vm.name),
        ).vm
        return managed.observed_power_state == common_pb2.XAPI_POWER_STATE_RUNNING

    def wait_protected(self, vm: DemoVm) -> None:
        def protected() -> bool:
            managed = self.call(
                self.ha.GetManagedVm,
                ha_service_pb2.GetManagedVmRequest(cluster_id=vm.cluster.cluster_id, instance_name=vm.name),
            ).vm
            return managed.protection_state == ha_service_pb2.PROTECTION_STATE_PROTECTED

        poll(protected, 60, f"{vm.name} to be protected by XenServer HA")
        self.timeline.add(
            vm.cluster.cluster_id, "ha_service", f"{vm.name} is PROTECTED: XenServer pool HA will restart it"
        )

    def show_modes(self) -> None:
        for cluster in (NATIVE, OLD):
            status = self.call(
                self.ha.GetClusterHaStatus, ha_service_pb2.GetClusterHaStatusRequest(cluster_id=cluster.cluster_id)
            ).status
            mode = common_pb2.HaMode.Name(status.effective_mode).removeprefix("HA_MODE_")
            fencing = ha_service_pb2.FencingMechanism.Name(status.fencing.mechanism).removeprefix("FENCING_MECHANISM_")
            pinned = ", pinned" if status.pinned else ""
            self.timeline.add(
                cluster.cluster_id,
                "ha_service",
                f"cluster mode {mode}{pinned} ({status.mode_explanation.rstrip('.')}); hosts fenced by {fencing}",
            )

    def crash_hosts(self) -> None:
        for cluster in (NATIVE, OLD):
            sim_control(self.master_url(cluster), "sim.crash_host", cluster.crash_host)
            self.timeline.add(
                cluster.cluster_id, "xapi_sim", f"host {cluster.crash_host} crashed (sim.crash_host)", style="bold red"
            )

    def wait_outcome(self, ha_events: HaEvents) -> ha_service_pb2.HaAction:
        native_vm, old_vm = (vm.name for vm in DEMO_VMS if vm.ha)

        def seen(lines: list[str]) -> bool:
            restarted = any("VM_RESTARTED_BY_HYPERVISOR" in line and native_vm in line for line in lines)
            action = any("RESTART_VM action" in line and old_vm in line for line in lines)
            return restarted and action

        if not self.timeline.wait_for(seen, self.args.scenario_timeout):
            raise DemoError(
                f"the expected outcome did not show within {self.args.scenario_timeout:.0f} s "
                f"(VM_RESTARTED_BY_HYPERVISOR for {native_vm}, RESTART_VM for {old_vm}); "
                f"see the logs in {self._shown(self.log_dir)}"
            )
        return next(
            action
            for action in ha_events.pending_actions()
            if action.instance_name == old_vm and action.kind == ha_service_pb2.HA_ACTION_KIND_RESTART_VM
        )

    def carry_out(self, action: ha_service_pb2.HaAction) -> None:
        """What CloudStack does with RESTART_VM (host dead): fence the host, reset the VM's power state, start it
        elsewhere, acknowledge. xapi_sim has no VM.power_state_reset, so its control interface resets the record."""
        url = self.master_url(OLD)
        sim_control(url, "sim.change_vm", action.instance_name, "power_state", "Halted")
        sim_control(url, "sim.change_vm", action.instance_name, "resident_on", "OpaqueRef:NULL")
        xapi = Xapi(url)
        try:
            xapi.start_on(action.instance_name, OLD.spare_host)
        finally:
            xapi.close()
        self.timeline.add(
            OLD.cluster_id,
            "CloudStack",
            f"carried out RESTART_VM: fenced {OLD.crash_host}, reset {action.instance_name}'s power state, "
            f"VM.start_on {OLD.spare_host}",
        )
        acked = self.call(
            self.ha.AckHaAction,
            ha_service_pb2.AckHaActionRequest(
                action_id=action.action_id,
                outcome=ha_service_pb2.HA_ACTION_STATE_SUCCEEDED,
                message=f"restarted on {OLD.spare_host}",
                request_id=f"demo-ack-{action.action_id}",
            ),
        ).action
        state = ha_service_pb2.HaActionState.Name(acked.state).removeprefix("HA_ACTION_STATE_")
        self.timeline.add(OLD.cluster_id, "CloudStack", f"AckHaAction {acked.action_id}: {state}")

    def summary(self) -> None:
        for cluster in (NATIVE, OLD):
            actions = self.call(
                self.ha.ListHaActions,
                ha_service_pb2.ListHaActionsRequest(cluster_id=cluster.cluster_id, page_size=100),
            ).actions
            listed = ", ".join(
                f"{ha_service_pb2.HaActionKind.Name(a.kind).removeprefix('HA_ACTION_KIND_')} {a.instance_name}"
                for a in actions
            )
            self.timeline.add(
                cluster.cluster_id,
                "demo",
                f"CloudStack actions in this cluster: {len(actions)}{f' ({listed})' if listed else ''}",
            )
        native_vm, old_vm = (vm.name for vm in DEMO_VMS if vm.ha)
        self.timeline.add(
            "",
            "demo",
            f"{FINAL_LINE}: XenServer restarted {native_vm} by itself (VM_RESTARTED_BY_HYPERVISOR, no action); "
            f"CloudStack restarted {old_vm} on ha_service's RESTART_VM; the non-HA VMs were left alone.",
            style="bold",
        )

    def run_scenario(self) -> None:
        self.timeline.note("\nTimeline", style="bold underline")
        _, ha_events = self.follow_streams()
        for vm in DEMO_VMS:
            self.deploy(vm)
        self.wait_protected(next(vm for vm in DEMO_VMS if vm.ha and vm.cluster is NATIVE))
        self.show_modes()
        time.sleep(self.args.pace)  # room to read before the failures
        self.crash_hosts()
        action = self.wait_outcome(ha_events)
        time.sleep(self.args.pace)
        self.carry_out(action)
        self.summary()

    # --- after the scenario -----------------------------------------------------------------------------------------

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    def print_explore(self) -> None:
        xsha = Path(sys.executable).with_name("xsha")
        command = self._shown(xsha) if xsha.exists() else f"{sys.executable} -m xsha_cli"
        token_file = self._shown(self.token_file)
        flags = f"--ha-address {self.ha_address} --sync-address {self.sync_address} --token-file {token_file}"
        lines = [
            "",
            "xsha keeps running. Explore it from another terminal:",
            "",
            f"  export XSHA_HA_ADDRESS={self.ha_address} XSHA_SYNC_ADDRESS={self.sync_address} "
            f"XSHA_TOKEN_FILE={token_file}",
            f"  {command} clusters status",
            f"  {command} clusters status {NATIVE.cluster_id}",
            f"  {command} pools list",
            f"  {command} vms list --cluster {NATIVE.cluster_id} --name-prefix i-2-1",
            f"  {command} vms managed",
            f"  {command} actions list",
            f"  {command} watch events --since 0",
            f"  {command} fencing {OLD.cluster_id}",
            "",
            f"  or with flags: {command} {flags} clusters status",
            "",
            f"Metrics: http://{self.ha_ports.metrics}/metrics (ha_service), "
            f"http://{self.sync_ports.metrics}/metrics (sync_service)",
            f"Logs: {self._shown(self.log_dir)}/   Data: {self._shown(self.data_dir)}/",
            "Press Ctrl-C to stop.",
        ]
        self.console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)

    def shutdown(self) -> None:
        for follower in self.followers:
            follower.stop()
        for channel in self.channels:
            channel.close()
        for child in reversed(self.children):
            code = child.stop()
            self.console.print(f"stopped {child.name} (exit code {code})", markup=False)


def _raise_interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    raise StopRequestedError(signal.Signals(signum).name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m xsha_demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="databases, keys, logs (reset)")
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="xapi_sim scenario")
    parser.add_argument("--ha-port", type=int, default=DEFAULT_HA_PORT, help="ha_service port when free")
    parser.add_argument("--sync-port", type=int, default=DEFAULT_SYNC_PORT, help="sync_service port when free")
    parser.add_argument("--pace", type=float, default=1.5, help="seconds of pause between the scenario's acts")
    parser.add_argument("--scenario-timeout", type=float, default=90.0, help="seconds to wait for the outcome")
    parser.add_argument(
        "--exit-after-scenario", action="store_true", help="stop everything after the timeline instead of waiting"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False)
    demo = Demo(args, console)
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    code = 0
    try:
        console.rule("xsha demo: native XenServer HA for Apache CloudStack")
        demo.prepare_data_dir()
        demo.start_children()
        demo.connect()
        demo.register_pools()
        demo.run_scenario()
        demo.print_explore()
        if not args.exit_after_scenario:
            while True:
                time.sleep(1)
    except StopRequestedError:
        console.print("\nstopping...", markup=False)
    except (DemoError, ProcessFailedError, grpc.RpcError, XenAPI.Failure, OSError) as error:
        message = error.details() if isinstance(error, grpc.Call) else str(error)
        console.print(f"\n[red]demo failed:[/] {message}")
        console.print(f"logs: {demo.log_dir}", markup=False)
        code = 1
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.shutdown()
    return code
