"""JSON-RPC codec (v1.0 and v2.0): orjson, with cached per-object record fragments spliced in as-is."""

from __future__ import annotations

from typing import Any

import orjson

from xapi_sim.errors import MalformedRequestError, XapiError
from xapi_sim.model import SimObject, record_for_wire

# Broken on purpose for sim.serve_malformed(vm, "garbage").
_GARBAGE = b'{"uuid": "garbage", "power_state": \x00\x01'


def object_fragment(obj: SimObject) -> bytes:
    frag = obj.json
    if frag is None:
        rec, kind = obj.rec, obj.malformed
        frag = _GARBAGE if kind == "garbage" else orjson.dumps(record_for_wire(rec, kind))
        # Records are replaced, never mutated: cache only if no change raced with the encoding.
        if obj.rec is rec:
            obj.json = frag
    return frag


def _default(value: Any) -> Any:
    if type(value) is SimObject:
        return orjson.Fragment(object_fragment(value))
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def parse_request(body: bytes) -> tuple[str, list[Any], Any, bool]:
    """(method, params, id, is_v2)."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(str(exc)) from exc
    if not isinstance(req, dict) or not isinstance(req.get("method"), str):
        raise MalformedRequestError("not a JSON-RPC request object")
    params = req.get("params", [])
    if not isinstance(params, list):
        raise MalformedRequestError("params must be an array")
    return req["method"], params, req.get("id"), req.get("jsonrpc") == "2.0"


def success(value: Any, req_id: Any, v2: bool) -> bytes:
    if v2:
        return orjson.dumps({"jsonrpc": "2.0", "result": value, "id": req_id}, default=_default)
    return orjson.dumps({"result": value, "error": None, "id": req_id}, default=_default)


def failure(err: XapiError, req_id: Any, v2: bool) -> bytes:
    if v2:
        error = {"code": 1, "message": err.code, "data": err.params}
        return orjson.dumps({"jsonrpc": "2.0", "error": error, "id": req_id})
    return orjson.dumps({"result": None, "error": err.description, "id": req_id})
