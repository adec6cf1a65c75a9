"""Hypothesis strategies for the request of every xsha RPC, built from the proto descriptors, and a generic caller.

Requests mix plausible values (so that some get past validation and reach the logic) with the bad-input classes of
issue 9: oversized strings, empty strings, odd unicode (NUL, RTL overrides, emoji, noncharacters; never surrogates,
which protobuf cannot encode), unknown enum numbers, absurd numbers, timestamps and durations out of protobuf's
range, unknown ids, oversized repeated fields. Every generated request serialises (the Python API refuses nothing
we set), so a server sees exactly these bytes.

    for service, method in all_rpc_methods():
        @given(request_strategy(method))
        def check(request): assert_outcome_allowed(method, invoke(channel, method, request, metadata))

`labelled_request_strategy` also says which input classes a request carries (for `hypothesis.event` or `find`).
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

from xsha_api.v1 import ha_service_pb2, sync_service_pb2

__all__ = [
    "DEFAULT_REQUEST_BUDGET",
    "SERVICES",
    "InputClass",
    "Outcome",
    "all_rpc_methods",
    "invoke",
    "is_streaming",
    "labelled_request_strategy",
    "method_by_name",
    "method_path",
    "request_class",
    "request_strategy",
    "response_class",
]

FieldDescriptor = _descriptor.FieldDescriptor
MessageDescriptor = _descriptor.Descriptor
MethodDescriptor = _descriptor.MethodDescriptor

SERVICES: dict[str, _descriptor.ServiceDescriptor] = {
    "HypervisorSyncService": sync_service_pb2.DESCRIPTOR.services_by_name["HypervisorSyncService"],
    "HaPolicyService": ha_service_pb2.DESCRIPTOR.services_by_name["HaPolicyService"],
}

# Bytes of oversized content one request may carry. gRPC's default receive limit is 4 MiB; staying well below it
# means an oversized request reaches the service's validation instead of being refused by the transport.
DEFAULT_REQUEST_BUDGET = 2 * 1024 * 1024
OVERSIZED_MIN = 10 * 1024
OVERSIZED_MAX = 1024 * 1024
DEFAULT_MAX_DEPTH = 4

# google.protobuf.Timestamp / Duration valid ranges (from their .proto documentation).
TIMESTAMP_MIN_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
TIMESTAMP_MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
DURATION_MAX_SECONDS = 315_576_000_000  # about 10,000 years
NANOS_PER_SECOND = 1_000_000_000


class InputClass(StrEnum):
    """What kind of input a generated request carries somewhere (a request usually carries several)."""

    PLAUSIBLE = "plausible"
    OVERSIZED_STRING = "oversized_string"
    EMPTY_STRING = "empty_string"
    ODD_TEXT = "odd_text"
    UNKNOWN_ID = "unknown_id"
    UNSPECIFIED_ENUM = "unspecified_enum"
    UNKNOWN_ENUM = "unknown_enum"
    ABSURD_NUMBER = "absurd_number"
    NEGATIVE_PAGE_SIZE = "negative_page_size"
    EXTREME_TIME = "extreme_time"
    OUT_OF_RANGE_TIME = "out_of_range_time"
    MANY_ITEMS = "many_items"


# --------------------------------------------------------------------------------------------------- methods


def all_rpc_methods() -> list[tuple[str, MethodDescriptor]]:
    """Every RPC of both services, as ``(service name, method descriptor)``, in proto order."""
    return [(name, method) for name, service in SERVICES.items() for method in service.methods]


def method_by_name(name: str) -> MethodDescriptor:
    """A method by ``"Service.Method"``, ``"Service/Method"`` or a bare method name (unique across services)."""
    service_name, _, method_name = name.replace("/", ".").rpartition(".")
    matches = [
        method
        for service, method in all_rpc_methods()
        if method.name == method_name and service_name in ("", service, SERVICES[service].full_name)
    ]
    if len(matches) != 1:
        raise KeyError(f"no single RPC named {name!r}")
    return matches[0]


def method_path(method: MethodDescriptor) -> str:
    """The HTTP/2 path gRPC uses, ``/cloudstack.xsha.v1.Service/Method``."""
    return f"/{method.containing_service.full_name}/{method.name}"


def is_streaming(method: MethodDescriptor) -> bool:
    return bool(method.server_streaming or method.client_streaming)


def request_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.input_type)


def response_class(method: MethodDescriptor) -> type[Message]:
    return message_factory.GetMessageClass(method.output_type)


# ---------------------------------------------------------------------------------------------------- values

# Text that breaks naive code: NUL, bidi overrides, zero-width and combining marks, emoji sequences,
# noncharacters, the last code point, BOM, CR/LF, format strings, SQL and path injection.
_ODD_TEXTS: tuple[str, ...] = (
    "\x00",
    "i-2-10-VM\x00",
    "a\x00b",
    "\u202ei-2-10-VM",
    "\u200f\u05e9\u05dc\u05d5\u05dd",
    "\u0645\u0631\u062d\u0628\u0627",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "\ufeffcluster-1",
    "\ufffe\uffff",
    "\U0010ffff",
    "e\u0301\u0301\u0301",
    "\u200b",
    "\uff21\uff22\uff23",
    "\u0130\u0131\u00df",
    "line\r\nbreak",
    " ",
    "\t",
    "%s%n%x{0}",
    "' OR '1'='1'; --",
    "../../../../etc/passwd",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
)
_NO_SURROGATES = st.characters(exclude_categories=["Cs"])
_ODD_TEXT = st.one_of(
    st.sampled_from(_ODD_TEXTS),
    st.text(alphabet=_NO_SURROGATES, min_size=1, max_size=40),
)
_UUIDS = st.uuids(version=4).map(str)

# Numbers far from anything sensible, per protobuf integer type.
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32 = (0, 2**32 - 1)
_UINT64 = (0, 2**64 - 1)
_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
}


def _plausible_string(name: str) -> st.SearchStrategy[str]:
    """Values a CloudStack orchestrator could really send for a field of this name."""
    if name.endswith("uuid") or name in ("request_id", "migration_id", "action_id"):
        return _UUIDS
    if "cluster" in name:
        return st.one_of(st.integers(1, 50).map(str), st.integers(1, 50).map("cluster-{}".format))
    if name in ("instance_name", "name"):
        return st.builds(
            "{}-{}-{}-VM".format, st.sampled_from("isvr"), st.integers(1, 20), st.integers(1, 5000)
        ) | st.builds("{}-{}-VM".format, st.sampled_from("svr"), st.integers(1, 500))
    if name == "name_prefix":
        return st.sampled_from(["i-", "s-", "v-", "r-", "i-2-"])
    if name == "master_url":
        return st.one_of(
            st.integers(1024, 65535).map("http://127.0.0.1:{}".format),
            st.sampled_from(["https://xs-master.example.org", "https://10.0.0.1:443", "http://[::1]:8080"]),
        )
    if "ha_restart_priorit" in name:
        return st.sampled_from(["restart", "best-effort", "", "always_restart"])
    if name == "page_token":
        return st.text(alphabet=string.ascii_letters + string.digits + "-_=", max_size=40)
    if name == "username":
        return st.sampled_from(["root", "admin"])
    if name == "ca_bundle_pem":
        return st.sampled_from(["-----BEGIN CERTIFICATE-----\nMIIBnotreallyacert\n-----END CERTIFICATE-----\n", ""])
    if name == "certificate_sha256_fingerprint":
        hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
        return st.one_of(hex64, hex64.map(lambda h: ":".join(h[i : i + 2] for i in range(0, 64, 2)).upper()))
    if name == "product_brand":
        return st.sampled_from(["XenServer", "XCP-ng", "Citrix Hypervisor", "Citrix XenServer"])
    if name.endswith("_version"):
        return st.sampled_from(["6.1.0", "6.2.0", "7.1.2", "8.2.1", "8.3.0", "6.2", "10.0.0"])
    if name == "build_number":
        return st.sampled_from(["70446c", "release/yangtze/master/58", ""])
    return st.text(alphabet=_NO_SURROGATES, max_size=32)


def _plausible_int(name: str, low: int, high: int) -> st.SearchStrategy[int]:
    if name == "page_size":
        return st.integers(0, 200)
    if "revision" in name or name == "expected_version":
        return st.integers(0, 10_000)
    if name == "api_version_major":
        return st.integers(1, 2)
    if name == "api_version_minor":
        return st.integers(0, 21)
    if name == "start_delay_seconds":
        return st.integers(0, 600)
    return st.integers(max(low, 0), min(high, 100))


@dataclass
class _Context:
    """Per-request generation state: the oversized-byte budget left and the input classes used."""

    budget: int
    max_depth: int
    known_values: Mapping[str, st.SearchStrategy[Any]]
    labels: set[InputClass] = field(default_factory=set)

    def oversized_length(self, draw: st.DrawFn) -> int | None:
        """A length in bytes for oversized content within the budget (reserved), None when the budget is spent."""
        high = min(OVERSIZED_MAX, self.budget)
        if high < OVERSIZED_MIN:
            return None
        length = draw(st.integers(OVERSIZED_MIN, high))
        self.budget -= length
        return length


def _draw_string(draw: st.DrawFn, ctx: _Context, name: str) -> str:
    kind = draw(st.sampled_from(["plausible", "plausible", "known", "empty", "oversized", "odd", "unknown_id"]))
    if kind == "known" and name in ctx.known_values:
        value: str = draw(ctx.known_values[name])
        ctx.labels.add(InputClass.PLAUSIBLE)
        return value
    if kind == "empty":
        ctx.labels.add(InputClass.EMPTY_STRING)
        return ""
    if kind == "oversized":
        length = ctx.oversized_length(draw)
        if length is not None:
            # Repeat a short drawn pattern: realistic content at any size without hypothesis drawing a megabyte.
            # Sized in UTF-8 bytes (what the wire and the budget count), at most `length`.
            pattern = draw(st.text(alphabet=_NO_SURROGATES, min_size=1, max_size=8))
            repeats = max(1, length // len(pattern.encode()))
            ctx.labels.add(InputClass.OVERSIZED_STRING)
            return pattern * repeats
    if kind == "odd":
        ctx.labels.add(InputClass.ODD_TEXT)
        return draw(_ODD_TEXT)
    if kind == "unknown_id":
        ctx.labels.add(InputClass.UNKNOWN_ID)
        return draw(st.one_of(_UUIDS, st.uuids(version=4).map(lambda u: f"{name}-{u.hex[:12]}")))
    ctx.labels.add(InputClass.PLAUSIBLE)
    return draw(_plausible_string(name))


def _draw_int(draw: st.DrawFn, ctx: _Context, fd: FieldDescriptor) -> int:
    low, high = _INT_RANGES[fd.type]
    if draw(st.integers(0, 3)) > 0:
        if fd.name in ctx.known_values and draw(st.booleans()):
            known: int = draw(ctx.known_values[fd.name])
            return known
        ctx.labels.add(InputClass.PLAUSIBLE)
        return draw(_plausible_int(fd.name, low, high))
    absurd = [low, high, -1, high // 2 + 1, 2**53 + 1, -(2**53) - 1]
    value = draw(st.one_of(st.sampled_from([v for v in absurd if low <= v <= high]), st.integers(low, high)))
    if fd.name == "page_size" and value < 0:
        ctx.labels.add(InputClass.NEGATIVE_PAGE_SIZE)
    ctx.labels.add(InputClass.ABSURD_NUMBER)
    return value


def _draw_enum(draw: st.DrawFn, ctx: _Context, fd: FieldDescriptor) -> int:
    enum = fd.enum_type
    assert enum is not None
    defined = [v.number for v in enum.values]
    kind = draw(st.sampled_from(["defined", "defined", "defined", "unspecified", "unknown"]))
    if kind == "unknown" and not enum.is_closed:
        # Open (proto3) enums keep numbers they do not define: a newer client, or a hostile one, can send them.
        unknown = draw(
            st.one_of(
                st.sampled_from([max(defined) + 1, 99, -1, 2**31 - 1, -(2**31)]),
                st.integers(-(2**31), 2**31 - 1),
            ).filter(lambda n: n not in defined)
        )
        ctx.labels.add(InputClass.UNKNOWN_ENUM)
        return unknown
    if kind == "unspecified" and 0 in defined:
        ctx.labels.add(InputClass.UNSPECIFIED_ENUM)
        return 0
    ctx.labels.add(InputClass.PLAUSIBLE)
    return draw(st.sampled_from([n for n in defined if n != 0] or defined))


def _draw_float(draw: st.DrawFn, ctx: _Context) -> float:
    if draw(st.booleans()):
        ctx.labels.add(InputClass.PLAUSIBLE)
        return draw(st.floats(0, 1000))
    ctx.labels.add(InputClass.ABSURD_NUMBER)
    return draw(st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e308, 5e-324]))


def _draw_bytes(draw: st.DrawFn, ctx: _Context) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        length = ctx.oversized_length(draw)
        if length is not None:
            ctx.labels.add(InputClass.OVERSIZED_STRING)
            return bytes(range(256)) * (length // 256) + b"\xff" * (length % 256)
    return draw(st.binary(max_size=64))


def _fill_timestamp(draw: st.DrawFn, ctx: _Context, target: Message) -> None:
    kind = draw(st.sampled_from(["plausible", "plausible", "extreme", "out_of_range"]))
    if kind == "plausible":
        ctx.labels.add(InputClass.PLAUSIBLE)
        seconds = draw(st.integers(1_600_000_000, 1_900_000_000))
        nanos = draw(st.integers(0, NANOS_PER_SECOND - 1))
    elif kind == "extreme":
        ctx.labels.add(InputClass.EXTREME_TIME)
        seconds = draw(st.sampled_from([TIMESTAMP_MIN_SECONDS, TIMESTAMP_MAX_SECONDS, 0, -1]))
        nanos = draw(st.sampled_from([0, NANOS_PER_SECOND - 1]))
    else:
        # The Python API sets the raw fields without checking; a server's ToDatetime() then raises.
        ctx.labels.add(InputClass.OUT_OF_RANGE_TIME)
        seconds = draw(st.sampled_from([*_INT64, TIMESTAMP_MAX_SECONDS + 1, TIMESTAMP_MIN_SECONDS - 1, 0]))
        nanos = draw(st.sampled_from([-1, NANOS_PER_SECOND, *_INT32, 0]))
        if TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS and 0 <= nanos < NANOS_PER_SECOND:
            nanos = -1
    target.seconds = seconds  # type: ignore[attr-defined]
    target.nanos = nanos  # type: ignore[attr-defined]


def _fill_duration(draw: st.DrawFn, ctx: _Context, target: Message) -> None:
    kind = draw(st.sampled_from(["plausible", "plausible", "extreme", "out_of_range"]))
    if kind == "plausible":
        ctx.labels.add(InputClass.PLAUSIBLE)
        millis = draw(st.integers(0, 600_000))
        seconds, nanos = divmod(millis, 1000)
        nanos *= 1_000_000
    elif kind == "extreme":
        # Valid protobuf durations an operator would never mean: zero, negative, ten thousand years, 1 ns.
        ctx.labels.add(InputClass.EXTREME_TIME)
        seconds, nanos = draw(
            st.sampled_from([(0, 0), (0, 1), (-1, 0), (-DURATION_MAX_SECONDS, 0), (DURATION_MAX_SECONDS, 0)])
        )
    else:
        ctx.labels.add(InputClass.OUT_OF_RANGE_TIME)
        seconds, nanos = draw(
            st.sampled_from(
                [(DURATION_MAX_SECONDS + 1, 0), (*_INT64[:1], 0), (_INT64[1], 0), (1, -1), (-1, 1), (0, 2**31 - 1)]
            )
        )
    target.seconds = seconds  # type: ignore[attr-defined]
    target.nanos = nanos  # type: ignore[attr-defined]


_WELL_KNOWN_FILLERS: dict[str, Callable[[st.DrawFn, _Context, Message], None]] = {
    "google.protobuf.Timestamp": _fill_timestamp,
    "google.protobuf.Duration": _fill_duration,
}


def _draw_scalar(draw: st.DrawFn, ctx: _Context, fd: FieldDescriptor) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _draw_string(draw, ctx, fd.name)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return _draw_bytes(draw, ctx)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return _draw_enum(draw, ctx, fd)
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _draw_float(draw, ctx)
    return _draw_int(draw, ctx, fd)


def _fill_message(draw: st.DrawFn, ctx: _Context, target: Message, depth: int) -> None:
    descriptor = target.DESCRIPTOR
    filler = _WELL_KNOWN_FILLERS.get(descriptor.full_name)
    if filler is not None:
        filler(draw, ctx, target)
        return
    # One member (or none) per real oneof; proto3 `optional` fields are synthetic oneofs and handled as fields.
    chosen: set[str] = set()
    for oneof in descriptor.oneofs:
        if _is_synthetic_oneof(oneof):
            continue
        pick = draw(st.sampled_from([None, *[m.name for m in oneof.fields]]))
        if pick is not None:
            chosen.add(pick)
    for fd in descriptor.fields:
        in_oneof = fd.containing_oneof is not None and not _is_synthetic_oneof(fd.containing_oneof)
        if in_oneof and fd.name not in chosen:
            continue
        if not in_oneof and not draw(st.integers(0, 3)):
            continue  # leave about a quarter of the fields unset
        _fill_field(draw, ctx, target, fd, depth)


def _is_synthetic_oneof(oneof: Any) -> bool:  # Any: upb and pure-Python descriptors differ in type
    # proto3 `optional` is compiled into a oneof of one field whose name is the field's name with a leading "_".
    members = list(oneof.fields)
    return len(members) == 1 and oneof.name == f"_{members[0].name}"


def _fill_field(draw: st.DrawFn, ctx: _Context, target: Message, fd: Any, depth: int) -> None:
    is_message = fd.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP)
    if is_message and depth >= ctx.max_depth:
        return
    if fd.is_repeated:
        container = getattr(target, fd.name)
        count = draw(st.integers(0, 3))
        many = False
        if draw(st.integers(0, 9)) == 0:
            # Items outside oversized strings are small (< 200 bytes), so even a thousand stay far below 4 MiB.
            count = draw(st.integers(100, 1000))
            many = True
        if is_message:
            for _ in range(count):
                _fill_message(draw, ctx, container.add(), depth + 1)
        elif many:
            # Many copies of a few values: the size class without hypothesis drawing a thousand values. No oversized
            # value among them (budget hidden), since each is repeated up to a thousand times.
            budget, ctx.budget = ctx.budget, 0
            values = [_draw_scalar(draw, ctx, fd) for _ in range(draw(st.integers(1, 3)))]
            ctx.budget = budget
            container.extend(values[i % len(values)] for i in range(count))
        else:
            container.extend(_draw_scalar(draw, ctx, fd) for _ in range(count))
        if many and count:
            ctx.labels.add(InputClass.MANY_ITEMS)
        return
    if is_message:
        child = getattr(target, fd.name)
        child.SetInParent()  # present even if every field inside stays at its default
        _fill_message(draw, ctx, child, depth + 1)
        return
    setattr(target, fd.name, _draw_scalar(draw, ctx, fd))


@st.composite
def _labelled_message(
    draw: st.DrawFn,
    descriptor: MessageDescriptor,
    budget: int,
    max_depth: int,
    known_values: Mapping[str, st.SearchStrategy[Any]],
) -> tuple[Message, frozenset[InputClass]]:
    message = message_factory.GetMessageClass(descriptor)()
    ctx = _Context(budget=budget, max_depth=max_depth, known_values=known_values)
    _fill_message(draw, ctx, message, 0)
    return message, frozenset(ctx.labels)


def labelled_request_strategy(
    method: MethodDescriptor,
    *,
    known_values: Mapping[str, st.SearchStrategy[Any]] | None = None,
    budget: int = DEFAULT_REQUEST_BUDGET,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> st.SearchStrategy[tuple[Message, frozenset[InputClass]]]:
    """Requests for ``method`` with the set of input classes each carries.

    ``known_values`` maps a field name (e.g. ``"cluster_id"``, ``"vm_uuid"``) to a strategy of values that exist on
    the server under test, mixed in so that some requests find what they name. ``budget`` bounds the oversized
    content of one request (bytes); ``max_depth`` how deep nested messages are filled.
    """
    return _labelled_message(method.input_type, budget, max_depth, dict(known_values or {}))


def request_strategy(
    method: MethodDescriptor,
    *,
    known_values: Mapping[str, st.SearchStrategy[Any]] | None = None,
    budget: int = DEFAULT_REQUEST_BUDGET,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> st.SearchStrategy[Message]:
    """Requests for ``method``, plausible and hostile mixed (see `labelled_request_strategy` for the options)."""
    if known_values is None and budget == DEFAULT_REQUEST_BUDGET and max_depth == DEFAULT_MAX_DEPTH:
        return _default_request_strategy(method.full_name)
    return labelled_request_strategy(method, known_values=known_values, budget=budget, max_depth=max_depth).map(_first)


@functools.cache
def _default_request_strategy(method_full_name: str) -> st.SearchStrategy[Message]:
    method = next(m for _, m in all_rpc_methods() if m.full_name == method_full_name)
    return labelled_request_strategy(method).map(_first)


def _first(pair: tuple[Message, frozenset[InputClass]]) -> Message:
    return pair[0]


# ----------------------------------------------------------------------------------------------------- invoke


@dataclass(frozen=True)
class Outcome:
    """How one call ended: the status, its message, what came back."""

    code: grpc.StatusCode
    details: str
    responses: tuple[Message, ...] = ()
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    streaming: bool = False

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK

    @property
    def stream_was_open(self) -> bool:
        """A stream that ran until the client's deadline (or the item limit): healthy, not an error."""
        return self.streaming and self.code in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED)


def invoke(
    channel: grpc.Channel,
    method: MethodDescriptor,
    request: Message,
    metadata: Sequence[tuple[str, str | bytes]] = (),
    timeout: float = 5.0,
    *,
    max_items: int = 3,
    stream_timeout: float = 1.0,
) -> Outcome:
    """Call any unary or server-streaming RPC generically and report how it ended; never raises grpc.RpcError.

    A stream is read for at most ``max_items`` items (then cancelled: code OK) or ``stream_timeout`` seconds
    (code DEADLINE_EXCEEDED, which for a watch just means the stream was open).
    """
    if method.client_streaming:
        raise NotImplementedError(f"{method.full_name}: client streaming is not part of the xsha contract")
    path = method_path(method)
    serialize = _serializer
    deserialize = response_class(method).FromString
    if not method.server_streaming:
        unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=deserialize)
        try:
            response, call = unary.with_call(request, timeout=timeout, metadata=tuple(metadata))
        except grpc.RpcError as error:
            return _failed(error, (), streaming=False)
        return Outcome(grpc.StatusCode.OK, "", (response,), _trailers(call), streaming=False)

    stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=deserialize)
    responses: Any = stream(request, timeout=stream_timeout, metadata=tuple(metadata))
    received: list[Message] = []
    try:
        for item in responses:
            received.append(item)
            if len(received) >= max_items:
                responses.cancel()
                return Outcome(grpc.StatusCode.OK, "", tuple(received), (), streaming=True)
    except grpc.RpcError as error:
        return _failed(error, tuple(received), streaming=True)
    return Outcome(grpc.StatusCode.OK, "", tuple(received), _trailers(responses), streaming=True)


def _serializer(message: Message) -> bytes:
    return message.SerializeToString()


def _trailers(call: Any) -> tuple[tuple[str, str | bytes], ...]:
    try:
        return tuple((str(key), value) for key, value in (call.trailing_metadata() or ()))
    except Exception:  # a cancelled or broken call may have none to give
        return ()


def _failed(error: grpc.RpcError, received: tuple[Message, ...], *, streaming: bool) -> Outcome:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return Outcome(code, details or "", received, _trailers(error), streaming=streaming)
