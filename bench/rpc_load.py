"""A gRPC load generator run as its own process (`python -m bench.rpc_load ...`), so it never shares a GIL with
the server it measures: N concurrent callers (grpc.aio) for a fixed time; prints one JSON line.

    python -m bench.rpc_load --target 127.0.0.1:50052 --method health --clients 32 --seconds 5
    python -m bench.rpc_load --target ... --method decide --cluster c1 --token T --clients 32 --seconds 5
    python -m bench.rpc_load --target ... --method decide --count 20000   # a fixed number of decisions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xsha_api.v1 import common_pb2, ha_service_pb2, ha_service_pb2_grpc


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(args.target)
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    call: Callable[[int, int], Awaitable[object]]
    if args.method == "health":
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        def call(worker: int, n: int) -> Awaitable[object]:
            reply: Awaitable[object] = health.Check(request, timeout=30)
            return reply

    else:
        ha = ha_service_pb2_grpc.HaPolicyServiceStub(channel)
        prefix = f"{args.name_prefix}{os.getpid()}"

        def call(worker: int, n: int) -> Awaitable[object]:
            return ha.DecideVmDeployment(
                ha_service_pb2.DecideVmDeploymentRequest(
                    cluster_id=args.cluster,
                    instance_name=(
                        f"{args.name_prefix}{worker * args.count_per_client + n + 1}"
                        if args.count
                        else f"{prefix}-{worker}-{n}-VM"
                    ),
                    vm_type=common_pb2.VM_TYPE_USER,
                    offering_ha_enabled=True,
                ),
                metadata=metadata,
                timeout=60,
            )

    latencies: list[float] = []
    errors: dict[str, int] = {}
    warmup_until = time.perf_counter() + args.warmup
    stop_at = warmup_until + args.seconds

    async def worker(index: int) -> None:
        n = 0
        while True:
            if args.count:
                if n >= args.count_per_client:
                    return
            elif time.perf_counter() >= stop_at:
                return
            started = time.perf_counter()
            try:
                await call(index, n)
                if started >= warmup_until or args.count:
                    latencies.append(time.perf_counter() - started)
            except grpc.RpcError as error:
                code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else "ERROR"
                errors[code] = errors.get(code, 0) + 1
            n += 1

    if args.count:
        args.count_per_client = -(-args.count // args.clients)
    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.clients)))
    elapsed = time.perf_counter() - (began if args.count else warmup_until)
    await channel.close(None)
    return {
        "method": args.method,
        "clients": args.clients,
        "calls": len(latencies),
        "seconds": round(elapsed, 3),
        "per_second": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(_percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2) if latencies else None,
        "errors": errors,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rpc_load")
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", choices=("health", "decide"), required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--count", type=int, default=0, help="make this many calls in total instead (no warmup)")
    parser.add_argument("--cluster", default="")
    parser.add_argument("--name-prefix", default="i-9-")
    parser.add_argument("--token", default="")
    args = parser.parse_args(argv)
    if args.count:
        args.warmup = 0.0
    result = asyncio.run(_run(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
