"""A controllable TCP proxy for reliability tests: put it between a client and a server and break the link at will.

    with FaultProxy("127.0.0.1", db_port) as proxy:
        url = f"postgresql+psycopg://u@127.0.0.1:{proxy.port}/db"
        ...
        proxy.cut()        # live connections reset, new ones reset on accept, until restore()
        proxy.stall()      # connections stay open, nothing moves (held bytes flow again on restore())
        proxy.slow(0.2)    # every chunk arrives at least 200 ms after it was read
        proxy.restore()

One background thread runs a selector loop over every socket, so latency pipelines like a real link (a second
chunk does not wait for the first one's delay to end) and control calls never race with socket I/O: a control call
that changes live connections (cut, stop) hands the work to the loop and waits, boundedly, until it is done.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

__all__ = ["FaultProxy", "ProxyStats"]

log = logging.getLogger(__name__)

CutHow = Literal["reset", "close"]

# Bound on bytes the proxy holds per direction; beyond it the proxy stops reading and TCP flow control pushes back.
_MAX_BUFFERED = 1 << 20
_RECV_SIZE = 1 << 16
# How long a control call waits for the loop, and stop() for the thread: a broken loop must never hang a test.
_CONTROL_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProxyStats:
    """A snapshot of the proxy's counters."""

    connections_accepted: int
    # Connections reset on accept because the proxy was cut, or because the upstream refused them.
    connections_rejected: int
    connections_open: int
    bytes_to_upstream: int
    bytes_to_client: int


@dataclass
class _Pipe:
    """One direction of a proxied connection: bytes read from `src`, queued with the time they may leave, to `dst`."""

    src: socket.socket
    dst: socket.socket
    to_upstream: bool
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    queued_bytes: int = 0
    # When the simulated link finishes sending what is queued (bandwidth limit).
    link_free_at: float = 0.0
    eof_received: bool = False
    eof_forwarded: bool = False


class _Connection:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.upstream_connected = False
        self.outbound = _Pipe(client, upstream, to_upstream=True)
        self.inbound = _Pipe(upstream, client, to_upstream=False)

    def pipes(self) -> tuple[_Pipe, _Pipe]:
        return self.outbound, self.inbound


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_host:upstream_port`` with run-time faults.

    Faults: `cut` / `cut_for` (connections closed, new ones reset), `stall` (nothing forwarded, nothing closed),
    `slow` (latency and bandwidth per chunk); `restore` ends them all. Thread-safe; `stop` never blocks for long.
    """

    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0, listen_host: str = "127.0.0.1"):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._listen_address = (listen_host, listen_port)
        self._lock = threading.Lock()
        # Fault state, read by the loop on every turn.
        self._cut = False
        self._stalled = False
        self._latency = 0.0
        self._bandwidth: float | None = None
        self._restore_generation = 0
        self._timer: threading.Timer | None = None
        # Counters.
        self._accepted = 0
        self._rejected = 0
        self._open = 0
        self._bytes_up = 0
        self._bytes_down = 0
        # Loop state (owned by the loop thread once started).
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._commands: deque[tuple[str, CutHow, threading.Event]] = deque()
        self._connections: list[_Connection] = []
        self._masks: dict[socket.socket, int] = {}
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._stopped = False

    # ------------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> int:
        """Bind, start forwarding and return the bound port."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        family = socket.AF_INET6 if ":" in self._listen_address[0] else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self._listen_address)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy:{self._port}", daemon=True)
        self._thread.start()
        return self._port

    def stop(self) -> None:
        """Reset every connection, close the listener and end the thread (bounded wait). Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._cancel_timer()
        if self._thread is None:
            return
        self._submit("stop")
        self._thread.join(_CONTROL_TIMEOUT)
        if self._thread.is_alive():
            log.error("FaultProxy loop on port %s did not stop within %ss", self._port, _CONTROL_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` to give a client (a gRPC target, a database URL's host part)."""
        return f"{self._listen_address[0]}:{self.port}"

    # ----------------------------------------------------------------------------------------------------- faults

    def cut(self, how: CutHow = "reset") -> None:
        """Close every open connection in both directions and reset new ones on accept, until `restore`.

        ``how="reset"`` sends RST (a pulled cable / crashed peer: the client sees ECONNRESET); ``"close"`` sends FIN
        (an orderly close: the client sees EOF). Returns once live connections are closed.
        """
        with self._lock:
            self._cut = True
            self._cancel_timer()
        self._submit("cut", how)

    def cut_for(self, seconds: float, how: CutHow = "reset") -> None:
        """`cut` now and `restore` after ``seconds`` in a background timer (a later fault call cancels the timer)."""
        self.cut(how)
        with self._lock:
            generation = self._restore_generation
            timer = threading.Timer(seconds, self._timed_restore, args=(generation,))
            timer.daemon = True
            self._timer = timer
        timer.start()

    def stall(self) -> None:
        """Keep connections open but forward nothing either way (nor EOFs) until `restore`; held bytes then flow."""
        with self._lock:
            self._stalled = True
        self._submit("sync")

    def slow(self, latency_seconds: float, bandwidth_bytes_per_s: float | None = None) -> None:
        """Deliver every chunk read from now on at least ``latency_seconds`` later, at most at the given bandwidth."""
        if latency_seconds < 0 or (bandwidth_bytes_per_s is not None and bandwidth_bytes_per_s <= 0):
            raise ValueError("latency must be >= 0 and bandwidth > 0")
        with self._lock:
            self._latency = latency_seconds
            self._bandwidth = bandwidth_bytes_per_s
        self._submit("sync")

    def restore(self) -> None:
        """End every fault: accept again, forward held bytes now, no added latency."""
        with self._lock:
            self._clear_faults()
            self._cancel_timer()
        self._submit("restore")

    # --------------------------------------------------------------------------------------------------- counters

    def stats(self) -> ProxyStats:
        with self._lock:
            return ProxyStats(self._accepted, self._rejected, self._open, self._bytes_up, self._bytes_down)

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._accepted

    @property
    def connections_open(self) -> int:
        with self._lock:
            return self._open

    @property
    def bytes_to_upstream(self) -> int:
        with self._lock:
            return self._bytes_up

    @property
    def bytes_to_client(self) -> int:
        with self._lock:
            return self._bytes_down

    @property
    def is_cut(self) -> bool:
        with self._lock:
            return self._cut

    @property
    def is_stalled(self) -> bool:
        with self._lock:
            return self._stalled

    # ----------------------------------------------------------------------------------------------- control plumbing

    def _cancel_timer(self) -> None:
        # Caller holds the lock. Bumping the generation also disarms a timer already past its wait.
        self._restore_generation += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _clear_faults(self) -> None:
        # Caller holds the lock.
        self._cut = False
        self._stalled = False
        self._latency = 0.0
        self._bandwidth = None

    def _timed_restore(self, generation: int) -> None:
        with self._lock:
            # A fault call after cut_for (or a manual restore) owns the state now.
            if generation != self._restore_generation or self._stopped:
                return
            self._clear_faults()
            self._timer = None
        self._submit("restore")

    def _wake(self) -> None:
        if self._wake_w is None:
            return
        with contextlib.suppress(OSError):  # full (already woken) or closed (stopped)
            self._wake_w.send(b"\0")

    def _submit(self, command: str, how: CutHow = "reset") -> None:
        """Hand a command to the loop and wait until it has run (bounded: the loop may be gone)."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        done = threading.Event()
        with self._lock:
            self._commands.append((command, how, done))
        self._wake()
        if not done.wait(_CONTROL_TIMEOUT):
            log.error("FaultProxy loop on port %s did not run %r within %ss", self._port, command, _CONTROL_TIMEOUT)

    # ---------------------------------------------------------------------------------------------------- the loop

    def _run(self) -> None:
        try:
            while self._turn():
                pass
        except Exception:
            log.exception("FaultProxy loop on port %s failed", self._port)
        finally:
            self._shutdown_loop()

    def _turn(self) -> bool:
        """One select round; False when the proxy is to stop."""
        assert self._selector is not None
        stalled, _ = self._faults()
        timeout = self._update_interest(time.monotonic(), stalled)
        ready = self._selector.select(timeout)
        # Commands first, and fault flags read after them: once a control call returns, this round obeys it.
        if any(key.fileobj is self._wake_r for key, _ in ready) and not self._drain_commands():
            return False
        stalled, cut = self._faults()
        for key, events in ready:
            sock = key.fileobj
            if sock is self._wake_r:
                continue
            if sock is self._listener:
                self._accept_all(cut)
                continue
            assert isinstance(sock, socket.socket)
            connection = key.data
            assert isinstance(connection, _Connection)
            if connection not in self._connections:
                continue  # closed earlier in this round
            if events & selectors.EVENT_WRITE:
                self._on_writable(connection, sock, stalled)
            if events & selectors.EVENT_READ and not stalled and connection in self._connections:
                self._on_readable(connection, sock)
        if not stalled:
            self._forward_eofs()
        return True

    def _faults(self) -> tuple[bool, bool]:
        with self._lock:
            return self._stalled, self._cut

    def _update_interest(self, now: float, stalled: bool) -> float | None:
        """Register what each socket waits for; return the time until the next queued chunk is due."""
        assert self._selector is not None
        timeout: float | None = None
        for connection in self._connections:
            masks = {connection.client: 0, connection.upstream: 0}
            if not connection.upstream_connected:
                masks[connection.upstream] |= selectors.EVENT_WRITE  # the connect completing
            for pipe in connection.pipes():
                src_ready = pipe.src is connection.client or connection.upstream_connected
                if not stalled and src_ready and not pipe.eof_received and pipe.queued_bytes < _MAX_BUFFERED:
                    masks[pipe.src] |= selectors.EVENT_READ
                if stalled or not pipe.queue or (pipe.dst is connection.upstream and not connection.upstream_connected):
                    continue
                due = pipe.queue[0][0]
                if due <= now:
                    masks[pipe.dst] |= selectors.EVENT_WRITE
                else:
                    timeout = due - now if timeout is None else min(timeout, due - now)
            for sock, mask in masks.items():
                self._set_mask(sock, mask, connection)
        return timeout

    def _set_mask(self, sock: socket.socket, mask: int, connection: _Connection) -> None:
        assert self._selector is not None
        current = self._masks.get(sock, 0)
        if mask == current:
            return
        if current == 0:
            self._selector.register(sock, mask, connection)
        elif mask == 0:
            self._selector.unregister(sock)
        else:
            self._selector.modify(sock, mask, connection)
        if mask:
            self._masks[sock] = mask
        else:
            self._masks.pop(sock, None)

    def _drain_commands(self) -> bool:
        assert self._wake_r is not None
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        keep_running = True
        for command, how, done in commands:
            if command == "cut":
                for connection in list(self._connections):
                    self._close(connection, reset=how == "reset")
            elif command == "restore":
                for connection in self._connections:
                    for pipe in connection.pipes():
                        # Held bytes are due now; keep FIFO order, so only the times change.
                        pipe.queue = deque((0.0, data) for _, data in pipe.queue)
                        pipe.link_free_at = 0.0
            elif command == "stop":
                keep_running = False
            done.set()
        return keep_running

    def _accept_all(self, cut: bool) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("FaultProxy accept failed: %s", exc)
                return
            if cut:
                # The listener stays bound (so the port cannot be taken meanwhile); a new connection is reset at once.
                # Counted first, so a client that sees the reset also sees the count.
                with self._lock:
                    self._rejected += 1
                _reset(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = socket.socket(_family(self.upstream_host), socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            result = upstream.connect_ex((self.upstream_host, self.upstream_port))
            if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
                with self._lock:
                    self._rejected += 1
                _reset(client)
                upstream.close()
                continue
            connection = _Connection(client, upstream)
            connection.upstream_connected = result == 0
            self._connections.append(connection)
            with self._lock:
                self._accepted += 1
                self._open += 1

    def _on_readable(self, connection: _Connection, sock: socket.socket) -> None:
        pipe = connection.outbound if sock is connection.client else connection.inbound
        with self._lock:
            latency, bandwidth = self._latency, self._bandwidth
        # With a bandwidth limit, read small pieces so bytes trickle rather than arrive in one late lump.
        size = _RECV_SIZE if bandwidth is None else max(1, min(_RECV_SIZE, int(bandwidth / 20)))
        try:
            data = sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(connection, reset=True)  # a reset on one side is passed on as a reset to the other
            return
        if not data:
            pipe.eof_received = True
            return
        now = time.monotonic()
        if bandwidth is None:
            due = now + latency
        else:
            start = max(now, pipe.link_free_at)
            pipe.link_free_at = start + len(data) / bandwidth
            due = pipe.link_free_at + latency
        pipe.queue.append((due, data))
        pipe.queued_bytes += len(data)

    def _on_writable(self, connection: _Connection, sock: socket.socket, stalled: bool) -> None:
        if sock is connection.upstream and not connection.upstream_connected:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                # Upstream down: the client sees what it would see without a proxy in between, a dead connection.
                self._close(connection, reset=True)
                return
            connection.upstream_connected = True
            return
        if stalled:
            return
        pipe = connection.outbound if sock is connection.upstream else connection.inbound
        now = time.monotonic()
        while pipe.queue and pipe.queue[0][0] <= now:
            due, data = pipe.queue[0]
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(connection, reset=True)
                return
            with self._lock:
                if pipe.to_upstream:
                    self._bytes_up += sent
                else:
                    self._bytes_down += sent
            pipe.queued_bytes -= sent
            if sent < len(data):
                pipe.queue[0] = (due, data[sent:])
                return
            pipe.queue.popleft()

    def _forward_eofs(self) -> None:
        for connection in list(self._connections):
            if not connection.upstream_connected:
                continue
            for pipe in connection.pipes():
                if pipe.eof_received and not pipe.queue and not pipe.eof_forwarded:
                    pipe.eof_forwarded = True
                    with contextlib.suppress(OSError):
                        pipe.dst.shutdown(socket.SHUT_WR)
            if connection.outbound.eof_forwarded and connection.inbound.eof_forwarded:
                self._close(connection, reset=False)

    def _close(self, connection: _Connection, *, reset: bool) -> None:
        assert self._selector is not None
        if connection not in self._connections:
            return
        self._connections.remove(connection)
        with self._lock:
            self._open -= 1  # before closing, so a client that sees the close also sees the count
        for sock in (connection.client, connection.upstream):
            if self._masks.pop(sock, 0):
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _shutdown_loop(self) -> None:
        for connection in list(self._connections):
            self._close(connection, reset=True)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()
        # Release control callers that queued a command after the loop ended.
        with self._lock:
            commands = list(self._commands)
            self._commands.clear()
        for _, _, done in commands:
            done.set()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER on with a zero timeout), as a crashed peer or a firewall would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
