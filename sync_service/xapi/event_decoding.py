"""A typed decoder for JSON-RPC `event.from` answers: only the record fields the mirror reads become Python objects.

A VM record is about 4 KB of JSON with some 90 fields, of which the mirror reads ten; decoding all of it into dicts
was the largest single cost of ingest. msgspec skips the unread fields without building them. The values keep
whatever JSON type they had (fields are `Any`), so the domain's lenient parsing sees exactly what a full decode
would give. Anything that does not fit the shape (an error answer, a malformed event) returns None, and the caller
decodes the answer the ordinary way, which handles every such case.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, cast

import msgspec

from sync_service.xapi.client import Event, EventBatch, ref_counts

_UNSET: Final = msgspec.UNSET


class Record(msgspec.Struct, frozen=True):
    """The fields of VM, host, host_metrics and pool records that sync_service.domain reads, as a read-only
    mapping of the fields present (absent ones are not keys, as in the full record)."""

    uuid: Any = _UNSET
    name_label: Any = _UNSET
    # VM
    power_state: Any = _UNSET
    resident_on: Any = _UNSET
    ha_restart_priority: Any = _UNSET
    order: Any = _UNSET
    start_delay: Any = _UNSET
    ha_always_run: Any = _UNSET
    memory_static_max: Any = _UNSET
    is_a_template: Any = _UNSET
    is_a_snapshot: Any = _UNSET
    is_control_domain: Any = _UNSET
    # host
    address: Any = _UNSET
    enabled: Any = _UNSET
    metrics: Any = _UNSET
    software_version: Any = _UNSET
    API_version_major: Any = _UNSET  # XAPI spells these with capitals
    API_version_minor: Any = _UNSET
    # host_metrics
    live: Any = _UNSET
    memory_total: Any = _UNSET
    memory_free: Any = _UNSET
    # pool
    master: Any = _UNSET
    ha_enabled: Any = _UNSET
    ha_host_failures_to_tolerate: Any = _UNSET
    ha_plan_exists_for: Any = _UNSET
    ha_allow_overcommit: Any = _UNSET
    ha_overcommitted: Any = _UNSET

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, _UNSET) if key in RECORD_FIELDS else _UNSET
        return default if value is _UNSET else value

    def __getitem__(self, key: str) -> Any:
        value = getattr(self, key, _UNSET) if key in RECORD_FIELDS else _UNSET
        if value is _UNSET:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in RECORD_FIELDS and getattr(self, key) is not _UNSET

    def __iter__(self) -> Iterator[str]:
        return (name for name in _FIELD_ORDER if getattr(self, name) is not _UNSET)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def keys(self) -> list[str]:
        return list(self)

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self]


_FIELD_ORDER: Final = Record.__struct_fields__
RECORD_FIELDS: Final = frozenset(_FIELD_ORDER)
Mapping.register(Record)


class _Event(msgspec.Struct, rename={"cls": "class"}):
    cls: str = ""
    operation: str = ""
    ref: str = ""
    snapshot: Record | None = None


class _EventBatch(msgspec.Struct):
    token: str
    events: list[_Event] = []
    valid_ref_counts: dict[str, Any] = {}


class _Answer(msgspec.Struct):
    """A JSON-RPC answer carrying a result (2.0, or 1.0 with "error": null)."""

    result: _EventBatch
    error: None = None


_DECODER: Final = msgspec.json.Decoder(_Answer)


def decode_event_from(payload: bytes) -> EventBatch | None:
    """The batch in a successful `event.from` answer, or None when the answer is anything else."""
    try:
        answer = _DECODER.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    batch = answer.result
    return EventBatch(
        events=[
            Event(
                cls=event.cls.lower(),
                operation=event.operation,
                ref=event.ref,
                snapshot=cast(Mapping[str, Any], event.snapshot),
            )
            for event in batch.events
        ],
        valid_ref_counts=ref_counts(batch.valid_ref_counts),
        token=batch.token,
    )
