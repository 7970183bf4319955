"""`engine workflows pause|resume`: stop new runs of a workflow (and, with --cancel-running,
the live ones), and take them again."""

from __future__ import annotations

import click

from cli.context import operator, sender, session, settings
from engine import cancels, pauses
from engine.db import make_engine, make_session_factory


@click.command("pause")
@click.argument("name")
@click.option("--reason", required=True, help="Why (1 to 500 characters); shown to clients.")
@click.option(
    "--cancel-running",
    is_flag=True,
    help="Then cancel every live run of NAME too, BULK_CANCEL_BATCH runs per transaction.",
)
def workflows_pause(name: str, reason: str, cancel_running: bool) -> None:
    """Refuse new runs of NAME (every version, from clients and schedules) until resumed;
    runs already submitted go on, unless --cancel-running stops them all."""
    with session() as current:
        pause, created = pauses.pause(current, name, reason, operator().sub)
        by, why = pause.paused_by, pause.reason
    click.echo(f"paused {name}" if created else f"{name} was already paused by {by}: {why}")
    if cancel_running:
        click.echo(f"cancelled {_cancel_running(name, reason)} live run(s) of {name}")


def _cancel_running(name: str, reason: str) -> int:
    db_engine = make_engine(settings())
    cancelled = 0
    try:
        with sender() as send:
            for batch in cancels.cancel_workflow_runs(
                make_session_factory(db_engine),
                name,
                operator(),
                reason,
                batch_size=settings().bulk_cancel_batch,
            ):
                send(batch.work)
                cancelled += batch.cancelled
    finally:
        db_engine.dispose()
    return cancelled


@click.command("resume")
@click.argument("name")
def workflows_resume(name: str) -> None:
    """Take new runs of NAME again."""
    with session() as current:
        resumed = pauses.resume(current, name, operator().sub)
    click.echo(f"resumed {name}" if resumed else f"{name} was not paused")


COMMANDS = (workflows_pause, workflows_resume)
