"""SQLite as engine.db tunes it: writers queue on the write lock taken at BEGIN, readers are
never held up by a writer (WAL), and a writer that waited out the busy timeout fails with
SQLAlchemy's OperationalError, its transaction not half-written."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError, OperationalError

from engine import db


def _engine(path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS items (name TEXT)"))
    return engine


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = _engine(tmp_path / "writers.db")
    yield engine
    engine.dispose()


def _names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT name FROM items ORDER BY rowid")).scalars())


def test_a_second_writer_waits_for_the_first_and_both_commit(sqlite_engine: Engine) -> None:
    holder = sqlite_engine.connect()
    holder.begin()
    holder.execute(text("INSERT INTO items VALUES ('first')"))
    done = threading.Event()

    def second_writer() -> None:
        with sqlite_engine.begin() as connection:
            connection.execute(text("INSERT INTO items VALUES ('second')"))
        done.set()

    writer = threading.Thread(target=second_writer)
    writer.start()
    # BEGIN IMMEDIATE: the second writer queues at its start, not at its first write.
    assert not done.wait(0.3), "the second writer did not wait for the first"
    holder.commit()
    holder.close()
    writer.join(10)
    assert done.is_set()
    assert _names(sqlite_engine) == ["first", "second"]


def test_a_reader_is_not_held_up_by_a_writer(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO items VALUES ('committed')"))
    holder = sqlite_engine.connect()
    holder.begin()
    holder.execute(text("INSERT INTO items VALUES ('uncommitted')"))
    try:
        reads = db.make_session_factory(sqlite_engine, read_only=True)
        with reads() as session:
            seen = list(session.execute(text("SELECT name FROM items")).scalars())
        assert seen == ["committed"]
    finally:
        holder.rollback()
        holder.close()


def test_a_writer_gives_up_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    engine = _engine(tmp_path / "busy.db")
    holder = engine.connect()
    holder.begin()
    holder.execute(text("INSERT INTO items VALUES ('held')"))
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            with engine.begin() as connection:
                connection.execute(text("INSERT INTO items VALUES ('late')"))
    finally:
        holder.rollback()
        holder.close()
    assert _names(engine) == []
    # The connection that gave up is in the pool again and writes as usual.
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO items VALUES ('after')"))
    assert _names(engine) == ["after"]
    engine.dispose()


def test_a_commit_sqlite_refuses_is_rolled_back_and_holds_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred foreign key is checked at COMMIT; SQLite refuses it and keeps the
    transaction open, with its write lock, where SQLAlchemy takes it as ended."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 1000)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'refused.db'}", pool_size=1, max_overflow=0)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE parents (id TEXT PRIMARY KEY)"))
        connection.execute(
            text(
                "CREATE TABLE children (parent TEXT REFERENCES parents (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    other = db.make_engine(f"sqlite:///{tmp_path / 'refused.db'}")
    try:
        sessions = db.make_session_factory(engine)
        # As a view does it: commit, and the session closed at the request's end.
        with sessions() as session:
            session.execute(text("INSERT INTO children VALUES ('nobody')"))
            with pytest.raises(IntegrityError, match="FOREIGN KEY"):
                session.commit()
        # Another process's writer is not held up by a lock left behind...
        with other.begin() as connection:
            connection.execute(text("INSERT INTO parents VALUES ('p')"))
        # ...and the one pooled connection begins its next transaction as usual.
        with sessions.begin() as session:
            session.execute(text("INSERT INTO children VALUES ('p')"))
        with other.connect() as connection:
            rows = connection.execute(text("SELECT parent FROM children")).scalars().all()
        assert rows == ["p"]
    finally:
        other.dispose()
        engine.dispose()
