"""`xsha migrations`: plan and apply the move of a cluster between HA modes, with progress."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xsha_api.v1 import common_pb2, ha_service_pb2
from xsha_cli.client import ExitCode, fail
from xsha_cli.context import get_state
from xsha_cli.output import enum_label, fmt_time, message_to_dict, or_dash
from xsha_cli.parsing import parse_enum

app = typer.Typer(help="Move a cluster between CLOUDSTACK and NATIVE HA: plan, apply (with progress), inspect.")


def mode_label(mode: int) -> str:
    return enum_label(common_pb2.HaMode, mode)


def migration_row(migration: ha_service_pb2.Migration) -> tuple[str, ...]:
    return (
        migration.migration_id,
        migration.cluster_id,
        f"{mode_label(migration.source_mode)} -> {mode_label(migration.target_mode)}",
        enum_label(ha_service_pb2.MigrationState, migration.state),
        f"{migration.steps_succeeded}+{migration.steps_skipped} of {migration.steps_total}"
        + (f", {migration.steps_failed} failed" if migration.steps_failed else ""),
        str(sum(1 for problem in migration.problems if problem.blocking)),
        fmt_time(migration.create_time),
        fmt_time(migration.finish_time),
    )


MIGRATION_COLUMNS = ("id", "cluster", "move", "state", "steps done", "blocking problems", "created", "finished")


def show_migration(ctx: typer.Context, migration: ha_service_pb2.Migration, *, steps: bool = True) -> None:
    output = get_state(ctx).output
    if output.json:
        output.emit_json(message_to_dict(migration))
        return
    output.record(
        f"Migration {migration.migration_id}",
        list(zip(MIGRATION_COLUMNS, migration_row(migration), strict=True)),
        migration,
    )
    if migration.problems:
        output.table(
            "Problems",
            ("code", "blocking", "message", "how to fix"),
            [(p.code, "yes" if p.blocking else "no", p.message, p.how_to_fix) for p in migration.problems],
            list(migration.problems),
        )
    if steps and migration.steps:
        output.table(
            "Steps",
            ("#", "kind", "instance", "priority", "state", "message"),
            [step_row(step) for step in migration.steps],
            list(migration.steps),
        )


def step_row(step: ha_service_pb2.MigrationStep) -> tuple[str, ...]:
    priorities = ""
    if step.kind == ha_service_pb2.MIGRATION_STEP_KIND_SET_VM_HA_PRIORITY:
        priorities = f"{step.from_ha_restart_priority or '(none)'} -> {step.to_ha_restart_priority or '(none)'}"
    return (
        str(step.index),
        enum_label(ha_service_pb2.MigrationStepKind, step.kind),
        or_dash(step.instance_name),
        or_dash(priorities),
        enum_label(ha_service_pb2.MigrationStepState, step.state),
        or_dash(step.message),
    )


@app.command("plan")
def plan(
    ctx: typer.Context,
    cluster_id: Annotated[str, typer.Argument(help="CloudStack cluster id.")],
    to: Annotated[str, typer.Option("--to", help="Target mode: native or cloudstack.")],
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Plan moving a cluster to another HA mode: preconditions and every step. The plan is stored."""
    client = get_state(ctx).client
    request = ha_service_pb2.PlanMigrationRequest(
        cluster_id=cluster_id,
        target_mode=parse_enum(common_pb2.HaMode, to, option="--to"),
        request_id=request_id or "",
    )
    show_migration(ctx, client.call(client.ha.PlanMigration, request).migration)


@app.command("apply")
def apply(
    ctx: typer.Context,
    migration_id: Annotated[str, typer.Argument(help="The planned migration's id.")],
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
) -> None:
    """Apply a planned migration with a progress bar; safe to run again after an interruption (it resumes)."""
    state = get_state(ctx)
    client, output = state.client, state.output
    stream = client.stream(
        client.ha.ApplyMigration,
        ha_service_pb2.ApplyMigrationRequest(migration_id=migration_id, request_id=request_id or ""),
    )
    last: ha_service_pb2.ApplyMigrationResponse | None = None
    if output.json:
        for message in stream.responses():
            output.emit_json(message_to_dict(message), compact=True)
            last = message
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=output.out, transient=False) as progress:
            task = progress.add_task(f"migration {migration_id}", total=None)
            for message in stream.responses():
                last = message
                progress.update(task, total=message.steps_total or None, completed=message.steps_done)
                step = message.step
                if message.HasField("step") and step.state == ha_service_pb2.MIGRATION_STEP_STATE_FAILED:
                    progress.console.print(
                        f"step {step.index} failed: {step.instance_name} {step.message}", markup=False
                    )
    if last is None:
        fail(f"ha_service ended the apply stream of migration {migration_id} without any progress", ExitCode.RPC_ERROR)
    final_state = enum_label(ha_service_pb2.MigrationState, last.state)
    output.line(
        f"migration {migration_id}: {final_state}, {last.steps_done}/{last.steps_total} steps done, "
        f"{last.steps_failed} failed"
    )
    if last.state == ha_service_pb2.MIGRATION_STATE_FAILED:
        fail(
            f"migration {migration_id} has failed steps; fix them and apply again (see `xsha migrations get`)",
            ExitCode.RPC_ERROR,
        )


@app.command("get")
def get(
    ctx: typer.Context,
    migration_id: Annotated[str, typer.Argument(help="The migration's id.")],
    steps: Annotated[bool, typer.Option("--steps/--no-steps", help="Include every step.")] = True,
) -> None:
    """Show a migration, its problems and steps."""
    client = get_state(ctx).client
    request = ha_service_pb2.GetMigrationRequest(migration_id=migration_id, omit_steps=not steps)
    show_migration(ctx, client.call(client.ha.GetMigration, request).migration, steps=steps)


@app.command("list")
def list_migrations(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option("--cluster", "-c", help="Only this cluster.")] = "",
) -> None:
    """List migrations."""
    state = get_state(ctx)
    client = state.client
    migrations, _ = client.paged(
        client.ha.ListMigrations, ha_service_pb2.ListMigrationsRequest(cluster_id=cluster), "migrations"
    )
    state.output.table(
        "Migrations", MIGRATION_COLUMNS, [migration_row(m) for m in migrations], migrations, empty="no migration"
    )
