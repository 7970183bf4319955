"""Database maintenance: backup, restore and check, on SQLite and PostgreSQL (analyze and
vacuum: engine.maintenance).

SQLite uses its online backup API both ways, so a backup is consistent while the platform
writes, and a restore replaces the live file under SQLite's own locks. PostgreSQL uses
pg_dump's custom format and pg_restore, run by engine.pg_client.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from engine import migrations, pg_client, sqlite_file
from engine.config import Settings
from engine.db import make_engine, normalise_url
from engine.errors import DatabaseOperationError
from engine.models import Base, RevokedToken
from engine.sqlite_file import CheckResult, sqlite_path

# Every database of this platform has alembic's table; a backup without it is not one.
VERSION_TABLE = "alembic_version"


_revoked = RevokedToken.__table__


BACKUP_MODE = 0o600


def default_backup_path(settings: Settings, label: str = "engine") -> Path:
    """var/backups/<label>-<UTC time>.db|.dump, numbered when that second is taken."""
    suffix = "db" if settings.is_sqlite else "dump"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    directory = settings.var_dir / "backups"
    path = directory / f"{label}-{stamp}.{suffix}"
    number = 1
    while path.exists():
        path = directory / f"{label}-{stamp}-{number}.{suffix}"
        number += 1
    return path


def backup(settings: Settings, path: Path | None = None, *, replace: bool = False) -> Path:
    """Write a consistent copy of the database to `path` (default under var/backups); an
    existing file is replaced only when asked, and the live database never."""
    target = Path(path) if path else default_backup_path(settings)
    if sqlite_file.is_live(settings, target):
        raise DatabaseOperationError(f"{target} is the live database: write the backup elsewhere")
    if target.exists() and not replace:
        raise DatabaseOperationError(
            f"{target} already exists: choose another path, or replace it on purpose"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    # Readable by its owner only, from its first byte: a backup holds every run's params and
    # inputs, and the tokens' revocations.
    partial.touch(mode=BACKUP_MODE)
    try:
        if settings.is_sqlite:
            sqlite_file.copy(sqlite_path(settings), partial)
        else:
            pg_client.run_tool(settings, "pg_dump", ["--format=custom", "--file", str(partial)])
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def verify_backup(settings: Settings, path: Path) -> None:
    """Refuse a file that is not a backup this database can be restored from; reads only."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseOperationError(f"no backup file at {path}")
    if sqlite_file.is_live(settings, path):
        raise DatabaseOperationError(f"{path} is the live database, not a backup")
    if settings.is_sqlite:
        if not sqlite_file.verify(path, VERSION_TABLE):
            raise _not_ours(path)
    else:
        # --list reads the archive's table of contents: a wrong file fails here, untouched.
        try:
            listing = pg_client.run_tool(
                settings, "pg_restore", ["--list", str(path)], connect=False
            )
        except DatabaseOperationError as exc:
            raise DatabaseOperationError(f"{path} was refused as a backup: {exc.detail}") from exc
        if f" {VERSION_TABLE} " not in listing:
            raise _not_ours(path)


def _not_ours(path: Path) -> DatabaseOperationError:
    return DatabaseOperationError(
        f"{path} is a database, but not one of this platform's (it has no {VERSION_TABLE} "
        "table); nothing was restored"
    )


def restore(settings: Settings, path: Path, *, verified: bool = False) -> int:
    """Replace the database's contents with the backup at `path` (verified first, unless
    the caller did so already). Tokens revoked since the backup was taken stay revoked: a
    restore must not let a leaked token back in. Returns how many such revocations were
    carried over."""
    path = Path(path)
    if not verified:
        verify_backup(settings, path)
    revoked = _revocations(settings)
    _replace(settings, path)
    return _revoke_again(settings, revoked)


def _replace(settings: Settings, path: Path) -> None:
    if settings.is_sqlite:
        sqlite_file.restore(path, sqlite_path(settings, must_exist=False))
    else:
        pg_client.run_tool(
            settings,
            "pg_restore",
            ["--clean", "--if-exists", "--no-owner", "--single-transaction", str(path)],
        )


def _revocations(settings: Settings) -> list[dict[str, Any]]:
    """The live database's revocations, of expired tokens too: a schedule the backup holds
    may act with a token revoked since, and expired since, which must still stop it
    (engine.schedules.tokens). None when the database cannot be read (damaged or missing,
    which is why one restores)."""
    db_engine = make_engine(settings)
    try:
        with db_engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(select(_revoked))]
    except SQLAlchemyError:
        return []
    finally:
        db_engine.dispose()


def _revoke_again(settings: Settings, revoked: list[dict[str, Any]]) -> int:
    """Add to the restored database the revocations it lacks; how many it lacked."""
    if not revoked:
        return 0
    db_engine = make_engine(settings)
    try:
        with db_engine.begin() as connection:
            known = set(connection.scalars(select(_revoked.c.jti)))
            missing = [row for row in revoked if row["jti"] not in known]
            if missing:
                connection.execute(insert(_revoked), missing)
            return len(missing)
    except SQLAlchemyError as exc:
        raise DatabaseOperationError(
            f"restored, but the {len(revoked)} revocation(s) of the database it replaced could "
            f"not be carried over ({pg_client.first_line(exc)}): revoke those tokens again"
        ) from exc
    finally:
        db_engine.dispose()


def check(settings: Settings) -> list[CheckResult]:
    """Integrity (SQLite), connectivity, tables and migration revision; every check runs."""
    results: list[CheckResult] = []
    if settings.is_sqlite:
        path = sqlite_path(settings, must_exist=False)
        if not path.is_file():
            return [CheckResult("database", False, f"no database file at {path}")]
        results += sqlite_file.checks(path)
    db_engine = make_engine(settings)
    try:
        with db_engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            tables = set(inspect(connection).get_table_names())
    except SQLAlchemyError as exc:
        return [*results, CheckResult("connection", False, pg_client.first_line(exc))]
    finally:
        db_engine.dispose()
    results.append(CheckResult("connection", True, "SELECT 1 answered"))
    missing = sorted(set(Base.metadata.tables) - tables)
    results.append(
        CheckResult(
            "tables",
            not missing,
            f"missing: {', '.join(missing)}" if missing else f"all {len(Base.metadata.tables)}",
        )
    )
    current, head = migrations.current(settings.database_url), migrations.head()
    results.append(
        CheckResult(
            "revision",
            current == head,
            f"at {current}"
            if current == head
            else f"at {current}, code expects {head}: run `engine db upgrade`",
        )
    )
    return results


def describe(settings: Settings) -> str:
    """The database's URL without its password, for messages."""
    return make_url(normalise_url(settings.database_url)).render_as_string(hide_password=True)
