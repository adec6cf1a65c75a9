"""One XAPI client interface over both wire formats, with session handling and the method allow-list."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sync_service.xapi.allowed import check_allowed
from sync_service.xapi.errors import SESSION_INVALID, JsonRpcUnavailableError, XapiError, XapiProtocolError
from sync_service.xapi.tls import TlsOptions

log = logging.getLogger(__name__)

WireFormat = Literal["json", "xml"]
WirePreference = Literal["auto", "json", "xml"]
DEFAULT_ORIGINATOR: Final = "xsha-sync"
# Extra seconds a blocking event.from may take beyond its own timeout before the socket gives up.
EVENT_FROM_MARGIN: Final = 15.0


@dataclass(frozen=True)
class XapiEndpoint:
    url: str
    tls: TlsOptions = field(default_factory=TlsOptions)


@dataclass(frozen=True)
class Event:
    cls: str
    operation: str
    ref: str
    snapshot: Mapping[str, Any] | None


@dataclass(frozen=True)
class EventBatch:
    events: list[Event]
    valid_ref_counts: dict[str, int]
    token: str


def as_int(value: Any, default: int = 0) -> int:
    """XAPI ints arrive as strings over XML-RPC and as numbers over JSON-RPC."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value:
        try:
            return int(value)
        except ValueError:
            try:
                return int(float(value))
            except ValueError:
                return default
    return default


def event_of(envelope: Mapping[str, Any], snapshot: Mapping[str, Any] | None) -> Event:
    """An event from its envelope fields ("class", "operation", "ref"), whichever decoder read them."""
    return Event(
        cls=str(envelope.get("class", "")).lower(),
        operation=str(envelope.get("operation", "")),
        ref=str(envelope.get("ref", "")),
        snapshot=snapshot,
    )


def ref_counts(raw: Mapping[Any, Any]) -> dict[str, int]:
    """event.from's valid_ref_counts, by lower-case class name."""
    return {str(key).lower(): as_int(value) for key, value in raw.items()}


def parse_event_batch(raw: Any) -> EventBatch:
    if not isinstance(raw, Mapping) or "token" not in raw:
        raise XapiProtocolError("event.from answered without a token")
    events: list[Event] = []
    for item in raw.get("events") or ():
        if not isinstance(item, Mapping):
            raise XapiProtocolError("event.from answered a malformed event")
        snapshot = item.get("snapshot")
        events.append(event_of(item, snapshot if isinstance(snapshot, Mapping) else None))
    counts = ref_counts(raw.get("valid_ref_counts") or {})
    return EventBatch(events=events, valid_ref_counts=counts, token=str(raw["token"]))


class XapiClient(ABC):
    """A logged-in (or about to be) XAPI session over one persistent connection. Not thread-safe, except
    `abort`, which another thread may call to break a blocking call (e.g. event.from) at once."""

    wire_format: WireFormat

    def __init__(self, endpoint: XapiEndpoint, *, timeout: float, originator: str = DEFAULT_ORIGINATOR) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.originator = originator
        self.session_ref: str | None = None
        self._credentials: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self.relogins = 0
        # Set by abort(): the broken call must fail, not be retried as an idle keep-alive drop.
        self._aborted = threading.Event()

    def abort(self) -> None:
        """Break the connection under a blocked call (thread-safe); that call fails with XapiConnectionError."""
        self._aborted.set()
        self._abort_connection()

    def _take_abort(self) -> bool:
        aborted = self._aborted.is_set()
        self._aborted.clear()
        return aborted

    @property
    def url(self) -> str:
        return self.endpoint.url

    @abstractmethod
    def _request(self, method: str, params: Sequence[Any], timeout: float) -> Any:
        """Send one call; return its value or raise XapiError / XapiConnectionError."""

    @abstractmethod
    def _abort_connection(self) -> None:
        """Shut the socket of the current connection down."""

    @abstractmethod
    def close(self) -> None:
        """Drop the connection without logging out."""

    def login(self, username: str, password: str) -> None:
        check_allowed("session.login_with_password")
        result = self._request(
            "session.login_with_password", [username, password, "1.0", self.originator], self.timeout
        )
        if not isinstance(result, str) or not result:
            raise XapiProtocolError("session.login_with_password returned no session reference")
        self.session_ref = result
        self._credentials = (username, password)

    def logout(self) -> None:
        if self.session_ref is None:
            return
        try:
            self._request("session.logout", [self.session_ref], self.timeout)
        finally:
            self.session_ref = None

    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Call `method` with the session as first parameter; one transparent re-login on SESSION_INVALID."""
        canonical = check_allowed(method)
        if self.session_ref is None:
            raise XapiError(SESSION_INVALID, ["not logged in"])
        try:
            return self._request(canonical, [self.session_ref, *params], timeout or self.timeout)
        except XapiError as error:
            if error.code != SESSION_INVALID or self._credentials is None:
                raise
            log.info("XAPI session expired, logging in again", extra={"xapi_url": self.url})
            self.relogins += 1
            self.login(*self._credentials)
            return self._request(canonical, [self.session_ref, *params], timeout or self.timeout)

    def event_from(self, classes: Sequence[str], token: str, timeout: float) -> EventBatch:
        raw = self.call("event.from", list(classes), token, float(timeout), timeout=timeout + EVENT_FROM_MARGIN)
        # A wire client may decode the answer straight into a batch (JSON-RPC's typed decoder does).
        return raw if isinstance(raw, EventBatch) else parse_event_batch(raw)


def connect(
    endpoint: XapiEndpoint,
    username: str,
    password: str,
    *,
    wire: WirePreference = "auto",
    timeout: float = 30.0,
    originator: str = DEFAULT_ORIGINATOR,
) -> XapiClient:
    """Log in to `endpoint`, over JSON-RPC where the host offers it (unless `wire` says otherwise), else XML-RPC.

    Raises XapiError (e.g. HOST_IS_SLAVE [master], SESSION_AUTHENTICATION_FAILED) or XapiConnectionError.
    """
    from sync_service.xapi.json_rpc import JsonRpcClient
    from sync_service.xapi.xml_rpc import XmlRpcClient

    client: XapiClient
    if wire in ("auto", "json"):
        client = JsonRpcClient(endpoint, timeout=timeout, originator=originator)
        try:
            client.login(username, password)
            return client
        except JsonRpcUnavailableError:
            client.close()
            if wire == "json":
                raise
            log.info("host offers no JSON-RPC, falling back to XML-RPC", extra={"xapi_url": endpoint.url})
        except BaseException:
            client.close()
            raise
    client = XmlRpcClient(endpoint, timeout=timeout, originator=originator)
    try:
        client.login(username, password)
    except BaseException:
        client.close()
        raise
    return client
