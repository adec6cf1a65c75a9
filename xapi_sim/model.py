"""Object store of one pool and its event log: what `get_*` reads and what `event.from` serves.

Every change bumps one generation counter. `changes` keeps each object's latest change generation in generation
order (move-to-end on change), so `event.from(token)` walks back only over what changed since the token, and
coalescing (one event per object, latest snapshot) falls out of keeping only the latest generation.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xapi_sim import errors
from xapi_sim.errors import XapiError

# XAPI class name -> the lower-case name events carry.
CLASSES: tuple[str, ...] = ("pool", "host", "host_metrics", "VM", "message")
EVENT_CLASS: dict[str, str] = {c: c.lower() for c in CLASSES}
CLASS_BY_EVENT_NAME: dict[str, str] = {c.lower(): c for c in CLASSES}
_TOKEN_RE = re.compile(r"^(\d{1,20}),(\d{1,20})$")
TOMBSTONE_LIMIT = 50_000


class SimObject:
    """One XAPI object. `json` caches its serialised record and is dropped on every change; `xml` keeps the XML-RPC
    member fragments of the record as last encoded (see wire_xml.object_fragment)."""

    __slots__ = ("cls", "created_gen", "json", "malformed", "mod_gen", "mod_time", "rec", "ref", "xml")

    def __init__(self, cls: str, ref: str, rec: dict[str, Any], gen: int) -> None:
        self.cls = cls
        self.ref = ref
        self.rec = rec
        self.created_gen = gen
        self.mod_gen = gen
        self.mod_time = time.time()
        self.xml: tuple[dict[str, Any], list[str], dict[str, int]] | None = None
        self.json: bytes | None = None
        self.malformed: str | None = None

    @property
    def uuid(self) -> str:
        return str(self.rec["uuid"])

    def __getitem__(self, field: str) -> Any:
        return self.rec[field]

    def __repr__(self) -> str:
        return f"<{self.cls} {self.ref} {self.rec.get('name_label', self.rec.get('name', ''))!r}>"


@dataclass(slots=True)
class Tombstone:
    cls: str
    ref: str
    created_gen: int
    deleted_gen: int
    deleted_time: float


@dataclass(slots=True)
class Subscription:
    everything: bool
    classes: frozenset[str]  # lower-case event class names
    objects: frozenset[tuple[str, str]]  # (lower-case class, ref)

    def matches(self, event_class: str, ref: str) -> bool:
        return self.everything or event_class in self.classes or (event_class, ref) in self.objects

    def counted_classes(self) -> list[str]:
        if self.everything:
            return list(CLASSES)
        names = set(self.classes) | {c for c, _ in self.objects}
        return [CLASS_BY_EVENT_NAME[n] for n in sorted(names) if n in CLASS_BY_EVENT_NAME]


def parse_subscription(classes: Iterable[object]) -> Subscription:
    """`*`, a class name (any case) or `class/ref`; like xapi, an unknown class name subscribes to nothing."""
    everything = False
    names: set[str] = set()
    objects: set[tuple[str, str]] = set()
    for sub in classes:
        if not isinstance(sub, str) or not sub:
            raise XapiError(errors.EVENT_SUBSCRIPTION_PARSE_FAILURE, sub)
        parts = sub.split("/")
        if parts == ["*"]:
            everything = True
        elif len(parts) == 1:
            names.add(parts[0].lower())
        elif len(parts) == 2 and parts[0] and parts[1]:
            objects.add((parts[0].lower(), parts[1]))
        else:
            raise XapiError(errors.EVENT_SUBSCRIPTION_PARSE_FAILURE, sub)
    return Subscription(everything, frozenset(names), frozenset(objects))


class ObjectStore:
    """Objects by class / ref / uuid, the change log, and the condition event.from waits on."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.by_class: dict[str, dict[str, SimObject]] = {c: {} for c in CLASSES}
        self.by_uuid: dict[str, dict[str, SimObject]] = {c: {} for c in CLASSES}
        self.by_ref: dict[str, SimObject] = {}
        self.gen = 0
        self.last_message_gen = 0
        # The last change of each object, oldest first; messages apart, since their token part moves on its own:
        # in one log, a message-less pool made every event.from walk back over every object ever changed.
        self.changes: OrderedDict[str, int] = OrderedDict()
        self.message_changes: OrderedDict[str, int] = OrderedDict()
        self.tombstones: dict[str, Tombstone] = {}
        self.token_floor = 0
        self.changes_made = 0

    # --- mutation (callers hold self.lock or accept per-call atomicity) ---
    def _bump(self, obj_cls: str, ref: str) -> int:
        self.gen += 1
        self.changes_made += 1
        if obj_cls == "message":
            self.last_message_gen = self.gen
        log = self.message_changes if obj_cls == "message" else self.changes
        log[ref] = self.gen
        log.move_to_end(ref)
        return self.gen

    def add(self, cls: str, ref: str, rec: dict[str, Any], notify: bool = True) -> SimObject:
        with self.lock:
            gen = self._bump(cls, ref)
            obj = SimObject(cls, ref, rec, gen)
            self.by_class[cls][ref] = obj
            self.by_uuid[cls][rec["uuid"]] = obj
            self.by_ref[ref] = obj
            if notify:
                self.cond.notify_all()
            return obj

    def modify(self, obj: SimObject, changes: dict[str, Any], notify: bool = True) -> None:
        """Replace field values (never mutate them in place: default containers are shared)."""
        with self.lock:
            if self.by_ref.get(obj.ref) is not obj:
                raise XapiError(errors.HANDLE_INVALID, obj.cls, obj.ref)
            rec = dict(obj.rec)
            rec.update(changes)
            obj.rec = rec
            self._touch_locked(obj)
            if notify:
                self.cond.notify_all()

    def touch(self, obj: SimObject) -> None:
        with self.lock:
            self._touch_locked(obj)
            self.cond.notify_all()

    def _touch_locked(self, obj: SimObject) -> None:
        obj.json = None
        obj.mod_gen = self._bump(obj.cls, obj.ref)
        obj.mod_time = time.time()

    def delete(self, obj: SimObject) -> None:
        with self.lock:
            if self.by_ref.pop(obj.ref, None) is None:
                raise XapiError(errors.HANDLE_INVALID, obj.cls, obj.ref)
            del self.by_class[obj.cls][obj.ref]
            self.by_uuid[obj.cls].pop(obj.rec["uuid"], None)
            gen = self._bump(obj.cls, obj.ref)
            self.tombstones[obj.ref] = Tombstone(obj.cls, obj.ref, obj.created_gen, gen, time.time())
            if len(self.tombstones) > TOMBSTONE_LIMIT:
                # Old deletions are forgotten, as in xapi: a client that far behind notices via valid_ref_counts.
                for ref in list(self.tombstones)[: TOMBSTONE_LIMIT // 2]:
                    del self.tombstones[ref]
                    self.changes.pop(ref, None)
                    self.message_changes.pop(ref, None)
            self.cond.notify_all()

    def notify(self) -> None:
        with self.lock:
            self.cond.notify_all()

    # --- lookup ---
    def get(self, cls: str, ref: object) -> SimObject:
        obj = self.by_class[cls].get(ref) if isinstance(ref, str) else None
        if obj is None:
            raise XapiError(errors.HANDLE_INVALID, cls, ref)
        return obj

    def get_by_uuid(self, cls: str, uuid_: object) -> SimObject:
        obj = self.by_uuid[cls].get(uuid_) if isinstance(uuid_, str) else None
        if obj is None:
            raise XapiError(errors.UUID_INVALID, cls, uuid_)
        return obj

    def all(self, cls: str) -> list[SimObject]:
        with self.lock:
            return list(self.by_class[cls].values())

    # --- tokens and events ---
    def token(self) -> str:
        return f"{self.gen:020d},{self.last_message_gen:020d}"

    def invalidate_tokens(self) -> None:
        """Tokens issued so far are refused from now on (what a client sees after a xapi restart)."""
        with self.lock:
            self.gen += 1_000_000
            self.token_floor = self.gen
            self.cond.notify_all()

    def parse_token(self, token: object) -> tuple[int, int] | None:
        if token == "":
            return None
        match = _TOKEN_RE.match(token) if isinstance(token, str) else None
        if match is None:
            raise XapiError(errors.EVENT_FROM_TOKEN_PARSE_FAILURE, token)
        db_gen, msg_gen = int(match.group(1)), int(match.group(2))
        if db_gen < self.token_floor:
            raise XapiError(errors.EVENT_FROM_TOKEN_PARSE_FAILURE, token)
        return db_gen, msg_gen

    def list_all(self, sub: Subscription) -> list[dict[str, Any]]:
        """Every subscribed object as an `add` event: event.from with token ""."""
        events: list[dict[str, Any]] = []
        for cls in CLASSES:
            ev_cls = EVENT_CLASS[cls]
            for obj in self.by_class[cls].values():
                if sub.matches(ev_cls, obj.ref):
                    events.append(_event(obj.mod_gen, obj.mod_time, ev_cls, "add", obj.ref, obj))
        return events

    def changes_since(self, sub: Subscription, cut: tuple[int, int]) -> list[dict[str, Any]]:
        """Events after the token's two generations, newest first."""
        db_cut, msg_cut = cut
        events = self._log_since(self.changes, db_cut, sub)
        messages = self._log_since(self.message_changes, msg_cut, sub)
        if messages:
            events.extend(messages)
            events.sort(key=lambda event: int(event["id"]), reverse=True)
        return events

    def _log_since(self, log: OrderedDict[str, int], cut: int, sub: Subscription) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for ref in reversed(log):
            gen = log[ref]
            if gen <= cut:
                break
            obj = self.by_ref.get(ref)
            if obj is not None:
                ev_cls = EVENT_CLASS[obj.cls]
                if not sub.matches(ev_cls, ref):
                    continue
                op = "add" if obj.created_gen > cut else "mod"
                events.append(_event(gen, obj.mod_time, ev_cls, op, ref, obj))
                continue
            tomb = self.tombstones.get(ref)
            if tomb is None:
                continue
            ev_cls = EVENT_CLASS[tomb.cls]
            # Created and deleted inside the window: the client never knew it, so it does not appear at all.
            if tomb.created_gen > cut or not sub.matches(ev_cls, ref):
                continue
            events.append(_event(gen, tomb.deleted_time, ev_cls, "del", ref, None))
        return events

    def valid_ref_counts(self, sub: Subscription) -> dict[str, int]:
        return {EVENT_CLASS[c]: len(self.by_class[c]) for c in sub.counted_classes()}


def _event(gen: int, ts: float, ev_cls: str, op: str, ref: str, obj: SimObject | None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": str(gen),
        "timestamp": f"{ts:.3f}",
        "class": ev_cls,
        "operation": op,
        "ref": ref,
    }
    if obj is not None:
        event["snapshot"] = obj
    return event


MALFORMED_KINDS = ("missing_fields", "unknown_power_state", "wrong_types", "garbage")


def record_for_wire(rec: dict[str, Any], kind: str | None) -> dict[str, Any]:
    """The record as served: normally `rec`; a fault-injected variant when the object's `malformed` is set."""
    if kind is None or kind == "garbage":
        return rec
    rec = dict(rec)
    if kind == "missing_fields":
        for field in ("power_state", "resident_on", "ha_restart_priority", "ha_always_run", "order", "name_label"):
            rec.pop(field, None)
    elif kind == "unknown_power_state":
        rec["power_state"] = "Exploded"
    elif kind == "wrong_types":
        rec.update(
            {
                "memory_static_max": "lots",
                "order": "first",
                "start_delay": 1.5,
                "is_a_template": "maybe",
                "ha_always_run": "yes",
                "other_config": ["not", "a", "map"],
                "resident_on": 42,
            }
        )
    return rec
