"""Small socket helpers for proxy tests: a recording TCP echo server, a client connect and an exact read."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["EchoServer", "connect", "recv_exactly"]


class EchoServer:
    """Echoes every byte back on a thread per connection, recording the bytes it received (in order)."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._received = bytearray()
        self._connections: list[socket.socket] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="echo-accept", daemon=True)
        self._thread.start()

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    def _accept_loop(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._stopping:
                    connection.close()
                    return
                self._connections.append(connection)
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    def _echo(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError), connection:
            while data := connection.recv(65536):
                with self._lock:
                    self._received += data
                connection.sendall(data)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            connections = list(self._connections)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        self._listener.close()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self._thread.join(2)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    """A client socket to 127.0.0.1:port; reads time out after ``timeout`` so a broken proxy fails, never hangs."""
    client = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
