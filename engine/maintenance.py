"""Database upkeep an operator runs by hand: `analyze` refreshes the query planner's
statistics, `vacuum` gives back the space deleted rows left (after a large prune).

SQLite reuses a deleted row's pages for new rows but never shrinks its file by itself:
VACUUM rewrites it, holding the write lock while it does (the platform's writers wait for
it, up to SQLITE_BUSY_TIMEOUT_S), and a WAL checkpoint then truncates the log it wrote.
PostgreSQL's autovacuum already makes the space reusable; a VACUUM (ANALYZE) here does it
at once, safely while the platform runs. Its files shrink only with VACUUM FULL, which
locks each table for its whole rewrite: not done here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from engine import sqlite_file
from engine.config import Settings
from engine.db import make_engine
from engine.sqlite_file import sqlite_path


@dataclass(frozen=True)
class Vacuumed:
    """The database's size in bytes before and after (SQLite: its file and its WAL)."""

    before: int
    after: int


def analyze(settings: Settings) -> None:
    """Refresh the query planner's statistics."""
    if settings.is_sqlite:
        connection = sqlite_file.connect(sqlite_path(settings))
        try:
            connection.execute("ANALYZE")
            connection.execute("PRAGMA optimize")
        finally:
            connection.close()
        return
    db_engine = make_engine(settings, isolation_level="AUTOCOMMIT")
    try:
        with db_engine.connect() as analyzed:
            analyzed.execute(text("ANALYZE"))
    finally:
        db_engine.dispose()


def vacuum(settings: Settings) -> Vacuumed:
    """Give back the space of deleted rows: SQLite's file rewritten and its WAL truncated;
    PostgreSQL's tables vacuumed and analyzed."""
    if settings.is_sqlite:
        path = sqlite_path(settings)
        before = _sqlite_bytes(path)
        connection = sqlite_file.connect(path)
        try:
            connection.execute("VACUUM")
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()
        return Vacuumed(before, _sqlite_bytes(path))
    db_engine = make_engine(settings, isolation_level="AUTOCOMMIT")
    size = text("SELECT pg_database_size(current_database())")
    try:
        with db_engine.connect() as vacuumed:
            before = int(vacuumed.execute(size).scalar_one())
            vacuumed.execute(text("VACUUM (ANALYZE)"))
            return Vacuumed(before, int(vacuumed.execute(size).scalar_one()))
    finally:
        db_engine.dispose()


def _sqlite_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
