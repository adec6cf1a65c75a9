"""Small clients for tests and benchmarks: a minimal JSON-RPC XAPI client, the sim.* control client, waits."""

from __future__ import annotations

import http.client
import itertools
import time
import xmlrpc.client
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson
import XenAPI

T = TypeVar("T")


class JsonRpcXapiError(Exception):
    """An XAPI failure received over JSON-RPC; `details` is [CODE, params...] like XenAPI.Failure.details."""

    def __init__(self, details: list[Any]) -> None:
        super().__init__(details)
        self.details = details


# What a test catches for an XAPI failure on either wire; both carry `.details` = [CODE, params...].
XAPI_FAILURES: Any = (XenAPI.Failure, JsonRpcXapiError)  # Any: mypy then allows `.details` on the caught error


class JsonRpcHttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class JsonRpcClient:
    """One keep-alive connection to `<host url>/jsonrpc`; not thread-safe (like XenAPI.Session)."""

    def __init__(self, url: str, version: str = "2.0", timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path.rstrip("/")
        self.path = path if path.endswith("/jsonrpc") else path + "/jsonrpc"
        self.version = version
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._conn: http.client.HTTPConnection | None = None
        self.last_response_size = 0

    def raw(self, payload: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request("POST", self.path, payload, {"Content-Type": "application/json"})
                response = self._conn.getresponse()
                body = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, body
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, *params: Any) -> Any:
        req_id = next(self._ids)
        request: dict[str, Any] = {"method": method, "params": list(params), "id": req_id}
        if self.version == "2.0":
            request["jsonrpc"] = "2.0"
        status, body = self.raw(orjson.dumps(request))
        if status != 200:
            raise JsonRpcHttpError(status, body)
        self.last_response_size = len(body)
        reply = orjson.loads(body)
        if self.version == "2.0":
            if "error" in reply:
                error = reply["error"]
                raise JsonRpcXapiError([error["message"], *error.get("data", [])])
            return reply["result"]
        if reply.get("error"):
            raise JsonRpcXapiError(list(reply["error"]))
        return reply["result"]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class JsonXapiSession:
    """`session.xenapi.VM.get_all()`-style calls over JSON-RPC, session prepended, like XenAPI.Session."""

    def __init__(self, url: str, version: str = "2.0") -> None:
        self.client = JsonRpcClient(url, version)
        self.handle = ""

    def login_with_password(self, user: str, password: str, version: str = "1.0", originator: str = "") -> str:
        self.handle = self.client.call("session.login_with_password", user, password, version, originator)
        return self.handle

    def logout(self) -> None:
        self.client.call("session.logout", self.handle)
        self.handle = ""

    def call(self, method: str, *params: Any) -> Any:
        return self.client.call(method, self.handle, *params)

    @property
    def xenapi(self) -> _Dispatcher:
        return _Dispatcher(self.call, "")

    def close(self) -> None:
        self.client.close()


class _Dispatcher:
    def __init__(self, send: Callable[..., Any], name: str) -> None:
        self._send = send
        self._name = name

    def __getattr__(self, name: str) -> _Dispatcher:
        return _Dispatcher(self._send, f"{self._name}.{name}" if self._name else name)

    def __call__(self, *params: Any) -> Any:
        return self._send(self._name, *params)


class SimControl:
    """The sim.* control interface of one endpoint (any host of the pool), unwrapping the Status envelope."""

    def __init__(self, url: str) -> None:
        self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True)

    def call(self, method: str, *params: Any) -> Any:
        reply = getattr(self.proxy, method)(*params)
        if reply.get("Status") != "Success":
            raise RuntimeError(f"{method} failed: {reply.get('ErrorDescription')}")
        return reply["Value"]

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *params: self.call(f"sim.{name}", *params)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll until `predicate()` is truthy; its value, or AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def event_from(session: Any, classes: list[str], token: str, timeout: float) -> dict[str, Any]:
    """`event.from` through a XenAPI.Session or a JsonXapiSession (`from` is a Python keyword)."""
    result: dict[str, Any] = getattr(session.xenapi.event, "from")(classes, token, timeout)
    return result


def user_vms(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a client keeps of VM.get_all_records: no templates, snapshots or control domains."""
    return {
        ref: r for ref, r in records.items() if not (r["is_a_template"] or r["is_a_snapshot"] or r["is_control_domain"])
    }


def xmlrpc_proxy(url: str) -> Any:
    """A plain XML-RPC proxy (no SDK): sees the Status envelope and the SESSION_INVALID the SDK retries away."""
    return xmlrpc.client.ServerProxy(url, allow_none=True)
