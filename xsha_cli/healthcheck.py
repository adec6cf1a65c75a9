"""`python -m xsha_cli.healthcheck [ADDRESS]`: exit 0 when a gRPC server's health service answers SERVING.

The container HEALTHCHECK of both services; ADDRESS defaults to $XSHA_HEALTHCHECK_ADDRESS. The health service
needs no token. TLS options come from flags or the same XSHA_* variables as the `xsha` CLI (XSHA_CA_FILE,
XSHA_CERT_FILE, XSHA_KEY_FILE, XSHA_TLS_SERVER_NAME).
Exit codes: 0 SERVING, 1 answered but not SERVING (or the service is unknown), 3 no answer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xsha_cli.client import ConnectionOptions, ExitCode, open_channel


def check(address: str, options: ConnectionOptions, service: str = "") -> tuple[ExitCode, str]:
    """(exit code, status text) of one health check."""
    channel = open_channel(address, options)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=options.timeout)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        if code is grpc.StatusCode.NOT_FOUND:
            return ExitCode.RPC_ERROR, f"UNKNOWN SERVICE {service!r}"
        name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        return ExitCode.UNAVAILABLE, f"no answer ({name})"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return (ExitCode.OK if status == "SERVING" else ExitCode.RPC_ERROR), status


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xsha_cli.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("XSHA_HEALTHCHECK_ADDRESS") or None,
        help="host:port of the gRPC server (default: $XSHA_HEALTHCHECK_ADDRESS)",
    )
    parser.add_argument("--service", default="", help="service name to check (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    parser.add_argument("--tls", action="store_true", default=os.environ.get("XSHA_TLS", "") in ("1", "true", "yes"))
    parser.add_argument("--ca-file", type=Path, default=_env_path("XSHA_CA_FILE"))
    parser.add_argument("--cert-file", type=Path, default=_env_path("XSHA_CERT_FILE"))
    parser.add_argument("--key-file", type=Path, default=_env_path("XSHA_KEY_FILE"))
    parser.add_argument("--tls-server-name", default=os.environ.get("XSHA_TLS_SERVER_NAME") or None)
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    if not args.address:
        parser.error("give the server's host:port, or set XSHA_HEALTHCHECK_ADDRESS")
    options = ConnectionOptions(
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        tls_server_name=args.tls_server_name,
        timeout=args.timeout,
    )
    problems = options.problems()
    if problems:
        print(f"healthcheck: {'; '.join(problems)}", file=sys.stderr)
        return int(ExitCode.USAGE)
    code, status = check(args.address, options, args.service)
    if not args.quiet:
        print(f"{args.address}: {status}", file=sys.stdout if code is ExitCode.OK else sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
