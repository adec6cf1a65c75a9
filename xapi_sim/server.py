"""HTTP endpoints: one threaded HTTP/1.1 (keep-alive) server per simulated host.

XML-RPC on POST `/` and `/RPC2`, JSON-RPC on POST `/jsonrpc` (HTTP 404 when the pool has JSON-RPC switched off,
like a xapi without the handler), HTTP 500 for a request that does not parse, HTTP 404 for anything else.
A dead host's endpoint closes its listening socket and every open connection.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from xapi_sim import api, wire_json, wire_xml
from xapi_sim.errors import MalformedRequestError, XapiError
from xapi_sim.pool import SimPool

log = logging.getLogger("xapi_sim")
_current = threading.local()  # the connection a handler thread is serving (not dropped by its own crash call)

NOT_FOUND = b"<html><body><h1>HTTP 404 Not Found</h1></body></html>"


def host_address(ip: str, port: int) -> str:
    """What host.address and HOST_IS_SLAVE carry: the IP, plus ":port" unless it is the default HTTP port."""
    return ip if port == 80 else f"{ip}:{port}"


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], endpoint: HostEndpoint) -> None:
        self.endpoint = endpoint
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing and dropped / crashed connections are routine here, not errors worth a traceback.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def drop_connections(self, spare_current: bool = True) -> int:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        spared = getattr(_current, "sock", None) if spare_current else None
        dropped = 0
        for sock in sockets:
            if sock is spared:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
                dropped += 1
            except OSError:
                pass
        return dropped


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
    server_version = "xapi/1.0"
    sys_version = ""
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without NODELAY, Nagle + delayed ACK add ~40 ms per call.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._send(404, "text/html", NOT_FOUND)

    def do_POST(self) -> None:
        endpoint = self.server.endpoint
        _current.sock = self.connection
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if endpoint.dead:
                self.close_connection = True
                return
            path = self.path.split("?", 1)[0]
            if path in ("/", "/RPC2"):
                status, ctype, payload = endpoint.handle_xmlrpc(body)
            elif path == "/jsonrpc" and endpoint.pool.jsonrpc:
                status, ctype, payload = endpoint.handle_jsonrpc(body)
            else:
                status, ctype, payload = 404, "text/html", NOT_FOUND
            self._send(status, ctype, payload)
            if endpoint.dead:
                self.close_connection = True
        finally:
            _current.sock = None

    def _send(self, status: int, ctype: str, payload: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(payload)}\r\n"
            f"Connection: {'close' if self.close_connection else 'keep-alive'}\r\n\r\n"
        ).encode("latin-1")
        self.endpoint_stats_sent(len(payload))
        if len(payload) < 65536:
            self.wfile.write(head + payload)
        else:
            self.wfile.write(head)
            self.wfile.write(payload)

    def endpoint_stats_sent(self, size: int) -> None:
        self.server.endpoint.pool.stats["bytes_sent"] += size


class HostEndpoint:
    """The HTTP server of one host; stop/start keep the port, so a restored host answers where it did."""

    def __init__(self, pool: SimPool, host_ref: str, ip: str, port: int = 0) -> None:
        self.pool = pool
        self.host_ref = host_ref
        self.ip = ip
        self.port = port
        self.dead = True
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return host_address(self.ip, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def start(self) -> None:
        if self._server is not None:
            return
        server = _HttpServer((self.ip, self.port), self)
        self.port = int(server.server_address[1])
        self._server = server
        self.dead = False
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"xapi-sim-{self.address}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.dead = True
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()

    def drop_connections(self) -> int:
        return self._server.drop_connections() if self._server is not None else 0

    # ------------------------------------------------------------------ request handling
    def _call(self, method: str, params: list[Any], wire: str) -> tuple[Any, XapiError | None, api.CallContext]:
        pool = self.pool
        ctx = api.CallContext(pool, self.host_ref, wire)
        control = api.is_control(method)
        if not control:
            pool.delay_call()
        try:
            value, error = api.dispatch(ctx, method, params), None
        except XapiError as exc:
            value, error = None, exc
        except Exception as exc:  # a simulator bug must still answer with an envelope
            log.exception("internal error in %s", method)
            value, error = None, XapiError("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}")
        if not control:
            pool.log_call(self.host_ref, method, ctx.session, wire, "ok" if error is None else error.code)
        return value, error, ctx

    def handle_xmlrpc(self, body: bytes) -> tuple[int, str, bytes]:
        try:
            method, params = wire_xml.parse_request(body)
        except MalformedRequestError as exc:
            return 500, "text/plain", f"malformed XML-RPC request: {exc}".encode()
        value, error, _ = self._call(method, params, "xmlrpc")
        try:
            payload = wire_xml.success(value) if error is None else wire_xml.failure(error)
        except TypeError as exc:
            payload = wire_xml.failure(XapiError("INTERNAL_ERROR", str(exc)))
        return 200, "text/xml", payload

    def handle_jsonrpc(self, body: bytes) -> tuple[int, str, bytes]:
        try:
            method, params, req_id, v2 = wire_json.parse_request(body)
        except MalformedRequestError as exc:
            return 500, "text/plain", f"malformed JSON-RPC request: {exc}".encode()
        value, error, _ = self._call(method, params, "jsonrpc")
        try:
            payload = wire_json.success(value, req_id, v2) if error is None else wire_json.failure(error, req_id, v2)
        except TypeError as exc:
            payload = wire_json.failure(XapiError("INTERNAL_ERROR", str(exc)), req_id, v2)
        return 200, "application/json", payload


class PoolEndpoints:
    """The endpoints of one pool; the pool's hooks for host death, restoration and dropped connections."""

    def __init__(self, pool: SimPool, endpoints: dict[str, HostEndpoint]) -> None:
        self.pool = pool
        self.endpoints = endpoints
        pool.hooks = self

    def start(self) -> None:
        for host_ref, endpoint in self.endpoints.items():
            if host_ref not in self.pool.dead_hosts:
                endpoint.start()
                if self.pool.store.by_ref[host_ref].rec["address"] != endpoint.address:
                    self.pool.set_host_address(host_ref, endpoint.address)

    def stop(self) -> None:
        # In parallel: each server's shutdown waits up to one poll interval for its serve_forever loop.
        threads = [threading.Thread(target=e.stop, daemon=True) for e in self.endpoints.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def host_down(self, host_ref: str) -> None:
        self.endpoints[host_ref].stop()

    def host_up(self, host_ref: str) -> None:
        self.endpoints[host_ref].start()

    def drop_connections(self) -> int:
        return sum(endpoint.drop_connections() for endpoint in self.endpoints.values())
