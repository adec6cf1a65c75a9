"""`xsha health`: both services' gRPC health status."""

from __future__ import annotations

import typer

from xsha_cli.client import ExitCode, fail
from xsha_cli.context import get_state
from xsha_cli.healthcheck import check


def health(ctx: typer.Context) -> None:
    """Check both services through the standard gRPC health service (no token needed)."""
    state = get_state(ctx)
    client, output = state.client, state.output
    results = []
    for endpoint in (client.ha_endpoint, client.sync_endpoint):
        code, status = check(endpoint.address, client.options)
        results.append((endpoint, code, status))
    if output.json:
        output.emit_json([{"service": e.service, "address": e.address, "status": status} for e, _, status in results])
    else:
        for endpoint, code, status in results:
            output.out.print(f"{endpoint.service:13} {endpoint.address:24} {status}", markup=False,
                             style="green" if code is ExitCode.OK else "red")  # fmt: skip
    worst = max(code for _, code, _ in results)
    if worst is not ExitCode.OK:
        failed = ", ".join(f"{e.service} {status}" for e, code, status in results if code is not ExitCode.OK)
        fail(f"not healthy: {failed}", worst)
