"""`engine runs` — submit (and --wait), watch, ls, show, cancel and retry runs.

The CLI acts as `cli:<user>` (cli.context.operator()), who sees every run; work a command
asks for is sent to the broker after its transaction commits.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import click

from cli import watch
from cli.context import emit, json_option, operator, sender, session, settings_with_actions
from engine import audit, cancels, concurrency, delayed, resume, run_query, runs, spec_schema
from engine.errors import EngineError
from engine.models import timestamp, utcnow
from engine.work import Work


def _send(work: Work) -> None:
    with sender() as send:
        send(work)


@click.group("runs")
def runs_group() -> None:
    """Runs."""


# A delay as --in takes it: a whole number of seconds, minutes, hours or days.
_DELAY = re.compile(r"(\d{1,9})\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _not_before(at: str | None, delay: str | None) -> datetime | None:
    """The run's not_before from --at (an RFC 3339 time with its offset) or --in (10m, 2h,
    1d: from now); None without either."""
    if at is not None and delay is not None:
        raise click.UsageError("give --at or --in, not both")
    if at is not None:
        try:
            return delayed.parse(at)
        except EngineError as exc:
            raise click.BadParameter(exc.errors[0]["message"], param_hint="--at") from exc
    if delay is None:
        return None
    found = _DELAY.fullmatch(delay.strip().lower())
    if found is None:
        raise click.BadParameter("a number and a unit: 30s, 10m, 2h or 1d", param_hint="--in")
    return utcnow() + timedelta(seconds=int(found[1]) * _UNIT_S[found[2]])


@runs_group.command("submit")
@click.argument("workflow")
@click.option("--params", default="{}", help="JSON object of run params.")
@click.option("--version", type=click.IntRange(1, spec_schema.MAX_VERSION), default=None)
@click.option("--priority", type=click.IntRange(0, 9), default=0)
@click.option("--at", default=None, help="Start it at this time (RFC 3339, with its offset).")
@click.option("--in", "delay", default=None, help="Start it this long from now: 10m, 2h, 1d.")
@click.option("--wait", is_flag=True, help="Then follow it as `runs watch` does.")
@click.option("--json", "as_json", is_flag=True, help="With --wait: states as JSON.")
def runs_submit(
    workflow: str,
    params: str,
    version: int | None,
    priority: int,
    at: str | None,
    delay: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Submit a run of WORKFLOW and print its id; with --at or --in it waits, queued, until
    then. With --wait, follow it until it finishes (exit 0 when it succeeded, 1 when it
    failed or was cancelled)."""
    parsed = json_option(params, "--params")
    not_before = _not_before(at, delay)
    with session() as current:
        run, work, _ = runs.submit(
            current,
            settings_with_actions(),
            runs.SubmitRun(workflow, parsed, version, priority, not_before=not_before),
            operator(),
        )
        run_id = run.id
    _send(work)
    if not (wait and as_json):  # each state printed as JSON has the id
        click.echo(run_id)
    if wait:
        raise SystemExit(watch.follow(run_id, as_json))


@runs_group.command("watch")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Each state as JSON (GET /runs/{id}).")
def runs_watch(run_id: str, as_json: bool) -> None:
    """Print a line each time RUN_ID or one of its steps changes, until it finishes: exit 0
    when it succeeded, 1 when it failed or was cancelled."""
    raise SystemExit(watch.follow(run_id, as_json))


@runs_group.command("ls")
@click.option("--status", default=None)
@click.option("--workflow", default=None)
@click.option("--since", default=None, help="Only runs submitted at or after this time (UTC).")
@click.option("--until", default=None, help="Only runs submitted before this time (UTC).")
@click.option("--by", "created_by", default=None, help="Only runs submitted by this sub.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20)
@click.option("--cursor", default=None, help="Continue after a page (its next_cursor).")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON page (GET /runs).")
def runs_ls(
    status: str | None,
    workflow: str | None,
    since: str | None,
    until: str | None,
    created_by: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first."""
    from web import serialize

    start, end = audit.parse_window(since, until)
    with session() as current:
        items, following = run_query.list_runs(
            current,
            operator(),
            limit=limit,
            cursor=cursor,
            status=status,
            workflow=workflow,
            since=start,
            until=end,
            created_by=created_by,
        )
        if as_json:
            emit(serialize.page([serialize.run(run) for run in items], following))
            return
        for run in items:
            waits = concurrency.waits_for(run)
            click.echo(
                f"{run.id}  {run.status:<10} {run.workflow}@{run.version}  "
                f"{run.created_at:%Y-%m-%d %H:%M:%S}  {run.created_by}"
                + (f"  not before {timestamp(run.not_before)}" if waits == "not_before" else "")
                + ("  waiting for a slot" if waits == concurrency.REASON else "")
            )


@runs_group.command("show")
@click.argument("run_id")
def runs_show(run_id: str) -> None:
    """Show a run and its steps as JSON."""
    from web import serialize

    with session() as current:
        emit(serialize.run(*run_query.read_run_with_steps(current, run_id, operator())))


@runs_group.command("cancel")
@click.argument("run_id")
def runs_cancel(run_id: str) -> None:
    """Cancel a live run."""
    with session() as current:
        _, work = cancels.cancel(current, settings_with_actions(), run_id, operator())
    _send(work)
    click.echo(f"cancelled {run_id}")


@runs_group.command("retry")
@click.argument("run_id")
def runs_retry(run_id: str) -> None:
    """Resume a failed run from its failed steps."""
    with session() as current:
        _, work = resume.retry_run(current, settings_with_actions(), run_id, operator())
    _send(work)
    click.echo(f"retrying {run_id}")
