"""XAPI method dispatch: names (`Class.method` / `Class_method`), arity, session checks, and the handlers.

Every class gets get_all, get_all_records, get_record, get_by_uuid and a get_<field> per record field; the
behaviour (power operations, HA setters, events) lives in pool.py / model.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from xapi_sim import errors, records
from xapi_sim.errors import XapiError
from xapi_sim.model import CLASS_BY_EVENT_NAME, CLASSES, SimObject, parse_subscription
from xapi_sim.pool import Session, SimPool, int_param


@dataclass(slots=True)
class CallContext:
    pool: SimPool
    host_ref: str
    wire: str  # "xmlrpc" or "jsonrpc"
    session: str = ""


Handler = Callable[..., Any]


class Method(NamedTuple):
    fn: Handler
    min_params: int  # counting the session parameter, as xapi does
    max_params: int
    needs_session: bool


REGISTRY: dict[str, Method] = {}


def xapi(
    name: str, params: int, *, max_params: int | None = None, session: bool = True
) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        REGISTRY[name] = Method(fn, params, params if max_params is None else max_params, session)
        return fn

    return register


def _resolve_name(method: str) -> str:
    """`VM_get_all` -> `VM.get_all` (the longest class-name prefix wins: host_metrics_* is not host.metrics_*)."""
    if "." in method:
        return method
    for cls in _CLASS_PREFIXES:
        if method.startswith(cls + "_"):
            return cls + "." + method[len(cls) + 1 :]
    return method


def dispatch(ctx: CallContext, method: str, params: list[Any]) -> Any:
    name = _resolve_name(method)
    entry = REGISTRY.get(name)
    if entry is None:
        raise XapiError(errors.MESSAGE_METHOD_UNKNOWN, method)
    if not entry.min_params <= len(params) <= entry.max_params:
        raise XapiError(errors.MESSAGE_PARAMETER_COUNT_MISMATCH, method, entry.max_params, len(params))
    if entry.needs_session:
        ctx.session = params[0] if isinstance(params[0], str) else ""
        ctx.pool.check_session(params[0])
        return entry.fn(ctx, *params[1:])
    return entry.fn(ctx, *params)


def is_control(method: str) -> bool:
    return method.startswith(("sim.", "sim_"))


# ---------------------------------------------------------------------------------------------- generic getters
def _sample_fields() -> dict[str, list[str]]:
    ref = "OpaqueRef:sample"
    return {
        "VM": list(records.vm_record(uuid_="", name_label="")),
        "host": list(
            records.host_record(
                uuid_="",
                hostname="",
                address="",
                metrics_ref=ref,
                control_domain=ref,
                software_version={},
                api_version=(0, 0),
            )
        ),
        "host_metrics": list(records.host_metrics_record("", 0, 0)),
        "pool": list(
            records.pool_record(
                uuid_="",
                name_label="",
                master=ref,
                ha_enabled=False,
                ha_host_failures_to_tolerate=0,
                ha_allow_overcommit=False,
            )
        ),
        "message": list(records.message_record(uuid_="", name="", priority=0, cls="", obj_uuid="", body="")),
    }


FIELDS = _sample_fields()


def _register_class(cls: str) -> None:
    def get_all(ctx: CallContext) -> list[str]:
        with ctx.pool.store.lock:
            return list(ctx.pool.store.by_class[cls])

    def get_all_records(ctx: CallContext) -> dict[str, SimObject]:
        with ctx.pool.store.lock:
            return dict(ctx.pool.store.by_class[cls])

    def get_record(ctx: CallContext, ref: object) -> SimObject:
        return ctx.pool.store.get(cls, ref)

    def get_by_uuid(ctx: CallContext, uuid_: object) -> str:
        return ctx.pool.store.get_by_uuid(cls, uuid_).ref

    xapi(f"{cls}.get_all", 1)(get_all)
    xapi(f"{cls}.get_all_records", 1)(get_all_records)
    xapi(f"{cls}.get_record", 2)(get_record)
    xapi(f"{cls}.get_by_uuid", 2)(get_by_uuid)
    for field_name in FIELDS[cls]:
        xapi(f"{cls}.get_{field_name}", 2)(_field_getter(cls, field_name))
    if "name_label" in FIELDS[cls] and cls != "pool":

        def get_by_name_label(ctx: CallContext, label: object) -> list[str]:
            with ctx.pool.store.lock:
                return [o.ref for o in ctx.pool.store.by_class[cls].values() if o.rec["name_label"] == label]

        xapi(f"{cls}.get_by_name_label", 2)(get_by_name_label)


def _field_getter(cls: str, field_name: str) -> Handler:
    def getter(ctx: CallContext, ref: object) -> Any:
        return ctx.pool.store.get(cls, ref).rec[field_name]

    return getter


def _register_setters(cls: str, scalars: tuple[str, ...], maps: tuple[str, ...], sets: tuple[str, ...]) -> None:
    for field_name in scalars:
        xapi(f"{cls}.set_{field_name}", 3)(_setter(cls, field_name))
    for field_name in maps:
        xapi(f"{cls}.set_{field_name}", 3)(_setter(cls, field_name))
        xapi(f"{cls}.add_to_{field_name}", 4)(_map_add(cls, field_name))
        xapi(f"{cls}.remove_from_{field_name}", 3)(_map_remove(cls, field_name))
    for field_name in sets:
        xapi(f"{cls}.set_{field_name}", 3)(_setter(cls, field_name))
        singular = field_name[:-1] if field_name.endswith("s") else field_name
        xapi(f"{cls}.add_{field_name}", 3)(_set_add(cls, field_name))
        xapi(f"{cls}.remove_{field_name}", 3)(_set_remove(cls, field_name))
        if singular != field_name:
            xapi(f"{cls}.add_{singular}", 3)(_set_add(cls, field_name))


def _coerce(current: Any, value: Any, field_name: str) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise XapiError(errors.FIELD_TYPE_ERROR, field_name)
        return value
    if isinstance(current, int):
        return int_param(field_name, value)
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise XapiError(errors.FIELD_TYPE_ERROR, field_name)
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(current, list):
        if not isinstance(value, list):
            raise XapiError(errors.FIELD_TYPE_ERROR, field_name)
        return list(value)
    if not isinstance(value, str):
        raise XapiError(errors.FIELD_TYPE_ERROR, field_name)
    return value


def _setter(cls: str, field_name: str) -> Handler:
    def setter(ctx: CallContext, ref: object, value: Any) -> str:
        obj = ctx.pool.store.get(cls, ref)
        ctx.pool.store.modify(obj, {field_name: _coerce(obj.rec[field_name], value, field_name)})
        return ""

    return setter


def _map_add(cls: str, field_name: str) -> Handler:
    def add(ctx: CallContext, ref: object, key: object, value: object) -> str:
        store = ctx.pool.store
        with store.lock:
            obj = store.get(cls, ref)
            current = obj.rec[field_name]
            if key in current:
                raise XapiError("MAP_DUPLICATE_KEY", cls, field_name, ref, key)
            store.modify(obj, {field_name: {**current, str(key): str(value)}})
        return ""

    return add


def _map_remove(cls: str, field_name: str) -> Handler:
    def remove(ctx: CallContext, ref: object, key: object) -> str:
        store = ctx.pool.store
        with store.lock:
            obj = store.get(cls, ref)
            current = obj.rec[field_name]
            if key in current:
                store.modify(obj, {field_name: {k: v for k, v in current.items() if k != key}})
        return ""

    return remove


def _set_add(cls: str, field_name: str) -> Handler:
    def add(ctx: CallContext, ref: object, value: object) -> str:
        store = ctx.pool.store
        with store.lock:
            obj = store.get(cls, ref)
            if value not in obj.rec[field_name]:
                store.modify(obj, {field_name: [*obj.rec[field_name], str(value)]})
        return ""

    return add


def _set_remove(cls: str, field_name: str) -> Handler:
    def remove(ctx: CallContext, ref: object, value: object) -> str:
        store = ctx.pool.store
        with store.lock:
            obj = store.get(cls, ref)
            if value in obj.rec[field_name]:
                store.modify(obj, {field_name: [v for v in obj.rec[field_name] if v != value]})
        return ""

    return remove


for _cls in CLASSES:
    _register_class(_cls)
_register_setters(
    "VM",
    ("name_label", "name_description", "affinity", "PV_args", "suspend_SR", "ha_always_run"),
    ("other_config", "platform", "xenstore_data", "blocked_operations", "HVM_boot_params", "VCPUs_params"),
    ("tags",),
)
_register_setters("host", ("name_label", "name_description"), ("other_config", "logging"), ("tags",))
_register_setters(
    "pool",
    ("name_label", "name_description", "ha_allow_overcommit", "default_SR", "wlb_enabled"),
    ("other_config", "gui_config", "health_check_config"),
    ("tags",),
)
_register_setters("host_metrics", (), ("other_config",), ())


# ---------------------------------------------------------------------------------------------- session
def _login(ctx: CallContext, local: bool, user: object, password: object, *rest: object) -> str:
    originator = str(rest[1]) if len(rest) > 1 else ""
    ref = ctx.pool.login(ctx.host_ref, user, password, originator, ctx.wire, local=local)
    ctx.session = ref
    return ref


@xapi("session.login_with_password", 2, max_params=4, session=False)
def session_login_with_password(ctx: CallContext, user: object, password: object, *rest: object) -> str:
    return _login(ctx, False, user, password, *rest)


@xapi("session.slave_local_login_with_password", 2, session=False)
def session_slave_local_login(ctx: CallContext, user: object, password: object) -> str:
    # An emergency login on any host, master or not (real xapi uses it when the master is unreachable).
    return _login(ctx, True, user, password)


@xapi("session.logout", 1)
def session_logout(ctx: CallContext) -> str:
    ctx.pool.logout(ctx.session)
    return ""


@xapi("session.local_logout", 1)
def session_local_logout(ctx: CallContext) -> str:
    ctx.pool.logout(ctx.session)
    return ""


def _other_session(ctx: CallContext, ref: object) -> Session:
    session = ctx.pool.sessions.get(ref) if isinstance(ref, str) else None
    if session is None:
        raise XapiError(errors.HANDLE_INVALID, "session", ref)
    return session


@xapi("session.get_this_host", 2)
def session_get_this_host(ctx: CallContext, ref: object) -> str:
    return _other_session(ctx, ref).host_ref


@xapi("session.get_uuid", 2)
def session_get_uuid(ctx: CallContext, ref: object) -> str:
    return _other_session(ctx, ref).uuid


@xapi("session.get_originator", 2)
def session_get_originator(ctx: CallContext, ref: object) -> str:
    return _other_session(ctx, ref).originator


@xapi("session.get_is_local_superuser", 2)
def session_get_is_local_superuser(ctx: CallContext, ref: object) -> bool:
    return _other_session(ctx, ref).user == "root"


# ---------------------------------------------------------------------------------------------- events
@xapi("event.from", 4)
def event_from(ctx: CallContext, classes: object, token: object, timeout: object) -> dict[str, Any]:
    if not isinstance(classes, list):
        raise XapiError(errors.FIELD_TYPE_ERROR, "classes")
    try:
        wait = float(timeout)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise XapiError(errors.FIELD_TYPE_ERROR, "timeout") from None
    sub = parse_subscription(classes)
    pool = ctx.pool
    store = pool.store
    deadline = time.monotonic() + max(0.0, wait)
    with store.cond:
        cut = store.parse_token(token)
        while True:
            pool.check_session(ctx.session)  # a session destroyed during the wait -> SESSION_INVALID
            events = store.list_all(sub) if cut is None else store.changes_since(sub, cut)
            remaining = deadline - time.monotonic()
            if events or cut is None or remaining <= 0 or pool.stopping.is_set():
                break
            store.cond.wait(remaining)
        return {"events": events, "valid_ref_counts": store.valid_ref_counts(sub), "token": store.token()}


@xapi("event.inject", 3)
def event_inject(ctx: CallContext, cls: object, ref: object) -> str:
    store = ctx.pool.store
    name = CLASS_BY_EVENT_NAME.get(cls.lower()) if isinstance(cls, str) else None
    if name is None:
        raise XapiError(errors.HANDLE_INVALID, cls, ref)
    with store.lock:
        store.touch(store.get(name, ref))
        return store.token()


# ---------------------------------------------------------------------------------------------- VM
def _vm(ctx: CallContext, ref: object) -> SimObject:
    return ctx.pool.store.get("VM", ref)


def _host(ctx: CallContext, ref: object) -> SimObject:
    return ctx.pool.store.get("host", ref)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise XapiError(errors.FIELD_TYPE_ERROR, name)
    return value


@xapi("VM.set_ha_restart_priority", 3)
def vm_set_ha_restart_priority(ctx: CallContext, ref: object, value: object) -> str:
    ctx.pool.set_ha_restart_priority(_vm(ctx, ref), value)
    return ""


@xapi("VM.set_order", 3)
def vm_set_order(ctx: CallContext, ref: object, value: object) -> str:
    ctx.pool.set_vm_int(_vm(ctx, ref), "order", value)
    return ""


@xapi("VM.set_start_delay", 3)
def vm_set_start_delay(ctx: CallContext, ref: object, value: object) -> str:
    ctx.pool.set_vm_int(_vm(ctx, ref), "start_delay", value)
    return ""


@xapi("VM.set_shutdown_delay", 3)
def vm_set_shutdown_delay(ctx: CallContext, ref: object, value: object) -> str:
    ctx.pool.set_vm_int(_vm(ctx, ref), "shutdown_delay", value)
    return ""


@xapi("VM.start", 4)
def vm_start(ctx: CallContext, ref: object, start_paused: object, force: object) -> str:
    ctx.pool.start_vm(_vm(ctx, ref), paused=_bool("start_paused", start_paused))
    return ""


@xapi("VM.start_on", 5)
def vm_start_on(ctx: CallContext, ref: object, host: object, start_paused: object, force: object) -> str:
    ctx.pool.start_vm(_vm(ctx, ref), _host(ctx, host), paused=_bool("start_paused", start_paused))
    return ""


@xapi("VM.clean_shutdown", 2)
def vm_clean_shutdown(ctx: CallContext, ref: object) -> str:
    ctx.pool.shutdown_vm(_vm(ctx, ref), hard=False)
    return ""


@xapi("VM.hard_shutdown", 2)
def vm_hard_shutdown(ctx: CallContext, ref: object) -> str:
    ctx.pool.shutdown_vm(_vm(ctx, ref), hard=True)
    return ""


@xapi("VM.shutdown", 2)
def vm_shutdown(ctx: CallContext, ref: object) -> str:
    ctx.pool.shutdown_vm(_vm(ctx, ref), hard=True)
    return ""


@xapi("VM.clean_reboot", 2)
def vm_clean_reboot(ctx: CallContext, ref: object) -> str:
    ctx.pool.reboot_vm(_vm(ctx, ref), hard=False)
    return ""


@xapi("VM.hard_reboot", 2)
def vm_hard_reboot(ctx: CallContext, ref: object) -> str:
    ctx.pool.reboot_vm(_vm(ctx, ref), hard=True)
    return ""


@xapi("VM.suspend", 2)
def vm_suspend(ctx: CallContext, ref: object) -> str:
    ctx.pool.suspend_vm(_vm(ctx, ref))
    return ""


@xapi("VM.resume", 4)
def vm_resume(ctx: CallContext, ref: object, start_paused: object, force: object) -> str:
    ctx.pool.resume_vm(_vm(ctx, ref), paused=_bool("start_paused", start_paused))
    return ""


@xapi("VM.resume_on", 5)
def vm_resume_on(ctx: CallContext, ref: object, host: object, start_paused: object, force: object) -> str:
    ctx.pool.resume_vm(_vm(ctx, ref), _host(ctx, host), paused=_bool("start_paused", start_paused))
    return ""


@xapi("VM.pool_migrate", 4)
def vm_pool_migrate(ctx: CallContext, ref: object, host: object, options: object) -> str:
    ctx.pool.migrate_vm(_vm(ctx, ref), _host(ctx, host))
    return ""


@xapi("VM.clone", 3)
def vm_clone(ctx: CallContext, ref: object, new_name: object) -> str:
    return ctx.pool.clone_vm(_vm(ctx, ref), str(new_name)).ref


@xapi("VM.copy", 4)
def vm_copy(ctx: CallContext, ref: object, new_name: object, sr: object) -> str:
    return ctx.pool.clone_vm(_vm(ctx, ref), str(new_name)).ref


@xapi("VM.create", 2)
def vm_create(ctx: CallContext, fields: object) -> str:
    if not isinstance(fields, dict):
        raise XapiError(errors.FIELD_TYPE_ERROR, "args")
    return ctx.pool.create_vm(fields).ref


@xapi("VM.destroy", 2)
def vm_destroy(ctx: CallContext, ref: object) -> str:
    ctx.pool.destroy_vm(_vm(ctx, ref))
    return ""


# ---------------------------------------------------------------------------------------------- pool
@xapi("pool.enable_ha", 3)
def pool_enable_ha(ctx: CallContext, heartbeat_srs: object, configuration: object) -> str:
    if not isinstance(heartbeat_srs, list) or not isinstance(configuration, dict):
        raise XapiError(errors.FIELD_TYPE_ERROR, "configuration")
    ctx.pool.enable_ha(heartbeat_srs, configuration)
    return ""


@xapi("pool.disable_ha", 1)
def pool_disable_ha(ctx: CallContext) -> str:
    ctx.pool.disable_ha()
    return ""


@xapi("pool.ha_compute_max_host_failures_to_tolerate", 1)
def pool_ha_compute_max(ctx: CallContext) -> int:
    with ctx.pool.store.lock:
        return max(ctx.pool.plan_max_failures(), 0)


@xapi("pool.ha_failover_plan_exists", 2)
def pool_ha_failover_plan_exists(ctx: CallContext, n: object) -> bool:
    with ctx.pool.store.lock:
        return ctx.pool.plan_max_failures() >= int_param("n", n)


@xapi("pool.set_ha_host_failures_to_tolerate", 3)
def pool_set_ha_host_failures_to_tolerate(ctx: CallContext, ref: object, value: object) -> str:
    ctx.pool.store.get("pool", ref)
    ctx.pool.set_ha_host_failures_to_tolerate(value)
    return ""


# ---------------------------------------------------------------------------------------------- host
@xapi("host.compute_free_memory", 2)
def host_compute_free_memory(ctx: CallContext, ref: object) -> int:
    with ctx.pool.store.lock:
        return max(ctx.pool.free_memory(_host(ctx, ref)), 0)


@xapi("host.get_servertime", 2)
def host_get_servertime(ctx: CallContext, ref: object) -> records.XapiDateTime:
    _host(ctx, ref)
    return records.XapiDateTime.now()


@xapi("host.enable", 2)
def host_enable(ctx: CallContext, ref: object) -> str:
    ctx.pool.store.modify(_host(ctx, ref), {"enabled": True})
    return ""


@xapi("host.disable", 2)
def host_disable(ctx: CallContext, ref: object) -> str:
    ctx.pool.store.modify(_host(ctx, ref), {"enabled": False})
    return ""


# ---------------------------------------------------------------------------------------------- message
@xapi("message.create", 6)
def message_create(
    ctx: CallContext, name: object, priority: object, cls: object, obj_uuid: object, body: object
) -> str:
    return ctx.pool.add_message(str(name), int_param("priority", priority), str(cls), str(obj_uuid), str(body)).ref


@xapi("message.destroy", 2)
def message_destroy(ctx: CallContext, ref: object) -> str:
    ctx.pool.store.delete(ctx.pool.store.get("message", ref))
    return ""


@xapi("message.get_since", 2)
def message_get_since(ctx: CallContext, since: object) -> dict[str, SimObject]:
    cut = str(since)[:17]
    with ctx.pool.store.lock:
        return {ref: m for ref, m in ctx.pool.store.by_class["message"].items() if str(m.rec["timestamp"])[:17] > cut}


_CLASS_PREFIXES: list[str] = sorted({name.split(".", 1)[0] for name in REGISTRY} | {"sim"}, key=len, reverse=True)
