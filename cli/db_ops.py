"""`engine db backup|restore|check|analyze`: database maintenance for operators."""

from __future__ import annotations

import re
from pathlib import Path

import click
from kombu.exceptions import KombuError
from redis import RedisError

from cli.context import settings
from engine import backup as backups
from engine.config import Settings
from engine.errors import EngineError

PING_TIMEOUT_S = 1.0


def online_workers(current: Settings) -> list[str]:
    """Celery workers that answer a ping on this deployment's broker (beat is not one)."""
    from workers.factory import make_celery
    from workers.observer import is_worker

    app = make_celery(current)
    try:
        replies = app.control.inspect(timeout=PING_TIMEOUT_S).ping() or {}
    finally:
        app.close()
    return sorted(name for name in replies if is_worker(name))


@click.command("backup")
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace PATH if it exists (never the live database).")
def backup(path: Path | None, force: bool) -> None:
    """Copy the database to PATH (default var/backups/engine-<UTC time>.db|.dump); safe
    while the platform runs. Refuses an existing PATH unless --force. Prints the path."""
    click.echo(str(backups.backup(settings(), path, replace=force)))


@click.command("restore")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Restore even while workers answer a ping.")
@click.option(
    "--no-safety-copy",
    is_flag=True,
    help="Do not back up the current database first.",
)
def restore(path: Path, force: bool, no_safety_copy: bool) -> None:
    """Replace the database's contents with the backup at PATH. Stop the workers first."""
    current = settings()
    # Before anything is written (the safety copy among it): is PATH a backup at all?
    backups.verify_backup(current, path)
    if not force:
        try:
            workers = online_workers(current)
        except (OSError, KombuError, RedisError) as exc:
            raise click.ClickException(
                f"could not ask the workers whether they are running: the broker at "
                f"{re.sub(r'//[^@/]*@', '//***@', current.redis_url)} did not answer ({exc}). "
                "Make sure they are stopped, then pass --force"
            ) from exc
        if workers:
            raise click.ClickException(
                f"workers are online: {', '.join(workers)}. Stop them first (Ctrl-C "
                "`make run`, or `docker compose stop worker beat`), or pass --force"
            )
    if not no_safety_copy:
        try:
            safety = backups.backup(current, backups.default_backup_path(current, "pre-restore"))
            click.echo(f"current database saved to {safety}")
        except EngineError as exc:
            click.echo(f"warning: could not save the current database: {exc.detail}", err=True)
    kept = backups.restore(current, path, verified=True)
    click.echo(f"restored {path} into {backups.describe(current)}")
    if kept:
        click.echo(f"{kept} token revocation(s) made since that backup kept")
    click.echo("next: `engine db check`, then start the workers again")


@click.command("check")
def check() -> None:
    """Integrity, connection, tables and migration revision; exit 1 when one fails."""
    results = backups.check(settings())
    for result in results:
        click.echo(f"{'ok  ' if result.ok else 'FAIL'}  {result.name:<13} {result.detail}")
    failed = [result.name for result in results if not result.ok]
    if failed:
        raise click.ClickException(f"database check failed: {', '.join(failed)}")


@click.command("analyze")
def analyze() -> None:
    """Refresh the query planner's statistics (ANALYZE; SQLite also PRAGMA optimize)."""
    backups.analyze(settings())
    click.echo(f"analyzed {backups.describe(settings())}")


COMMANDS = (backup, restore, check, analyze)
