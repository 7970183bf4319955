"""`engine schedules` — list, pause, resume, trigger and backfill schedules (pause --all: the
emergency stop).

The CLI acts as `cli:<user>` (cli.context.operator()); every change is audited under it.
"""

from __future__ import annotations

import click

from cli.context import emit, operator, sender, session, settings
from engine.models import timestamp
from engine.schedules import backfill, manage, tokens, trigger


@click.group("schedules")
def schedules() -> None:
    """Cron schedules: list, pause, resume, trigger, backfill."""


@schedules.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100)
@click.option("--cursor", default=None, help="Continue after a page (its next_cursor).")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON page (GET /schedules).")
def schedules_list(limit: int, cursor: str | None, as_json: bool) -> None:
    """List schedules by name: state, cron and timezone, next and last fire, and owner;
    "token revoked" marks one whose token was revoked (its next fire pauses it)."""
    from web import serialize

    with session() as current:
        items, following = manage.list_schedules(current, operator(), limit=limit, cursor=cursor)
        if as_json:
            emit(serialize.page([serialize.schedule(item) for item in items], following))
            return
        revoked = tokens.revocations(current, (item.created_jti for item in items))
        for item in items:
            state = "enabled" if item.enabled else "paused"
            flag = "  token revoked" if item.created_jti in revoked else ""
            click.echo(
                f"{item.name}  {state:<7}  {item.cron!r} {item.timezone}  {item.workflow}  "
                f"next {timestamp(item.next_fire_at) or '-'}  "
                f"last {timestamp(item.last_fired_at) or '-'}  by {item.created_by}{flag}"
            )


@schedules.command("pause")
@click.argument("name", required=False)
@click.option("--all", "every", is_flag=True, help="Pause every enabled schedule.")
def schedules_pause(name: str | None, every: bool) -> None:
    """Pause the schedule NAME (or id), or --all of them: no run is submitted until resumed."""
    if bool(name) == every:
        raise click.UsageError("give a NAME or --all" + (", not both" if every else ""))
    with session() as current:
        if every:
            click.echo(f"paused {manage.pause_all(current, operator())} schedule(s)")
            return
        manage.pause(current, name or "", operator())
    click.echo(f"paused {name}")


@schedules.command("resume")
@click.argument("name")
def schedules_resume(name: str) -> None:
    """Resume the schedule NAME (or id) from its next fire time after now."""
    with session() as current:
        resumed = manage.resume(current, name, operator())
        next_fire = timestamp(resumed.next_fire_at)
    click.echo(f"resumed {name}; next fire {next_fire}")


@schedules.command("trigger")
@click.argument("name")
def schedules_trigger(name: str) -> None:
    """Submit the run the schedule NAME (or id) would submit at its next fire, now; its fire
    times stay as they are. Prints the run's id."""
    with session() as current:
        run, work, _ = trigger.trigger(current, settings(), name, operator())
        run_id = run.id
    with sender() as send:
        send(work)
    click.echo(run_id)


@schedules.command("backfill")
@click.argument("name")
@click.option("--since", required=True, help="The first fire time's earliest (ISO 8601; UTC).")
@click.option("--until", required=True, help="The window's end, excluded; not in the future.")
@click.option(
    "--reason", default=None, help="Why (audited). Without it, only the dry run is shown."
)
@click.option("--yes", is_flag=True, help="Submit without asking to confirm the count.")
def schedules_backfill(name: str, since: str, until: str, reason: str | None, yes: bool) -> None:
    """Submit a run of the schedule NAME (or id) for each of its fire times from --since to
    --until, as its fires would have; a fire time that has its run keeps it. First the dry
    run: each fire time, with its run if it has one. With --reason, the count is then
    confirmed (asked, unless --yes) and the runs are submitted."""
    if reason is not None and not reason.strip():
        raise click.BadParameter("must not be blank", param_hint="'--reason'")
    with session() as current:
        found = backfill.plan(current, settings(), name, operator(), since, until)
        existing = dict(found.existing)
        count = len(found.fire_times)
        for moment in found.fire_times:
            click.echo(f"{timestamp(moment)}  {existing.get(moment, '-')}")
    click.echo(f"{count} fire time(s), {len(existing)} with a run already")
    if reason is None:
        click.echo("dry run: nothing submitted; add --reason R to submit the others")
        return
    if not yes:
        click.confirm(f"submit the runs of {count - len(existing)} fire time(s)?", abort=True)
    with session() as current:
        done = backfill.backfill(
            current, settings(), name, operator(), since, until, confirm_count=count, reason=reason
        )
        submitted, work = done.submitted, done.work
        lines = [
            f"{timestamp(moment)}  {run_id}  {'submitted' if created else 'existing'}"
            for moment, run_id, created in done.runs
        ]
    with sender() as send:
        send(work)
    for line in lines:
        click.echo(line)
    click.echo(f"submitted {submitted} run(s); {count - submitted} had theirs already")
