"""The `xsha` command: global options (connection, TLS, token, output) and the command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xsha_cli.client import (
    DEFAULT_HA_ADDRESS,
    DEFAULT_SYNC_ADDRESS,
    DEFAULT_TIMEOUT_SECONDS,
    Client,
    ConnectionOptions,
    ExitCode,
    fail,
    read_token_file,
)
from xsha_cli.commands import actions, clusters, deploy, fencing, health, hosts, migrations, pools, settings, vms, watch
from xsha_cli.context import CliState
from xsha_cli.output import Output, OutputFormat

HELP = """Operate xsha, native XenServer HA for Apache CloudStack.

Connection options also come from the environment: XSHA_HA_ADDRESS, XSHA_SYNC_ADDRESS, XSHA_TOKEN (or
XSHA_TOKEN_FILE), XSHA_TLS, XSHA_CA_FILE, XSHA_CERT_FILE, XSHA_KEY_FILE, XSHA_TLS_SERVER_NAME, XSHA_TIMEOUT,
XSHA_OUTPUT.

Exit codes: 0 ok, 1 the service answered with an error, 2 usage error, 3 service unreachable or unavailable,
4 authentication refused, 5 operation not implemented by the service.
"""

app = typer.Typer(
    name="xsha",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)


@app.callback()
def global_options(
    ctx: typer.Context,
    ha_address: Annotated[
        str, typer.Option(envvar="XSHA_HA_ADDRESS", help="ha_service (HaPolicyService) host:port.")
    ] = DEFAULT_HA_ADDRESS,
    sync_address: Annotated[
        str, typer.Option(envvar="XSHA_SYNC_ADDRESS", help="sync_service (HypervisorSyncService) host:port.")
    ] = DEFAULT_SYNC_ADDRESS,
    token: Annotated[str | None, typer.Option(envvar="XSHA_TOKEN", help="Bearer token.", show_default=False)] = None,
    token_file: Annotated[
        Path | None, typer.Option(envvar="XSHA_TOKEN_FILE", help="File holding the bearer token (first line).")
    ] = None,
    tls: Annotated[bool, typer.Option(envvar="XSHA_TLS", help="Use TLS (implied by any TLS file option).")] = False,
    ca_file: Annotated[
        Path | None, typer.Option(envvar="XSHA_CA_FILE", help="PEM CA bundle to verify the servers.")
    ] = None,
    cert_file: Annotated[
        Path | None, typer.Option(envvar="XSHA_CERT_FILE", help="PEM client certificate (mutual TLS).")
    ] = None,
    key_file: Annotated[Path | None, typer.Option(envvar="XSHA_KEY_FILE", help="PEM client key (mutual TLS).")] = None,
    tls_server_name: Annotated[
        str | None, typer.Option(envvar="XSHA_TLS_SERVER_NAME", help="Server name to verify, when not the host.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(envvar="XSHA_TIMEOUT", help="Seconds to wait for each answer.")
    ] = DEFAULT_TIMEOUT_SECONDS,
    output: Annotated[
        OutputFormat, typer.Option("--output", "-o", envvar="XSHA_OUTPUT", help="table (for people) or json.")
    ] = OutputFormat.TABLE,
) -> None:
    if token is None and token_file is not None:
        try:
            token = read_token_file(token_file)
        except (OSError, ValueError) as error:
            fail(f"--token-file: {error}", ExitCode.USAGE)
    options = ConnectionOptions(
        ha_address=ha_address,
        sync_address=sync_address,
        token=token,
        tls=tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        tls_server_name=tls_server_name,
        timeout=timeout,
    )
    problems = options.problems()
    if problems:
        fail("; ".join(problems), ExitCode.USAGE)
    client = Client(options)
    ctx.obj = CliState(client, Output(output))
    ctx.call_on_close(client.close)


app.add_typer(clusters.app, name="clusters")
app.add_typer(pools.app, name="pools")
app.add_typer(vms.app, name="vms")
app.add_typer(hosts.app, name="hosts")
app.add_typer(settings.app, name="settings")
app.add_typer(actions.app, name="actions")
app.add_typer(migrations.app, name="migrations")
app.add_typer(watch.app, name="watch")
app.command("decide")(deploy.decide)
app.command("fencing")(fencing.fencing)
app.command("health")(health.health)
