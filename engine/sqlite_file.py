"""A SQLite database file, for engine.backup: where it is, and its online backup API used
both ways (a copy is consistent while the platform writes; a restore replaces the live file
under SQLite's own locks), its read-only verification and its checks."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from engine.config import Settings
from engine.errors import DatabaseOperationError

HEADER = b"SQLite format 3\x00"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class CheckResult:
    """One check of `engine db check`, on either backend."""

    name: str
    ok: bool
    detail: str


def sqlite_path(settings: Settings, *, must_exist: bool = True) -> Path:
    database = make_url(settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise DatabaseOperationError(f"not a SQLite file: {settings.database_url}")
    path = Path(database)
    if must_exist and not path.is_file():
        raise DatabaseOperationError(f"no database file at {path}")
    return path


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path), timeout=TIMEOUT_S, isolation_level=None)


def copy(source_path: Path, target: Path) -> None:
    """A consistent copy of the database at `source_path`, written while it is in use."""
    source, written = connect(source_path), connect(target)
    try:
        source.backup(written)
        # One self-contained file: no -wal beside it to forget when copying it elsewhere.
        written.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.Error as exc:
        raise DatabaseOperationError(f"SQLite backup failed: {exc}") from exc
    finally:
        written.close()
        source.close()


def is_live(settings: Settings, path: Path) -> bool:
    if not settings.is_sqlite:
        return False
    try:
        live = sqlite_path(settings, must_exist=False)
    except DatabaseOperationError:
        return False
    candidates = (live, *(live.with_name(live.name + end) for end in ("-wal", "-shm")))
    return any(Path(path).resolve() == candidate.resolve() for candidate in candidates)


def verify(path: Path, version_table: str) -> bool:
    """Refuse a damaged or foreign file; whether it holds `version_table`. Reads only."""
    with open(path, "rb") as handle:
        if handle.read(len(HEADER)) != HEADER:
            raise DatabaseOperationError(f"{path} is not a SQLite database")
    # Read-only: checking a file must not create a journal beside it or change it.
    try:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=TIMEOUT_S
        )
        try:
            verdict = [row[0] for row in connection.execute("PRAGMA quick_check")]
            ours = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (version_table,)
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise DatabaseOperationError(f"{path} cannot be read as a backup: {exc}") from exc
    if verdict != ["ok"]:
        raise DatabaseOperationError(
            f"{path} is damaged ({'; '.join(verdict[:3])}); nothing was restored"
        )
    return ours is not None


def restore(backup_path: Path, live: Path) -> None:
    source = connect(backup_path)
    try:
        live.parent.mkdir(parents=True, exist_ok=True)
        target = connect(live)
        try:
            source.backup(target)
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise DatabaseOperationError(f"SQLite restore failed: {exc}") from exc
    finally:
        source.close()


def checks(path: Path) -> list[CheckResult]:
    connection = connect(path)
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
