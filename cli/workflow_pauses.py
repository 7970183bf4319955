"""`engine workflows pause|resume`: stop new runs of a workflow, and take them again."""

from __future__ import annotations

import click

from cli.context import operator, session
from engine import pauses


@click.command("pause")
@click.argument("name")
@click.option("--reason", required=True, help="Why (1 to 500 characters); shown to clients.")
def workflows_pause(name: str, reason: str) -> None:
    """Refuse new runs of NAME (every version, from clients and schedules) until resumed;
    runs already submitted go on (`engine runs cancel` stops one)."""
    with session() as current:
        pause, created = pauses.pause(current, name, reason, operator().sub)
        by, why = pause.paused_by, pause.reason
    click.echo(f"paused {name}" if created else f"{name} was already paused by {by}: {why}")


@click.command("resume")
@click.argument("name")
def workflows_resume(name: str) -> None:
    """Take new runs of NAME again."""
    with session() as current:
        resumed = pauses.resume(current, name, operator().sub)
    click.echo(f"resumed {name}" if resumed else f"{name} was not paused")


COMMANDS = (workflows_pause, workflows_resume)
