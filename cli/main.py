"""`engine` — token, runs, workflows, schedules, dlq and db commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from alembic import command as alembic_command

from cli.context import (
    EngineGroup,
    configure_logging,
    emit,
    require_database,
    session,
    settings,
    settings_with_actions,
)
from cli.db_ops import COMMANDS as DB_COMMANDS
from cli.dlq import dlq
from cli.runs import runs_group
from cli.schedules import schedules
from cli.token_ops import COMMANDS as TOKEN_COMMANDS
from cli.workflow_pauses import COMMANDS as PAUSE_COMMANDS
from engine import (
    auth,
    concurrency,
    migrations,
    pauses,
    spec_schema,
    spec_text,
    specs,
    tokens,
    workflows,
)
from engine.errors import EngineError


@click.group(cls=EngineGroup)
@click.option("--debug", is_flag=True, help="Log everything on stderr, with tracebacks.")
def main(debug: bool) -> None:
    """Operate the AI Business Engine (reads DATABASE_URL, REDIS_URL, JWT_SECRET)."""
    configure_logging(debug)


@main.group()
def token() -> None:
    """Access tokens."""


@token.command("mint")
@click.argument("sub")
@click.option(
    "--scopes",
    default="runs.read,runs.write,workflows.read",
    show_default=True,
    help="Comma-separated scopes, e.g. 'admin.*,runs.write' (OPERATIONS.md § 3 lists them).",
)
@click.option(
    "--ttl",
    default="1h",
    show_default=True,
    help="Lifetime: 900, 15m, 1h, 7d (at most TOKEN_MAX_TTL_S).",
)
def token_mint(sub: str, scopes: str, ttl: str) -> None:
    """Print a signed token for SUB (not one beginning 'cli:', the audit trail's name for
    the CLI's operators)."""
    current = settings()
    minted = auth.mint_token(
        current, sub, auth.parse_known_scopes(scopes), tokens.lifetime(current, ttl)
    )
    click.echo(minted.token)


@main.group("workflows")
def workflows_group() -> None:
    """Workflow specs."""


def _read_spec(path: str) -> object:
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="PATH") from exc
    return spec_text.parse_text(text)


@workflows_group.command("validate")
@click.argument("path")
def workflows_validate(path: str) -> None:
    """Check a spec file (YAML or JSON) and print its stages and its steps' conditions."""
    current = settings_with_actions()  # a plugin that cannot be imported is an error of its own
    try:
        compiled = specs.compile_spec(_read_spec(path), current)
    except EngineError as exc:
        for error in exc.errors or [{"field": "spec", "message": exc.detail}]:
            click.echo(f"{error['field']}: {error['message']}", err=True)
        raise SystemExit(1) from exc
    click.echo(f"{compiled.name}@{compiled.version} is valid; stages: {compiled.stages()}")
    for step_id, when in compiled.conditions().items():
        click.echo(f"{step_id} runs when: {when}")


@workflows_group.command("register")
@click.argument("path")
def workflows_register(path: str) -> None:
    """Register a spec file as a new workflow version."""
    with session() as current:
        workflow, created = workflows.register(current, _read_spec(path), settings_with_actions())
        label = f"{workflow.name}@{workflow.version}"
    click.echo(("registered " if created else "already registered ") + label)


@workflows_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON page (GET /workflows).")
def workflows_ls(as_json: bool) -> None:
    """List the latest version of each workflow."""
    from web import serialize

    with session() as current:
        latest = workflows.list_latest(current)
        paused = pauses.paused(current, [workflow.name for workflow in latest])
        if as_json:
            items = [serialize.workflow(item, paused.get(item.name)) for item in latest]
            emit(serialize.page(items, None))
            return
        for workflow in latest:
            state = "  paused" if workflow.name in paused else ""
            if workflow.spec.get(concurrency.FIELD) is not None:
                state += f"  at most {workflow.spec[concurrency.FIELD]} at once"
            steps = len(workflow.spec["steps"])
            click.echo(f"{workflow.name}@{workflow.version}  {steps} steps{state}")


@workflows_group.command("show")
@click.argument("name")
@click.option("--version", type=click.IntRange(1, spec_schema.MAX_VERSION), default=None)
def workflows_show(name: str, version: int | None) -> None:
    """Show a workflow version (the latest by default) as JSON, as GET /workflows/{name}
    does: its spec, versions, pause, and concurrency (limit, active and waiting runs)."""
    from web import serialize

    with session() as current:
        row = workflows.get(current, name, version)
        body = serialize.workflow(row, pauses.paused(current, [name]).get(name))
        body["versions"] = [item.version for item in workflows.list_versions(current, name)]
        body["concurrency"] = concurrency.usage(current, name, row.spec)
    emit(body)


@main.group()
def db() -> None:
    """Database schema and maintenance."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations (to head by default)."""
    migrations.upgrade(settings().database_url, revision)
    click.echo(f"database at {migrations.current(settings().database_url)}")


# `-1` is a relative revision, not an option: click passes unknown options on as arguments.
@db.command("downgrade", context_settings={"ignore_unknown_options": True})
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations to REVISION (e.g. -1 or base)."""
    migrations.downgrade(settings().database_url, revision)
    click.echo(f"database at {migrations.current(settings().database_url)}")


@db.command("current")
def db_current() -> None:
    """Print the database's migration revision and the code's head."""
    require_database(settings())
    click.echo(f"current: {migrations.current(settings().database_url)}")
    click.echo(f"head:    {migrations.head()}")


@db.command("history")
@click.option("--verbose", "-v", is_flag=True, help="Each revision's full description.")
def db_history(verbose: bool) -> None:
    """List the migrations, newest first (the code's, not the database's: see `db current`)."""
    config = migrations.alembic_config(settings().database_url)
    config.stdout = sys.stdout  # alembic's default is the stdout it saw when imported
    alembic_command.history(config, verbose=verbose)


main.add_command(dlq)
main.add_command(runs_group)
main.add_command(schedules)
for _command in TOKEN_COMMANDS:
    token.add_command(_command)
for _command in DB_COMMANDS:
    db.add_command(_command)
for _command in PAUSE_COMMANDS:
    workflows_group.add_command(_command)

if __name__ == "__main__":
    main()
