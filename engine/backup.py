"""Database maintenance: backup, restore, check and analyze, on SQLite and PostgreSQL.

SQLite uses its online backup API both ways, so a backup is consistent while the platform
writes, and a restore replaces the live file under SQLite's own locks. PostgreSQL uses
pg_dump's custom format and pg_restore, run by engine.pg_client.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from engine import migrations, pg_client
from engine.config import Settings
from engine.db import make_engine, normalise_url
from engine.errors import DatabaseOperationError
from engine.models import Base, RevokedToken, utcnow

SQLITE_HEADER = b"SQLite format 3\x00"
# Every database of this platform has alembic's table; a backup without it is not one.
VERSION_TABLE = "alembic_version"
SQLITE_TIMEOUT_S = 30.0


_revoked = RevokedToken.__table__


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


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
    if _is_live_database(settings, target):
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
            _sqlite_backup(sqlite_path(settings), partial)
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
    if _is_live_database(settings, path):
        raise DatabaseOperationError(f"{path} is the live database, not a backup")
    if settings.is_sqlite:
        _sqlite_verify(path)
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
        _sqlite_restore(path, sqlite_path(settings, must_exist=False))
    else:
        pg_client.run_tool(
            settings,
            "pg_restore",
            ["--clean", "--if-exists", "--no-owner", "--single-transaction", str(path)],
        )


def _revocations(settings: Settings) -> list[dict[str, Any]]:
    """The live database's revocations of tokens not yet expired; none when it cannot be
    read (a database damaged or missing, which is why one restores)."""
    db_engine = make_engine(settings)
    try:
        with db_engine.connect() as connection:
            return [
                dict(row._mapping)
                for row in connection.execute(
                    select(_revoked).where(
                        (_revoked.c.expires_at.is_(None)) | (_revoked.c.expires_at > utcnow())
                    )
                )
            ]
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
        results += _sqlite_checks(path)
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


def analyze(settings: Settings) -> None:
    """Refresh the query planner's statistics."""
    if settings.is_sqlite:
        connection = _sqlite_connect(sqlite_path(settings))
        try:
            connection.execute("ANALYZE")
            connection.execute("PRAGMA optimize")
        finally:
            connection.close()
        return
    db_engine = make_engine(settings, isolation_level="AUTOCOMMIT")
    try:
        with db_engine.connect() as connection:
            connection.execute(text("ANALYZE"))
    finally:
        db_engine.dispose()


def describe(settings: Settings) -> str:
    """The database's URL without its password, for messages."""
    return make_url(normalise_url(settings.database_url)).render_as_string(hide_password=True)


# SQLite -----------------------------------------------------------------------------------


def sqlite_path(settings: Settings, *, must_exist: bool = True) -> Path:
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise DatabaseOperationError(f"not a SQLite file: {settings.database_url}")
    path = Path(database)
    if must_exist and not path.is_file():
        raise DatabaseOperationError(f"no database file at {path}")
    return path


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), timeout=SQLITE_TIMEOUT_S, isolation_level=None)


def _sqlite_backup(source_path: Path, target: Path) -> None:
    source, copy = _sqlite_connect(source_path), _sqlite_connect(target)
    try:
        source.backup(copy)
        # One self-contained file: no -wal beside it to forget when copying it elsewhere.
        copy.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise DatabaseOperationError(f"SQLite backup failed: {exc}") from exc
    finally:
        copy.close()
        source.close()


def _is_live_database(settings: Settings, path: Path) -> bool:
    if not settings.is_sqlite:
        return False
    try:
        live = sqlite_path(settings, must_exist=False)
    except DatabaseOperationError:
        return False
    candidates = (live, *(live.with_name(live.name + end) for end in ("-wal", "-shm")))
    return any(Path(path).resolve() == candidate.resolve() for candidate in candidates)


def _sqlite_verify(path: Path) -> None:
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise DatabaseOperationError(f"{path} is not a SQLite database")
    # Read-only: checking a file must not create a journal beside it or change it.
    try:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=SQLITE_TIMEOUT_S
        )
        try:
            verdict = [row[0] for row in connection.execute("PRAGMA quick_check")]
            ours = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VERSION_TABLE,)
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise DatabaseOperationError(f"{path} cannot be read as a backup: {exc}") from exc
    if verdict != ["ok"]:
        raise DatabaseOperationError(
            f"{path} is damaged ({'; '.join(verdict[:3])}); nothing was restored"
        )
    if ours is None:
        raise _not_ours(path)


def _sqlite_restore(backup_path: Path, live: Path) -> None:
    source = _sqlite_connect(backup_path)
    try:
        live.parent.mkdir(parents=True, exist_ok=True)
        target = _sqlite_connect(live)
        try:
            source.backup(target)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise DatabaseOperationError(f"SQLite restore failed: {exc}") from exc
    finally:
        source.close()


def _sqlite_checks(path: Path) -> list[CheckResult]:
    connection = _sqlite_connect(path)
    try:
        verdict = [row[0] for row in connection.execute("PRAGMA integrity_check")]
        broken = connection.execute("PRAGMA foreign_key_check").fetchall()
    except sqlite3.Error as exc:
        return [CheckResult("integrity", False, f"{path}: {exc}")]
    finally:
        connection.close()
    integrity = CheckResult(
        "integrity", verdict == ["ok"], "ok" if verdict == ["ok"] else "; ".join(verdict[:5])
    )
    if broken:
        examples = ", ".join(
            f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in broken
        )
        keys = CheckResult("foreign_keys", False, f"{len(broken)} broken: {examples[:300]}")
    else:
        keys = CheckResult("foreign_keys", True, "ok")
    return [integrity, keys]
