"""engine.db's read-only sessions, and the bare connections of its read-only engine, run
each statement on its own: no transaction is begun or left open (no BEGIN or ROLLBACK to
send). The sessions that write, on the same pooled connections, stay transactional."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, event, func, insert, select
from sqlalchemy.orm import Session

from engine import db
from engine.models import Base, Run
from tests.engine.test_insert_rows import run_row
from tests.support.transactions import in_transaction

runs = Run.__table__


@pytest.fixture
def engine(fresh_database: str) -> Iterator[Engine]:
    """An empty database of the backend with the platform's tables, on one pooled connection
    (so the read and the write below share it)."""
    engine = db.make_engine(fresh_database, pool_size=1, max_overflow=0)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def count_runs(db_or_session: Session | Connection) -> int:
    return int(db_or_session.execute(select(func.count()).select_from(runs)).scalar_one())


def test_a_read_only_session_leaves_no_transaction_open(engine: Engine) -> None:
    with db.make_session_factory(engine, read_only=True)() as session:
        assert count_runs(session) == 0
        assert not in_transaction(session)
        assert count_runs(session) == 0
        assert not in_transaction(session)


def test_a_connection_of_the_read_only_engine_leaves_no_transaction_open(engine: Engine) -> None:
    with db.read_only_engine(engine).connect() as connection:
        assert count_runs(connection) == 0
        assert not in_transaction(connection)
        assert count_runs(connection) == 0
        assert not in_transaction(connection)


def test_a_session_that_writes_after_a_read_only_one_is_still_one_transaction(
    engine: Engine,
) -> None:
    with db.make_session_factory(engine, read_only=True)() as session:
        count_runs(session)
    writes = db.make_session_factory(engine)
    with writes() as session:
        session.execute(insert(runs), [run_row("undone")])
        assert in_transaction(session)
        session.rollback()
    with writes() as session:
        assert count_runs(session) == 0


def test_the_api_read_engine_is_an_engine_of_its_own_that_pays_for_no_write(
    engine: Engine,
) -> None:
    """web.db's reads (engine.db.read_engine): a pool of their own. On PostgreSQL its
    connections are made in autocommit and stay so between checkouts (a view of the writers'
    pool switched each one at checkout and back at its return); on SQLite it has no `begin`
    listener, so SQLAlchemy dispatches no connection events around each read (the writers'
    BEGIN IMMEDIATE listener made it do so for every statement). Either way a read sees what
    writers committed, and leaves no transaction open."""
    reads = db.read_engine(engine)
    returned: list[bool] = []
    if engine.dialect.name == "postgresql":
        event.listen(
            reads, "checkin", lambda driver, _record: returned.append(bool(driver.autocommit))
        )
    try:
        assert reads.pool is not engine.pool
        with Session(engine) as session:
            session.execute(insert(runs), [run_row("committed")])
            session.commit()
        for _ in range(2):
            with reads.connect() as connection:
                assert count_runs(connection) == 1
                assert not in_transaction(connection)
        if engine.dialect.name == "postgresql":
            assert returned == [True, True]
        else:
            assert engine.dispatch.begin and not reads.dispatch.begin
    finally:
        reads.dispose()


def test_an_sqlite_database_in_memory_is_read_through_the_writers_engine() -> None:
    """Another engine on `sqlite://` would open a database of its own, empty."""
    memory = db.make_engine("sqlite://")
    try:
        reads = db.read_engine(memory)
        assert reads.pool is memory.pool
        assert reads.get_execution_options()["engine_read_only"]
    finally:
        memory.dispose()
