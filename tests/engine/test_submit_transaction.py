"""How a submission's run is written (engine.runs.submit with engine.db.statement_by_statement):
without an Idempotency-Key, a session that has not begun writes the run with its one INSERT
as a transaction of its own on PostgreSQL (no BEGIN or COMMIT sent), so others see the run
before the caller commits. With a key, on SQLite, or in a session already in a transaction,
the run stays in the caller's transaction until it commits."""

from __future__ import annotations

from sqlalchemy import select

from engine import runs
from engine.auth import Caller
from engine.db import make_session_factory
from engine.models import Run
from tests.conftest import spec
from tests.support.stack import Stack
from tests.support.transactions import in_transaction

SUBMITTER = Caller("submitter@example.com", ())


def visible_elsewhere(database: Stack, run_id: str) -> bool:
    """Whether another connection sees the run (a reader: it waits for no writer)."""
    with make_session_factory(database.db_engine, read_only=True)() as other:
        return other.scalar(select(Run.id).where(Run.id == run_id)) is not None


def test_a_submission_without_a_key_is_its_own_transaction_on_postgresql(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    postgres = database.settings.database_url.startswith("postgres")
    with database.sessions() as session:
        run, _work, created = runs.submit(
            session, database.settings, runs.SubmitRun(unique, {}), SUBMITTER
        )
        assert created
        # PostgreSQL: committed by the INSERT itself. SQLite: in the caller's transaction.
        assert in_transaction(session) is not postgres
        assert visible_elsewhere(database, run.id) is postgres
        session.commit()
    assert visible_elsewhere(database, run.id)


def test_a_submission_with_a_key_or_in_a_begun_session_waits_for_the_callers_commit(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}]))
    keyed = runs.SubmitRun(unique, {}, idempotency_key=f"{unique}-key")
    with database.sessions() as session:
        run, _work, _created = runs.submit(session, database.settings, keyed, SUBMITTER)
        assert in_transaction(session)
        assert not visible_elsewhere(database, run.id)
        session.rollback()
    assert not visible_elsewhere(database, run.id)

    with database.sessions.begin() as session:
        session.scalar(select(Run.id).limit(1))  # the caller's transaction has begun
        run, _work, _created = runs.submit(
            session, database.settings, runs.SubmitRun(unique, {}), SUBMITTER
        )
        assert in_transaction(session)
        assert not visible_elsewhere(database, run.id)
    assert visible_elsewhere(database, run.id)
