"""HA events (actions and notifications): durable rows with revisions from one counter, and the watch stream.

Revisions come from the counter row `ha_event_revision`, incremented with UPDATE ... SET value = value + n inside
the writing transaction: the row lock is held until commit, so events commit in revision order and a reader that
sees revision N committed has seen every revision below N. A watcher reads the committed counter first and then
the events up to it, so it never skips one.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from ha_service import converters as cv
from ha_service.store.models import EVENT_FLOOR_COUNTER, EVENT_REVISION_COUNTER, CounterRow, HaEventRow
from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_common.errors import out_of_range

ACTION = "ACTION"
NOTIFICATION = "NOTIFICATION"
PENDING = "PENDING"


@dataclass(frozen=True)
class NewAction:
    kind: str  # ACTION_KIND_TO_PROTO key
    cluster_id: str
    instance_name: str
    vm_uuid: str
    vm_type: Any  # common_pb2.VmType value
    message: str
    cause: Any = ha_service_pb2.RESTART_CAUSE_UNSPECIFIED  # RestartCause value
    host_uuid: str = ""

    @property
    def pending_key(self) -> str:
        return pending_key(self.cluster_id, self.instance_name, self.kind)


@dataclass(frozen=True)
class NewNotification:
    kind: str  # NOTIFICATION_KIND_TO_PROTO key
    cluster_id: str
    message: str
    instance_name: str = ""
    vm_uuid: str = ""
    old_host_uuid: str = ""
    new_host_uuid: str = ""
    downtime_seconds: float | None = None


def pending_key(cluster_id: str, instance_name: str, kind: str) -> str:
    return f"{cluster_id}/{instance_name}/{kind}"


class EventBus:
    """Wakes in-process watchers when events commit (other replicas' events are found by polling)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._latest = 0

    def publish(self, revision: int) -> None:
        with self._condition:
            self._latest = max(self._latest, revision)
            self._condition.notify_all()

    def wait_beyond(self, revision: int, timeout: float) -> None:
        with self._condition:
            if self._latest <= revision:
                self._condition.wait(timeout)


# Built once: these run for every event-producing reconcile.
# (An UPDATE's bind names must differ from its columns' names.)
_COUNTER_VALUE: Final = select(CounterRow.value).where(CounterRow.name == bindparam("counter"))
_COUNTER_ADD: Final = (
    update(CounterRow)
    .where(CounterRow.name == bindparam("counter"))
    .values(value=CounterRow.value + bindparam("amount"))
)
_COUNTER_VALUES: Final = select(CounterRow.name, CounterRow.value).where(
    CounterRow.name.in_(bindparam("counters", expanding=True))
)
_PENDING_KEYS: Final = select(HaEventRow.pending_key).where(
    HaEventRow.pending_key.in_(bindparam("keys", expanding=True))
)


def counter_value(session: Session, name: str) -> int:
    return int(session.execute(_COUNTER_VALUE, {"counter": name}).scalar_one())


def counter_values(session: Session, *names: str) -> tuple[int, ...]:
    """Several counters, in the order named, from one statement (one snapshot)."""
    values = {row.name: int(row.value) for row in session.execute(_COUNTER_VALUES, {"counters": list(names)})}
    return tuple(values[name] for name in names)


def allocate_revisions(session: Session, count: int) -> int:
    """The first of `count` new revisions; holds the counter row lock until the transaction ends."""
    session.execute(_COUNTER_ADD, {"counter": EVENT_REVISION_COUNTER, "amount": count})
    return counter_value(session, EVENT_REVISION_COUNTER) - count + 1


def pending_action_keys(session: Session, keys: Sequence[str]) -> set[str]:
    if not keys:
        return set()
    rows = session.execute(_PENDING_KEYS, {"keys": list(keys)}).scalars()
    return {key for key in rows if key is not None}


def append_events(
    session: Session, items: Sequence[NewAction | NewNotification], now: float
) -> list[ha_service_pb2.HaEvent]:
    """Writes the events (actions already pending for the same VM and kind are dropped) and returns them."""
    keys = [item.pending_key for item in items if isinstance(item, NewAction)]
    taken = pending_action_keys(session, keys)
    kept: list[NewAction | NewNotification] = []
    for item in items:
        if isinstance(item, NewAction):
            if item.pending_key in taken:
                continue
            taken.add(item.pending_key)
        kept.append(item)
    if not kept:
        return []
    first = allocate_revisions(session, len(kept))
    events: list[ha_service_pb2.HaEvent] = []
    for offset, item in enumerate(kept):
        revision = first + offset
        event_id = str(uuid.uuid4())
        created = cv.timestamp(now)
        if isinstance(item, NewAction):
            action = ha_service_pb2.HaAction(
                action_id=event_id,
                kind=cv.ACTION_KIND_TO_PROTO[item.kind],
                cause=item.cause,
                state=ha_service_pb2.HA_ACTION_STATE_PENDING,
                cluster_id=item.cluster_id,
                instance_name=item.instance_name,
                vm_uuid=item.vm_uuid,
                vm_type=item.vm_type,
                host_uuid=item.host_uuid,
                message=item.message,
                create_time=created,
            )
            session.add(
                HaEventRow(
                    revision=revision,
                    event_id=event_id,
                    category=ACTION,
                    kind=item.kind,
                    cluster_id=item.cluster_id,
                    instance_name=item.instance_name,
                    vm_uuid=item.vm_uuid,
                    action_state=PENDING,
                    pending_key=item.pending_key,
                    payload=action.SerializeToString(),
                    create_time=now,
                    ack_message="",
                )
            )
            events.append(ha_service_pb2.HaEvent(revision=revision, action=action))
        else:
            notification = ha_service_pb2.HaNotification(
                notification_id=event_id,
                kind=cv.NOTIFICATION_KIND_TO_PROTO[item.kind],
                cluster_id=item.cluster_id,
                instance_name=item.instance_name,
                vm_uuid=item.vm_uuid,
                old_host_uuid=item.old_host_uuid,
                new_host_uuid=item.new_host_uuid,
                message=item.message,
                create_time=created,
            )
            if item.downtime_seconds is not None:
                notification.downtime.CopyFrom(cv.duration(item.downtime_seconds))
            session.add(
                HaEventRow(
                    revision=revision,
                    event_id=event_id,
                    category=NOTIFICATION,
                    kind=item.kind,
                    cluster_id=item.cluster_id,
                    instance_name=item.instance_name,
                    vm_uuid=item.vm_uuid,
                    action_state=None,
                    pending_key=None,
                    payload=notification.SerializeToString(),
                    create_time=now,
                    ack_message="",
                )
            )
            events.append(ha_service_pb2.HaEvent(revision=revision, notification=notification))
    session.flush()
    return events


def action_from_row(row: HaEventRow) -> ha_service_pb2.HaAction:
    action = ha_service_pb2.HaAction.FromString(row.payload)
    action.state = cv.ACTION_STATE_TO_PROTO[row.action_state or PENDING]
    if row.ack_time is not None:
        action.ack_time.CopyFrom(cv.stamp(row.ack_time))
    action.ack_message = row.ack_message
    return action


def event_from_row(row: HaEventRow, *, redelivered: bool = False) -> ha_service_pb2.HaEvent:
    if row.category == ACTION:
        return ha_service_pb2.HaEvent(revision=row.revision, redelivered=redelivered, action=action_from_row(row))
    notification = ha_service_pb2.HaNotification.FromString(row.payload)
    return ha_service_pb2.HaEvent(revision=row.revision, redelivered=redelivered, notification=notification)


DEFAULT_BOOKMARK_INTERVAL = 5.0
MIN_BOOKMARK_INTERVAL = 0.1
MAX_BOOKMARK_INTERVAL = 3600.0
_WATCH_BATCH = 500
_POLL_INTERVAL = 0.5  # events written by another replica are found at least this often


def watch_events(
    sessions: sessionmaker[Session],
    request: ha_service_pb2.WatchHaEventsRequest,
    bus: EventBus,
    *,
    is_active: Callable[[], bool],
    clock: Callable[[], float],
    bookmark_interval: float,
) -> Iterator[ha_service_pb2.WatchHaEventsResponse]:
    """Pending actions first (redelivered), then every event after since_revision in order, with bookmarks."""
    since = request.since_revision
    cluster = request.cluster_id
    with sessions() as session:
        floor = counter_value(session, EVENT_FLOOR_COUNTER)
        if since < floor:
            raise _gone(since, floor)
        if not request.skip_pending_actions:
            query = (
                select(HaEventRow)
                .where(HaEventRow.category == ACTION, HaEventRow.action_state == PENDING, HaEventRow.revision <= since)
                .order_by(HaEventRow.revision)
            )
            if cluster:
                query = query.where(HaEventRow.cluster_id == cluster)
            for row in session.execute(query).scalars():
                yield ha_service_pb2.WatchHaEventsResponse(event=event_from_row(row, redelivered=True))
    last = since
    next_bookmark = time.monotonic() + bookmark_interval
    while is_active():
        with sessions() as session:
            current, floor = counter_values(session, EVENT_REVISION_COUNTER, EVENT_FLOOR_COUNTER)
            if last < floor:
                raise _gone(last, floor)
            rows: list[HaEventRow] = []
            if current > last:
                query = (
                    select(HaEventRow)
                    .where(HaEventRow.revision > last, HaEventRow.revision <= current)
                    .order_by(HaEventRow.revision)
                    .limit(_WATCH_BATCH)
                )
                if cluster:
                    query = query.where(HaEventRow.cluster_id == cluster)
                rows = list(session.execute(query).scalars())
        for row in rows:
            yield ha_service_pb2.WatchHaEventsResponse(event=event_from_row(row))
        last = rows[-1].revision if len(rows) == _WATCH_BATCH else max(last, current)
        if len(rows) == _WATCH_BATCH:
            continue
        now = time.monotonic()
        if now >= next_bookmark:
            bookmark = common_pb2.Bookmark(revision=last, time=cv.timestamp(clock()))
            yield ha_service_pb2.WatchHaEventsResponse(bookmark=bookmark)
            next_bookmark = now + bookmark_interval
        bus.wait_beyond(last, min(_POLL_INTERVAL, max(0.0, next_bookmark - time.monotonic())))


def _gone(revision: int, floor: int) -> Exception:
    return out_of_range(
        f"HA events up to revision {floor} are no longer retained (asked for events after {revision}); list the "
        "pending actions with ListHaActions and watch from the revision it returns.",
        "REVISION_NOT_RETAINED",
        field="since_revision",
        metadata={"oldest_retained_revision": str(floor + 1)},
    )
