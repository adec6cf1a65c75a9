"""A tiny service run as a subprocess by test_signal_shutdown.py: serves until SIGTERM, then shuts down gracefully.

Prints one JSON line with the port once serving, "callback ran" from its shutdown callback, and "exited" at the end.
Its `Block` method waits until the server reports NOT_SERVING, so it is in flight across the SIGTERM.
"""

from __future__ import annotations

import json
import sys

import grpc
from grpc_health.v1 import health_pb2

from xsha_common.server import ServerSettings, ServiceRegistration, ServiceServer, build_server
from xsha_common.testing import wait_until


def main() -> None:
    server_holder: list[ServiceServer] = []

    def block(request: bytes, context: grpc.ServicerContext) -> bytes:
        print("block entered", flush=True)
        server = server_holder[0]
        wait_until(lambda: server.health_status("") == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=60)
        return b"finished after SIGTERM"

    handler = grpc.method_handlers_generic_handler(
        "xsha.test.Signal", {"Block": grpc.unary_unary_rpc_method_handler(block)}
    )
    server = build_server(
        [ServiceRegistration.generic(handler, "xsha.test.Signal")],
        ServerSettings(listen_address="127.0.0.1:0", auth_tokens=("signal-token",), shutdown_grace_seconds=30),
    )
    server_holder.append(server)
    server.add_shutdown_callback(lambda: print("callback ran", flush=True))
    server.install_signal_handlers()
    port = server.start()
    print(json.dumps({"port": port}), flush=True)
    server.wait()
    print("exited", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
