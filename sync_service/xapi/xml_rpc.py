"""XAPI over XML-RPC through the XenAPI SDK (the fallback where a host offers no JSON-RPC)."""

from __future__ import annotations

import http.client
import xmlrpc.client
from collections.abc import Sequence
from typing import Any

import XenAPI

from sync_service.xapi.client import DEFAULT_ORIGINATOR, WireFormat, XapiClient, XapiEndpoint
from sync_service.xapi.errors import XapiConnectionError, XapiError, XapiProtocolError
from sync_service.xapi.tls import TlsOptions
from sync_service.xapi.transport import abort_connection, open_connection, set_timeout
from sync_service.xapi.xml_event_decoding import decode_xml_event_from


class _Transport(xmlrpc.client.Transport):
    """A keep-alive transport with per-call timeouts and our TLS verification (CA bundle, pinning, opt-out)."""

    def __init__(self, url: str, tls: TlsOptions, timeout: float) -> None:
        super().__init__()
        self._url = url
        self._tls = tls
        self.timeout = timeout
        self.current: http.client.HTTPConnection | None = None
        # Set for an event.from call: its answer goes through the typed decoder first.
        self.typed_events = False

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0] and self._connection[1] is not None:
            connection: http.client.HTTPConnection = self._connection[1]
        else:
            connection = open_connection(self._url, self._tls, self.timeout)
            self._connection = host, connection
        set_timeout(connection, self.timeout)
        self.current = connection
        return connection

    def parse_response(self, response: Any) -> tuple[Any, ...]:
        """The answer read whole (the stock transport feeds the parser 1 KB at a time); an event.from answer is
        decoded by the typed decoder when it can be, anything else by xmlrpc.client."""
        if response.getheader("Content-Encoding", "") == "gzip":
            return super().parse_response(response)  # type: ignore[no-any-return]
        body = response.read()
        if self.typed_events:
            batch = decode_xml_event_from(body)
            if batch is not None:
                return ({"Status": "Success", "Value": batch},)
        parser, unmarshaller = self.getparser()
        parser.feed(body)
        parser.close()
        return unmarshaller.close()  # type: ignore[no-any-return]


def _wire_param(value: Any) -> Any:
    # XAPI ints travel as strings over XML-RPC (and xmlrpc.client cannot send ints above 2^31-1 anyway).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class XmlRpcClient(XapiClient):
    wire_format: WireFormat = "xml"

    def __init__(self, endpoint: XapiEndpoint, *, timeout: float, originator: str = DEFAULT_ORIGINATOR) -> None:
        super().__init__(endpoint, timeout=timeout, originator=originator)
        self._transport = _Transport(endpoint.url, endpoint.tls, timeout)
        uri = endpoint.url.rstrip("/") + "/"
        self._proxy = XenAPI.Session(uri, transport=self._transport)

    def _request(self, method: str, params: Sequence[Any], timeout: float) -> Any:
        self._transport.timeout = timeout
        self._transport.typed_events = method == "event.from"
        function = getattr(self._proxy, method)  # ServerProxy's method dispatch: sends `Class.method`
        wire_params = [_wire_param(param) for param in params]
        for attempt in (1, 2):
            try:
                result = function(*wire_params)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._transport.close()
                if attempt == 1 and not self._take_abort():
                    continue  # a kept-alive connection closed while idle; every allowed call is idempotent
                raise XapiConnectionError(f"XAPI connection to {self.endpoint.url} lost: {exc}") from exc
            except xmlrpc.client.ProtocolError as exc:
                self._transport.close()
                raise XapiProtocolError(f"XAPI XML-RPC call {method} answered HTTP {exc.errcode}") from exc
            except xmlrpc.client.Fault as exc:
                raise XapiProtocolError(f"XAPI XML-RPC call {method} answered a fault: {exc.faultString}") from exc
            except (OSError, http.client.HTTPException, xmlrpc.client.ResponseError) as exc:
                self._transport.close()
                raise XapiConnectionError(f"XAPI call {method} to {self.endpoint.url} failed: {exc}") from exc
            except Exception as exc:  # expat errors on a malformed body
                self._transport.close()
                raise XapiProtocolError(f"XAPI XML-RPC call {method} answered malformed XML: {exc}") from exc
        self._aborted.clear()
        if not isinstance(result, dict) or "Status" not in result:
            raise XapiProtocolError(f"XAPI XML-RPC call {method} answered without a Status")
        if result["Status"] == "Success":
            if "Value" not in result:
                raise XapiProtocolError(f"XAPI XML-RPC call {method} answered Success without a Value")
            return result["Value"]
        raise XapiError.from_description(result.get("ErrorDescription"))

    def _abort_connection(self) -> None:
        abort_connection(self._transport.current)

    def close(self) -> None:
        self._transport.close()
