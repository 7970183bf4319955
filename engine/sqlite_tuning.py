"""SQLite as the platform's engines use it: WAL, synchronous=NORMAL, foreign keys, a busy
timeout; writers that take the write lock at BEGIN; and a COMMIT that SQLite refused
rolled back, so the pool never hands out a connection still in its transaction."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext

log = logging.getLogger(__name__)


def tune(db_engine: Engine, *, writes: bool, busy_ms: int) -> None:
    """Set up each connection of `db_engine`; `writes`: its transactions BEGIN IMMEDIATE."""

    @event.listens_for(db_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below (writers' engines only) decide how a
        # transaction starts; without it, each statement is its own transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.close()

    if not writes:
        return

    @event.listens_for(db_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front, so two writers never deadlock on the
        # upgrade from a read lock. Read-only sessions begin nothing: each statement is its
        # own transaction (the driver's isolation_level None), as on PostgreSQL.
        if not connection.get_execution_options().get("engine_read_only"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    @event.listens_for(db_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        end_refused_commit(context)


def end_refused_commit(context: ExceptionContext) -> None:
    """Roll back the transaction of a COMMIT that SQLite refused. A deferred constraint
    broken, or SQLITE_BUSY, leaves the transaction open, holding the write lock, where
    SQLAlchemy takes a failed commit as the transaction's end (as it is on PostgreSQL) and
    gives the connection back to its pool without a rollback: every writer after it would
    wait out its busy timeout, and the next user of that connection would find its BEGIN
    refused."""
    if context.statement is not None or context.connection is None:
        return  # a statement's error: its transaction is the caller's to roll back
    driver: Any = context.connection.connection.driver_connection
    if driver is None or not driver.in_transaction:
        return
    try:
        driver.rollback()
    except sqlite3.Error as exc:
        log.warning("rolling back a refused commit failed (%s); the connection is dropped", exc)
        context.is_disconnect = True
