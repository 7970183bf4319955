"""`engine db backup|restore|check|analyze|vacuum|prune`: database maintenance for operators."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import click
from kombu.exceptions import KombuError
from redis import RedisError

from cli.context import operator, require_database, settings
from engine import backup as backups
from engine import maintenance, retention
from engine.config import Settings
from engine.db import make_engine, make_session_factory
from engine.errors import EngineError, InvalidInput
from engine.models import utcnow

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


def _require_workers_stopped(current: Settings) -> None:
    """A ClickException unless no worker answers a ping (or the broker cannot be asked)."""
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
        _require_workers_stopped(current)
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
    maintenance.analyze(settings())
    click.echo(f"analyzed {backups.describe(settings())}")


@click.command("vacuum")
@click.option("--force", is_flag=True, help="SQLite: vacuum even while workers answer a ping.")
def vacuum(force: bool) -> None:
    """Give back the space deleted rows left (after a large prune). SQLite rewrites its file
    holding the write lock, so stop the workers first; PostgreSQL vacuums and analyzes
    while the platform runs. Prints the size before and after."""
    current = settings()
    if current.is_sqlite and not force:
        _require_workers_stopped(current)
    done = maintenance.vacuum(current)
    click.echo(f"vacuumed {backups.describe(current)}: {_mib(done.before)} -> {_mib(done.after)}")


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _age(option: str, text: str) -> timedelta:
    """An option's age (30d, 12h...); a bad one is a usage error naming the option."""
    try:
        return retention.parse_age(text, option.lstrip("-").replace("-", "_"))
    except InvalidInput as exc:
        raise click.BadParameter(exc.errors[0]["message"], param_hint=option) from exc


@click.command("prune")
@click.option(
    "--older-than",
    required=True,
    help="Delete runs finished longer ago than this: 30d, 12h, 2w (a bare number is days).",
)
@click.option("--audit-older-than", default=None, help="Also delete audit events this old.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def prune(older_than: str, audit_older_than: str | None, dry_run: bool) -> None:
    """Delete finished runs (succeeded, failed, cancelled) older than --older-than, with
    their steps and resolved dead letters, and the resolved dead letters with no run
    resolved before then, in batches of RETENTION_BATCH_SIZE; a run with an open dead
    letter or a live step stays, and so does every open letter. Safe while the platform
    runs. Back up first."""
    age = _age("--older-than", older_than)
    audit_age = _age("--audit-older-than", audit_older_than) if audit_older_than else None
    current = settings()
    require_database(current)
    now = utcnow()
    cutoff = now - age
    audit_cutoff = now - audit_age if audit_age is not None else None
    db_engine = make_engine(current)
    try:
        sessions = make_session_factory(db_engine)
        if dry_run:  # reads only: SQLite's write lock is not taken
            with make_session_factory(db_engine, read_only=True)() as session:
                counted = retention.count_prunable(session, cutoff)
                if audit_cutoff is not None:
                    counted = counted + retention.Pruned(
                        audit_events=retention.count_audit(session, audit_cutoff)
                    )
        else:
            counted = retention.prune(
                sessions,
                cutoff,
                current.retention_batch_size,
                audit_cutoff=audit_cutoff,
                actor=operator().sub,
            )
    finally:
        db_engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {counted.runs} run(s) finished before {cutoff:%Y-%m-%d %H:%M:%S}Z, with "
        f"{counted.steps} step(s) and {counted.dead_letters} resolved dead letter(s)"
    )
    if audit_cutoff is not None:
        click.echo(
            f"{verb} {counted.audit_events} audit event(s) before {audit_cutoff:%Y-%m-%d %H:%M:%S}Z"
        )


COMMANDS = (backup, restore, check, analyze, vacuum, prune)
