"""engine.db's read-only sessions, and the bare connections of its read-only engine, run
each statement on its own: no transaction is begun or left open (no BEGIN or ROLLBACK to
send). The sessions that write, on the same pooled connections, stay transactional."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, func, insert, select
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
