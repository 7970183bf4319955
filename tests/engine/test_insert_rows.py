"""engine.db.insert_rows, how a plan's steps are written (one COPY on PostgreSQL): the rows
read back exactly as the same rows inserted by an INSERT do, on SQLite and PostgreSQL; and
they are part of the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from engine import db
from engine.models import Base, Run, Step
from tests.support.services import end_every_session

steps = Step.__table__
NOW = datetime(2026, 12, 6, 7, 30, 15, 123456, tzinfo=UTC)


def run_row(run_id: str) -> dict[str, Any]:
    return {
        "id": run_id,
        "workflow": "w",
        "version": 1,
        "params": {},
        "status": "running",
        "priority": 0,
        "created_by": "alice",
        "request_hash": "h",
        "created_at": NOW,
        "leaves_left": 1,
        "plan_deliveries": 0,
    }


def step_rows(run_id: str) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "step_id": f"s{index}",
            "position": index,
            "action": "noop",
            "queue": "steps",
            "depends_on": [] if index == 0 else ["s0", 'quote"d\ttab'],
            "pending_deps": 0 if index == 0 else 2,
            "status": "queued" if index == 0 else "pending",
            "attempts": 0,
            "max_attempts": 3,
            "timeout_s": 2.5,
            # Another zone: stored as the same instant in UTC.
            "dispatched_at": NOW.astimezone(timezone(timedelta(hours=5))) if index == 0 else None,
            "task_id": None,
            "worker": "w\\1 ünï",
            "lease_expires_at": NOW + timedelta(seconds=index),
            "started_at": None,
        }
        # Enough rows for PostgreSQL's COPY.
        for index in range(db.COPY_MIN_ROWS)
    ]


def stored(session: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's steps, every column but the run id."""
    query = select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position)
    return [
        {key: value for key, value in row.items() if key != "run_id"}
        for row in session.execute(query).mappings()
    ]


@pytest.fixture
def sessions(fresh_database: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an empty database of the backend with the platform's tables."""
    engine = db.make_engine(fresh_database)
    Base.metadata.create_all(engine)
    yield db.make_session_factory(engine)
    engine.dispose()


def add_runs(sessions: sessionmaker[Session], *run_ids: str) -> None:
    with sessions.begin() as session:
        session.execute(insert(Run.__table__), [run_row(run_id) for run_id in run_ids])


def test_rows_read_back_as_an_inserts_rows_do(sessions: sessionmaker[Session]) -> None:
    add_runs(sessions, "copied", "inserted")
    with sessions.begin() as session:
        db.insert_rows(session, steps, step_rows("copied"))
        session.execute(insert(steps), step_rows("inserted"))
    with sessions() as session:
        copied = stored(session, "copied")
        assert copied == stored(session, "inserted")
    assert len(copied) == db.COPY_MIN_ROWS
    assert copied[0]["timeout_s"] == 2.5
    assert [row["dispatched_at"] for row in copied[:2]] == [NOW, None]  # aware, UTC
    assert copied[1]["depends_on"] == ["s0", 'quote"d\ttab']
    assert copied[2]["worker"] == "w\\1 ünï"


def test_rows_go_with_the_callers_transaction(sessions: sessionmaker[Session]) -> None:
    add_runs(sessions, "kept")
    with sessions() as session:
        db.insert_rows(session, steps, step_rows("kept"))
        session.rollback()
    with sessions() as session:
        assert stored(session, "kept") == []
        db.insert_rows(session, steps, [])


def test_a_failed_insert_raises_what_sqlalchemy_raises_for_a_statement(
    sessions: sessionmaker[Session],
) -> None:
    add_runs(sessions, "twice")
    with sessions.begin() as session:
        db.insert_rows(session, steps, step_rows("twice"))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        db.insert_rows(session, steps, step_rows("twice"))
    with sessions() as session:
        assert len(stored(session, "twice")) == db.COPY_MIN_ROWS


def test_a_session_the_server_ended_raises_sqlalchemys_operational_error(
    backend: str, fresh_database: str, sessions: sessionmaker[Session]
) -> None:
    """What the worker's plan_run takes for "the database went away" (the run stays queued),
    not a planning failure (which would bury the run)."""
    if backend != "postgres":
        pytest.skip("PostgreSQL's COPY; SQLite has no server to end the session")
    add_runs(sessions, "ended")
    with sessions() as session:
        session.execute(select(steps.c.step_id).limit(1)).all()  # in a transaction now
        assert end_every_session(fresh_database) >= 1
        with pytest.raises(OperationalError):
            db.insert_rows(session, steps, step_rows("ended"))
    with sessions() as session:
        assert stored(session, "ended") == []
