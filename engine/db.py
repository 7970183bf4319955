"""Database engines and sessions: SQLite tuned for concurrent writers, PostgreSQL as is."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Result,
    Table,
    create_engine,
    event,
    insert,
    text,
)
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from engine import sqlite_tuning
from engine.config import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
# For this transaction only: the value the session would have without any SET.
_SERVER_SYNCHRONOUS_COMMIT = text("SET LOCAL synchronous_commit TO DEFAULT")
READ_ONLY = {"engine_read_only": True}
_AUTOCOMMIT = "AUTOCOMMIT"
# Below this, a COPY costs more than the INSERT it replaces (its extra round trip, and the
# column types looked up on each call): the one step of most plans takes the INSERT.
COPY_MIN_ROWS = 10


def normalise_url(url: str) -> str:
    """Use the psycopg 3 driver for every PostgreSQL URL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(
    settings_or_url: Settings | str,
    *,
    synchronous_commit: str | None = None,
    writes: bool = True,
    **options: Any,
) -> Engine:
    """Create an Engine; SQLite gets WAL, synchronous=NORMAL and, unless `writes` is False
    (an engine for reads only), BEGIN IMMEDIATE writes. `synchronous_commit` (PostgreSQL)
    sets that parameter on each of the engine's sessions; None keeps the server's."""
    url = settings_or_url if isinstance(settings_or_url, str) else settings_or_url.database_url
    url = normalise_url(url)
    if url.startswith("sqlite"):
        busy_ms = (
            SQLITE_BUSY_TIMEOUT_MS
            if isinstance(settings_or_url, str)
            else round(settings_or_url.sqlite_busy_timeout_s * 1000)
        )
        db_engine = create_engine(url, connect_args={"timeout": busy_ms / 1000}, **options)
        sqlite_tuning.tune(db_engine, writes=writes, busy_ms=busy_ms)
        return db_engine
    options.setdefault("pool_size", 5)
    options.setdefault("max_overflow", 10)
    db_engine = create_engine(url, **options)
    if not options.get("pool_pre_ping"):
        _drop_closed_connections(db_engine)
    if synchronous_commit is not None:
        _set_synchronous_commit(db_engine, synchronous_commit)
    return db_engine


def _set_synchronous_commit(db_engine: Engine, value: str) -> None:
    """A session-level setting on each new connection (not a startup option, which
    connection poolers such as PgBouncer refuse); `durable` can still ask the server's own
    value back for one transaction. The server checks the value (Settings did already)."""

    @event.listens_for(db_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("SELECT set_config('synchronous_commit', %s, false)", (value,))
        dbapi_connection.commit()


def durable(session: Session) -> None:
    """Make the caller's transaction commit with the server's own synchronous_commit (on,
    unless the operator configured otherwise), whatever its engine set: for writes nothing
    else would find again if a database crash undid them, such as a dead letter."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_SERVER_SYNCHRONOUS_COMMIT)


def changed(result: Result[Any]) -> int:
    """How many rows the UPDATE, DELETE or INSERT behind `result` wrote (its rowcount):
    Session.execute is typed as returning any Result, and these return a cursor's."""
    return cast(CursorResult[Any], result).rowcount


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows that all have the same keys, in the session's transaction. PostgreSQL takes
    COPY_MIN_ROWS or more as one COPY: 10,000 steps in a third of the time of as many INSERTs
    (which psycopg pipelines). Each value goes through its column's type first, as in an
    INSERT."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name != "postgresql" or len(rows) < COPY_MIN_ROWS:
        session.execute(insert(table), rows)
        return
    columns = [
        (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in rows[0]
    ]
    quote = dialect.identifier_preparer.quote
    statement = (
        f"COPY {dialect.identifier_preparer.format_table(table)} "
        f"({', '.join(quote(name) for name, _ in columns)}) FROM STDIN"
    )
    dbapi_error = dialect.loaded_dbapi.Error
    driver_connection: Any = connection.connection.driver_connection
    try:
        with driver_connection.cursor() as cursor:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(
                        [
                            row[name] if process is None else process(row[name])
                            for name, process in columns
                        ]
                    )
    except dbapi_error as exc:
        # As SQLAlchemy does for a statement: a lost connection is invalidated (the session's
        # rollback then has nothing to send), and the error is raised as its OperationalError,
        # IntegrityError..., so the callers' handling of a database that went away applies.
        lost = dialect.is_disconnect(exc, driver_connection, None)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement, None, exc, dbapi_error, connection_invalidated=lost, dialect=dialect
        ) from exc


def _drop_closed_connections(db_engine: Engine) -> None:
    """Hand out no connection the server has closed (a restart, a failover, a terminated
    backend) without a round trip per checkout, which is what pool_pre_ping costs: an idle
    connection receives nothing unless the server is closing it, so a socket with data (or
    end of file) waiting is discarded and the pool connects again. A connection lost without
    a word from the server fails its next statement instead; SQLAlchemy then renews the pool."""

    @event.listens_for(db_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if getattr(dbapi_connection, "closed", False) or getattr(dbapi_connection, "broken", False):
            raise DisconnectionError("the connection is closed")
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        if poller.poll(0):
            raise DisconnectionError("the server closed the connection")


def make_session_factory(db_engine: Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """A session factory. Read-only sessions run each statement in autocommit: no BEGIN or
    ROLLBACK to send, and no write lock on SQLite. Each statement sees the database as of
    its own start, as every statement does under PostgreSQL's READ COMMITTED anyway; a
    reader that needs several statements to agree must ask for one transaction."""
    bind = read_only_engine(db_engine) if read_only else db_engine
    return sessionmaker(bind=bind, expire_on_commit=False)


def read_only_engine(db_engine: Engine) -> Engine:
    """`db_engine` for reads: each statement in autocommit (see make_session_factory). Its
    connections serve a read of Core statements without a session around them."""
    options: dict[str, Any] = dict(READ_ONLY)
    if db_engine.dialect.name == "postgresql":
        options["isolation_level"] = _AUTOCOMMIT
    return db_engine.execution_options(**options)


def read_engine(db_engine: Engine) -> Engine:
    """An engine for the reads of a process that reads a lot (the API's GETs): each
    statement in autocommit, as read_only_engine, but an engine of its own, so a read pays
    for nothing the writers need. On PostgreSQL its connections are made in autocommit and
    stay so; a view of `db_engine` switches a pooled connection's isolation level at each
    checkout and back at its return, which cost about 0.1 ms of CPU per read, a tenth of a
    GET. On SQLite it has no `begin` listener (the writers' BEGIN IMMEDIATE): with one,
    SQLAlchemy dispatches its connection events around every statement, about 30 µs of a
    read. The price is a second pool: up to as many more connections as the process reads
    at once. A database in memory, which another engine would not see, keeps the view."""
    url = db_engine.url
    options: dict[str, Any]
    if db_engine.dialect.name == "postgresql":
        options = {"isolation_level": _AUTOCOMMIT}
    elif url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        options = {"writes": False}
    else:
        return read_only_engine(db_engine)
    own = make_engine(url.render_as_string(hide_password=False), **options)
    return own.execution_options(**READ_ONLY)


def statement_by_statement(session: Session) -> None:
    """On PostgreSQL, let a session that has not begun run each statement as its own
    transaction (autocommit): for a use case that writes with one statement, it saves the
    BEGIN and COMMIT round trips, and its write is committed when the statement returns. A
    session already in a transaction keeps it. SQLite's writers keep BEGIN IMMEDIATE: a
    write outside it can fail at once when another writer committed since it began reading.
    """
    if session.in_transaction() or session.get_bind().dialect.name != "postgresql":
        return
    session.connection(execution_options={"isolation_level": _AUTOCOMMIT})


def one_transaction_from_here(session: Session) -> None:
    """After statement_by_statement, when what follows writes more than one statement: the
    statements so far are already committed (each was a transaction of its own), and those
    that follow run in one transaction again, on a connection checked out anew, which the
    caller commits. A session whose transaction began as usual keeps it."""
    if not session.in_transaction():
        return
    if session.connection().get_execution_options().get("isolation_level") == _AUTOCOMMIT:
        session.commit()


@contextmanager
def lock_wait(db_engine: Engine, seconds: float) -> Iterator[Engine | Connection]:
    """What to bind a session to so that, on SQLite, its transaction waits at most `seconds`
    (instead of the busy timeout) for another writer's lock: a connection of its own, given
    back to the pool with its busy timeout as it was. With None, or on PostgreSQL (no such
    lock to wait for), the engine itself."""
    if seconds is None or db_engine.dialect.name != "sqlite":
        yield db_engine
        return
    connection = db_engine.connect()
    driver: Any = connection.connection.driver_connection  # no BEGIN: the session begins later
    previous: int | None = None
    try:
        (previous,) = driver.execute("PRAGMA busy_timeout").fetchone()
        driver.execute(f"PRAGMA busy_timeout={max(1, round(seconds * 1000))}")
        yield connection
    finally:
        try:
            if connection.in_transaction():
                connection.rollback()
            if previous is None:
                raise RuntimeError("busy timeout unknown")
            driver.execute(f"PRAGMA busy_timeout={int(previous)}")
        except Exception:
            connection.invalidate()  # never back in the pool with the shorter wait
        connection.close()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on error."""
    with factory.begin() as session:
        yield session
