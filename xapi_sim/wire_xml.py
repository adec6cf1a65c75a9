"""XML-RPC codec: stdlib parsing for (small) requests, a hand-written encoder for responses.

Responses are assembled from per-object cached `<value>` fragments, so serving 10,000 records costs a join,
not 10,000 marshalling passes. Like xapi, strings and ints are untyped `<value>`s (ints as decimal strings).
"""

from __future__ import annotations

import xmlrpc.client
from typing import Any

from xapi_sim.errors import MalformedRequestError, XapiError
from xapi_sim.model import SimObject, record_for_wire
from xapi_sim.records import XapiDateTime

_HEAD = "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n"
_TAIL = "\n</param>\n</params>\n</methodResponse>\n"
_SUCCESS = "<value><struct><member><name>Status</name><value>Success</value></member><member><name>Value</name>"
_FAILURE = (
    "<value><struct><member><name>Status</name><value>Failure</value></member>"
    "<member><name>ErrorDescription</name><value><array><data>"
)
# Broken on purpose for sim.serve_malformed(vm, "garbage"): an unclosed element and an undefined entity.
_GARBAGE = "<value><struct><member><name>uuid</name><value>&garbage;<unclosed></value></struct></value>"


def _escape(s: str) -> str:
    if "&" in s or "<" in s or ">" in s:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return s


def encode(value: Any, out: list[str]) -> None:
    t = type(value)
    if t is str:
        out.append("<value>" + _escape(value) + "</value>")
    elif t is SimObject:
        out.append(object_fragment(value))
    elif t is dict:
        out.append("<value><struct>")
        for key, item in value.items():
            out.append("<member><name>" + _escape(str(key)) + "</name>")
            encode(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif t is list or t is tuple:
        out.append("<value><array><data>")
        for item in value:
            encode(item, out)
        out.append("</data></array></value>")
    elif t is bool:
        out.append("<value><boolean>1</boolean></value>" if value else "<value><boolean>0</boolean></value>")
    elif t is int:
        out.append("<value>" + str(value) + "</value>")  # XAPI ints travel as strings
    elif t is float:
        out.append("<value><double>" + repr(value) + "</double></value>")
    elif t is XapiDateTime:
        out.append("<value><dateTime.iso8601>" + value + "</dateTime.iso8601></value>")
    elif value is None:
        out.append("<value></value>")
    elif isinstance(value, str):
        out.append("<value>" + _escape(value) + "</value>")
    else:
        raise TypeError(f"cannot encode {t.__name__} as XML-RPC")


_STRUCT_OPEN = "<value><struct>"
_STRUCT_CLOSE = "</struct></value>"
_MISSING = object()


def _member(key: str, value: Any) -> str:
    out = ["<member><name>" + _escape(str(key)) + "</name>"]
    encode(value, out)
    out.append("</member>")
    return "".join(out)


def object_fragment(obj: SimObject) -> str:
    """The object's record as a `<value>`. Records are replaced, never mutated, and a change replaces only some
    fields, so the member fragments of the last encoding are kept (`obj.xml`) and only members whose value is not
    the very object encoded last time are encoded again: a VM whose power state flipped costs one member, not 90."""
    rec, kind = obj.rec, obj.malformed
    if kind == "garbage":
        return _GARBAGE
    if kind is not None:
        parts: list[str] = []
        encode(record_for_wire(rec, kind), parts)
        return "".join(parts)
    state = obj.xml
    if state is not None:
        base, previous, index = state
        if base is rec:
            return _STRUCT_OPEN + "".join(previous) + _STRUCT_CLOSE
        if len(base) == len(rec):
            changed = [key for key, value in rec.items() if base.get(key, _MISSING) is not value]
            if all(key in index for key in changed):
                members = previous.copy()
                for key in changed:
                    members[index[key]] = _member(key, rec[key])
                obj.xml = (rec, members, index)
                return _STRUCT_OPEN + "".join(members) + _STRUCT_CLOSE
    members = [_member(key, value) for key, value in rec.items()]
    obj.xml = (rec, members, {key: position for position, key in enumerate(rec)})
    return _STRUCT_OPEN + "".join(members) + _STRUCT_CLOSE


def success(value: Any) -> bytes:
    parts = [_HEAD, _SUCCESS]
    encode(value, parts)
    parts.append("</member></struct></value>")
    parts.append(_TAIL)
    return "".join(parts).encode("utf-8")


def failure(err: XapiError) -> bytes:
    parts = [_HEAD, _FAILURE]
    for item in err.description:
        parts.append("<value>" + _escape(item) + "</value>")
    parts.append("</data></array></value></member></struct></value>")
    parts.append(_TAIL)
    return "".join(parts).encode("utf-8")


def parse_request(body: bytes) -> tuple[str, list[Any]]:
    try:
        params, method = xmlrpc.client.loads(body)
    except Exception as exc:  # any parser error means a malformed request
        raise MalformedRequestError(str(exc)) from exc
    if not isinstance(method, str) or not method:
        raise MalformedRequestError("no methodName")
    return method, list(params)
