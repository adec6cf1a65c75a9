"""XAPI over JSON-RPC 2.0 on POST /jsonrpc: a persistent HTTP/1.1 connection; orjson, and for event.from a typed
msgspec decoder that builds only the fields the mirror reads."""

from __future__ import annotations

import http.client
import itertools
import threading
from collections.abc import Sequence
from typing import Any, Final

import orjson

from sync_service.xapi.client import DEFAULT_ORIGINATOR, WireFormat, XapiClient, XapiEndpoint
from sync_service.xapi.errors import JsonRpcUnavailableError, XapiConnectionError, XapiError, XapiProtocolError
from sync_service.xapi.event_decoding import decode_event_from
from sync_service.xapi.transport import abort_connection, open_connection, set_timeout

_HEADERS: Final = {"Content-Type": "application/json", "Accept": "application/json", "Connection": "keep-alive"}


class JsonRpcClient(XapiClient):
    wire_format: WireFormat = "json"

    def __init__(self, endpoint: XapiEndpoint, *, timeout: float, originator: str = DEFAULT_ORIGINATOR) -> None:
        super().__init__(endpoint, timeout=timeout, originator=originator)
        self._ids = itertools.count(1)
        self._connection: http.client.HTTPConnection | None = None
        self._connection_lock = threading.Lock()
        self._confirmed = False  # True once /jsonrpc answered a JSON-RPC response

    def _ensure_connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._connection_lock:
            fresh = self._connection is None
            if self._connection is None:
                self._connection = open_connection(self.endpoint.url, self.endpoint.tls, timeout)
            set_timeout(self._connection, timeout)
            return self._connection, fresh

    def _request(self, method: str, params: Sequence[Any], timeout: float) -> Any:
        body = orjson.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": next(self._ids)})
        for attempt in (1, 2):
            connection, fresh = self._ensure_connection(timeout)
            try:
                connection.request("POST", "/jsonrpc", body, _HEADERS)
                response = connection.getresponse()
                status = response.status
                payload = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                # A kept-alive connection the server closed while idle: every allowed call is idempotent.
                if attempt == 1 and not fresh and not self._take_abort():
                    continue
                raise XapiConnectionError(f"XAPI connection to {self.endpoint.url} lost: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise XapiConnectionError(f"XAPI call {method} to {self.endpoint.url} failed: {exc}") from exc
            if response.will_close:
                self.close()
            self._aborted.clear()
            return self._decode(method, status, payload)
        raise AssertionError("unreachable")

    def _decode(self, method: str, status: int, payload: bytes) -> Any:
        if method == "event.from" and status == 200:
            batch = decode_event_from(payload)  # the fast path; None sends anything unusual the ordinary way
            if batch is not None:
                self._confirmed = True
                return batch
        if status != 200:
            if not self._confirmed and status in (400, 403, 404, 405, 500, 501):
                raise JsonRpcUnavailableError(f"{self.endpoint.url}/jsonrpc answered HTTP {status}")
            raise XapiProtocolError(f"XAPI JSON-RPC call {method} answered HTTP {status}")
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if not self._confirmed:
                raise JsonRpcUnavailableError(f"{self.endpoint.url}/jsonrpc did not answer JSON") from exc
            raise XapiProtocolError(f"XAPI JSON-RPC call {method} answered malformed JSON") from exc
        if not isinstance(message, dict):
            raise XapiProtocolError(f"XAPI JSON-RPC call {method} answered a non-object")
        self._confirmed = True
        error = message.get("error")
        if error is not None:
            if isinstance(error, dict):  # JSON-RPC 2.0
                data = error.get("data") or []
                raise XapiError(
                    str(error.get("message", "UNKNOWN_XAPI_ERROR")), data if isinstance(data, list) else [data]
                )
            raise XapiError.from_description(error)  # JSON-RPC 1.0: [CODE, args...]
        if "result" not in message:
            raise XapiProtocolError(f"XAPI JSON-RPC call {method} answered neither result nor error")
        return message["result"]

    def _abort_connection(self) -> None:
        abort_connection(self._connection)

    def close(self) -> None:
        with self._connection_lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
