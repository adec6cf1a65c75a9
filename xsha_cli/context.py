"""What every command gets from the global options: the client and the output."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from xsha_cli.client import Client
from xsha_cli.output import Output


@dataclass
class CliState:
    client: Client
    output: Output


def get_state(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):
        raise RuntimeError("the global options callback did not run")
    return state
