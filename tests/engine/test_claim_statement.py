"""How a message claims its step (engine.claims.claim_step) in a session that has not begun,
as the worker's tasks call it: on PostgreSQL the claim is one statement, a transaction of its
own (no BEGIN or COMMIT sent), so others see it before the caller commits; an attempt found
lost is then recorded in one transaction, which the caller commits. On SQLite everything
stays in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine import claims, planning, runs
from engine.attempts import Claim, Outcome
from engine.auth import Caller
from engine.db import make_session_factory
from engine.models import Run, Step
from engine.work import step_task_id
from tests.conftest import spec
from tests.support.stack import Stack
from tests.support.transactions import in_transaction

SUBMITTER = Caller("claimer@example.com", ())
WORKER = "probe@host:claim"


def planned(database: Stack, workflow: str) -> str:
    """A run of `workflow` planned: its first step claimed by the planner, the others queued."""
    with database.sessions.begin() as session:
        run, _work, _created = runs.submit(
            session, database.settings, runs.SubmitRun(workflow, {}), SUBMITTER
        )
        run_id = run.id
    with database.sessions() as session:
        planning.plan_and_claim(session, database.settings, run_id, WORKER, (workflow, 1))
        session.commit()
    return run_id


def seen_elsewhere(database: Stack, run_id: str, step_id: str) -> tuple[str, int, str | None]:
    """A step's status, attempts and task id as another connection sees them."""
    with make_session_factory(database.db_engine, read_only=True)() as other:
        row = other.execute(
            select(Step.status, Step.attempts, Step.task_id).where(
                Step.run_id == run_id, Step.step_id == step_id
            )
        ).one()
        return row.status, row.attempts, row.task_id


def claim(
    session: Session, database: Stack, run_id: str, step_id: str, attempt: int, **options: Any
) -> Claim | Outcome | None:
    """claim_step for the message of `attempt`, as the worker's task calls it."""
    return claims.claim_step(
        session,
        database.settings,
        run_id,
        step_id,
        task_id=step_task_id(run_id, step_id, attempt),
        worker=WORKER,
        **options,
    )


def test_a_claim_is_one_statement_on_postgresql(database: Stack, unique: str) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}]))
    run_id = planned(database, unique)
    postgres = database.backend == "postgres"
    task_id = step_task_id(run_id, "b", 1)
    with database.sessions() as session:
        claimed = claim(session, database, run_id, "b", 1)
        assert isinstance(claimed, Claim) and (claimed.attempt, claimed.task_id) == (1, task_id)
        # PostgreSQL: committed by the statement itself. SQLite: in the caller's transaction.
        assert in_transaction(session) is not postgres
        running, queued = ("running", 1, task_id), ("queued", 0, None)
        assert seen_elsewhere(database, run_id, "b") == (running if postgres else queued)
        session.commit()
    assert seen_elsewhere(database, run_id, "b") == running

    with database.sessions() as session:  # the same message again: not ours to run
        assert claim(session, database, run_id, "b", 1) is None
        session.commit()
    assert seen_elsewhere(database, run_id, "b") == running


def test_an_attempt_found_lost_is_recorded_in_one_transaction(database: Stack, unique: str) -> None:
    """The broker redelivers the delivery that claimed an attempt still marked running: its
    worker died. The claim statement misses; the failure it records (the step retried, its
    next attempt's message) is written in one transaction, which the caller commits."""
    database.register(spec(unique, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}]))
    run_id = planned(database, unique)
    task_id = step_task_id(run_id, "b", 1)
    with database.sessions() as session:
        assert isinstance(claim(session, database, run_id, "b", 1, delivery="first"), Claim)
        session.commit()

    with database.sessions() as session:
        lost = claim(session, database, run_id, "b", 1, delivery="first", redelivered=True)
        assert isinstance(lost, Outcome) and lost.status == "retrying"
        assert [dispatch.task_id for dispatch in lost.work.dispatches] == [
            step_task_id(run_id, "b", 2)
        ]
        assert in_transaction(session)
        assert seen_elsewhere(database, run_id, "b") == ("running", 1, task_id)
        session.commit()
    assert seen_elsewhere(database, run_id, "b")[:2] == ("retrying", 1)

    with database.sessions() as session:  # a stale copy of attempt 1 cannot take the retry
        assert claim(session, database, run_id, "b", 1, delivery="first", redelivered=True) is None
        session.commit()
    with database.sessions() as session:
        retried = claim(session, database, run_id, "b", 2)
        assert isinstance(retried, Claim) and retried.attempt == 2
        session.commit()
    assert seen_elsewhere(database, run_id, "b") == ("running", 2, step_task_id(run_id, "b", 2))


def test_a_claim_waits_for_its_run_to_run(database: Stack, unique: str) -> None:
    """A queued step of a run that is not running (another step died and failed it) is not
    claimed: the claim checks the run, not only the step."""
    database.register(spec(unique, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}]))
    run_id = planned(database, unique)
    with database.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(status="failed"))
    assert seen_elsewhere(database, run_id, "b") == ("queued", 0, None)
    with database.sessions() as session:
        assert claim(session, database, run_id, "b", 1) is None
        session.commit()
    assert seen_elsewhere(database, run_id, "b") == ("queued", 0, None)
