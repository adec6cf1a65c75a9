"""The `sim.*` control interface: fault injection and inspection for tests and benchmarks.

Served on every host endpoint beside XAPI, over XML-RPC and JSON-RPC, with the same envelopes. The methods take
no session and act on the pool of the endpoint they are called on. See docs/xapi_sim.md.
"""

from __future__ import annotations

from typing import Any

from xapi_sim import errors
from xapi_sim.api import CallContext, xapi
from xapi_sim.errors import XapiError
from xapi_sim.pool import SimPool, VmSpec


def _number(name: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise XapiError(errors.INVALID_VALUE, name, value) from None


def pool_info(pool: SimPool) -> dict[str, Any]:
    return {
        "name": pool.name,
        "uuid": pool.pool_obj.rec["uuid"],
        "ref": pool.pool_obj.ref,
        "version": pool.version,
        "jsonrpc": pool.jsonrpc,
        "master": pool.master.rec["uuid"],
        "master_url": f"http://{pool.host_address(pool.master)}/",
        "hosts": [
            {
                "name": h.rec["name_label"],
                "uuid": h.rec["uuid"],
                "ref": h.ref,
                "address": pool.host_address(h),
                "url": f"http://{pool.host_address(h)}/",
                "master": h.ref == pool.master_ref,
                "live": pool.is_host_live(h),
            }
            for h in pool.hosts
        ],
    }


@xapi("sim.info", 0, session=False)
def sim_info(ctx: CallContext) -> dict[str, Any]:
    return pool_info(ctx.pool)


@xapi("sim.crash_host", 1, session=False)
def sim_crash_host(ctx: CallContext, host: object) -> str:
    ctx.pool.crash_host(ctx.pool.resolve_host(host))
    return ""


@xapi("sim.restore_host", 1, session=False)
def sim_restore_host(ctx: CallContext, host: object) -> str:
    ctx.pool.restore_host(ctx.pool.resolve_host(host))
    return ""


@xapi("sim.failover_master", 1, session=False)
def sim_failover_master(ctx: CallContext, host: object) -> str:
    ctx.pool.failover_master(ctx.pool.resolve_host(host))
    return ""


@xapi("sim.expire_sessions", 0, session=False)
def sim_expire_sessions(ctx: CallContext) -> int:
    return ctx.pool.expire_sessions()


@xapi("sim.invalidate_tokens", 0, session=False)
def sim_invalidate_tokens(ctx: CallContext) -> str:
    ctx.pool.store.invalidate_tokens()
    return ""


@xapi("sim.restart_xapi", 0, session=False)
def sim_restart_xapi(ctx: CallContext) -> str:
    ctx.pool.xapi_restarted()
    ctx.pool.hooks.drop_connections()
    return ""


@xapi("sim.drop_connections", 0, session=False)
def sim_drop_connections(ctx: CallContext) -> int:
    return ctx.pool.hooks.drop_connections()


@xapi("sim.set_latency", 1, session=False)
def sim_set_latency(ctx: CallContext, seconds: object) -> str:
    ctx.pool.set_latency(_number("seconds", seconds))
    return ""


@xapi("sim.stall", 1, session=False)
def sim_stall(ctx: CallContext, seconds: object) -> str:
    ctx.pool.stall(_number("seconds", seconds))
    return ""


@xapi("sim.unstall", 0, session=False)
def sim_unstall(ctx: CallContext) -> str:
    ctx.pool.unstall()
    return ""


@xapi("sim.serve_malformed", 2, session=False)
def sim_serve_malformed(ctx: CallContext, vm: object, kind: object) -> str:
    ctx.pool.serve_malformed(ctx.pool.resolve_vm(vm), str(kind))
    return ""


@xapi("sim.change_vm", 3, session=False)
def sim_change_vm(ctx: CallContext, vm: object, field: object, value: object) -> str:
    ctx.pool.change_vm(ctx.pool.resolve_vm(vm), str(field), value)
    return ""


@xapi("sim.call_log", 0, max_params=1, session=False)
def sim_call_log(ctx: CallContext, since: object = 0) -> list[dict[str, Any]]:
    return ctx.pool.calls_since(int(_number("since", since)))


@xapi("sim.clear_call_log", 0, session=False)
def sim_clear_call_log(ctx: CallContext) -> str:
    ctx.pool.call_log.clear()
    return ""


@xapi("sim.set_time_scale", 1, session=False)
def sim_set_time_scale(ctx: CallContext, scale: object) -> str:
    value = _number("scale", scale)
    if value < 0:
        raise XapiError(errors.INVALID_VALUE, "scale", scale)
    ctx.pool.time_scale = value
    return ""


@xapi("sim.set_jsonrpc", 1, session=False)
def sim_set_jsonrpc(ctx: CallContext, enabled: object) -> str:
    ctx.pool.jsonrpc = bool(enabled)
    return ""


@xapi("sim.add_vms", 1, max_params=2, session=False)
def sim_add_vms(ctx: CallContext, count: object, params: object = None) -> list[str]:
    try:
        spec = VmSpec.from_dict(dict(params) if isinstance(params, dict) else {})
    except ValueError as exc:
        raise XapiError(errors.INVALID_VALUE, "params", str(exc)) from None
    return [vm.ref for vm in ctx.pool.add_vms(int(_number("count", count)), spec)]


@xapi("sim.mutate_vms", 1, max_params=3, session=False)
def sim_mutate_vms(ctx: CallContext, count: object, rate: object = 0, kind: object = "other_config") -> int:
    n = int(_number("count", count))
    per_second = _number("rate", rate)
    if str(kind) not in ("other_config", "power_state"):
        raise XapiError(errors.INVALID_VALUE, "kind", kind)
    if per_second > 0:
        ctx.pool.mutate_vms_at_rate(n, per_second, str(kind))
        return n
    return ctx.pool.mutate_vms(n, str(kind))


@xapi("sim.stats", 0, session=False)
def sim_stats(ctx: CallContext) -> dict[str, Any]:
    return ctx.pool.summary()
