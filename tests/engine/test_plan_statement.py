"""How a worker writes a one-step run (engine.planning.plan_and_claim, then
engine.outcomes.finish_attempt): on PostgreSQL, in a session that has not begun, planning
with the workflow and version from the plan message is one statement that starts the run and
writes its steps, and a leaf's success is one statement; each is a transaction of its own
(no BEGIN or COMMIT sent), so others see it before the caller commits. On SQLite both stay
in the caller's transaction. Params refused at planning leave the run queued without steps,
to be buried as a plan that never started."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from engine import execution, outcomes, plan_failures, planning, runs
from engine.attempts import Claim
from engine.auth import Caller
from engine.db import make_session_factory
from engine.errors import InvalidParams
from engine.models import DeadLetter, Run, Step
from tests.conftest import spec
from tests.support.stack import Stack
from tests.support.transactions import in_transaction

PLANNER = Caller("planner@example.com", ())
WORKER = "probe@host:plan"


def queued(database: Stack, workflow: str, params: dict | None = None) -> str:
    with database.sessions.begin() as session:
        run, _work, _created = runs.submit(
            session, database.settings, runs.SubmitRun(workflow, params or {}), PLANNER
        )
        return run.id


def seen_elsewhere(database: Stack, run_id: str) -> tuple[str, list[tuple[str, str]]]:
    """The run's status and its steps as another connection sees them."""
    with make_session_factory(database.db_engine, read_only=True)() as other:
        status = other.scalar(select(Run.status).where(Run.id == run_id))
        rows = other.execute(
            select(Step.step_id, Step.status).where(Step.run_id == run_id).order_by(Step.position)
        ).all()
        return status, [tuple(row) for row in rows]


def test_a_one_step_run_is_planned_and_succeeds_in_one_statement_each_on_postgresql(
    database: Stack, unique: str
) -> None:
    database.register(spec(unique, [{"id": "only", "action": "noop"}]))
    run_id = queued(database, unique)
    postgres = database.backend == "postgres"
    with database.sessions() as session:
        work, claim = planning.plan_and_claim(
            session, database.settings, run_id, WORKER, (unique, 1)
        )
        assert isinstance(claim, Claim) and not work
        assert (claim.step_id, claim.attempt, claim.task_id) == ("only", 1, f"{run_id}:only:1")
        # PostgreSQL: committed by the statement itself. SQLite: in the caller's transaction.
        assert in_transaction(session) is not postgres
        planned = ("running", [("only", "running")])
        assert seen_elsewhere(database, run_id) == (planned if postgres else ("queued", []))
        session.commit()
    assert seen_elsewhere(database, run_id) == planned

    result = execution.attempt(claim)
    with database.sessions() as session:
        outcome = outcomes.finish_attempt(session, database.settings, claim, result)
        assert outcome.status == "succeeded" and not outcome.work
        assert in_transaction(session) is not postgres
        done = ("succeeded", [("only", "succeeded")])
        assert seen_elsewhere(database, run_id) == (done if postgres else planned)
        session.commit()
    assert seen_elsewhere(database, run_id) == done
    with database.sessions() as session:
        stored = session.get(Run, run_id)
        assert stored.leaves_left == 0 and stored.started_at and stored.finished_at


@pytest.mark.parametrize("expected", [None, ("other", 1), ("missing", 1), ("same", 7)], ids=str)
def test_planning_goes_by_the_run_whatever_the_message_names(
    database: Stack, unique: str, expected: tuple[str, int] | None
) -> None:
    database.register(spec(unique, [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}]))
    database.register(spec(f"{unique}_other", [{"id": "x", "action": "noop"}]))
    names = {"other": f"{unique}_other", "missing": f"{unique}_missing", "same": unique}
    if expected is not None:
        expected = (names[expected[0]], expected[1])
    run_id = queued(database, unique)
    with database.sessions() as session:
        work, claim = planning.plan_and_claim(session, database.settings, run_id, WORKER, expected)
        session.commit()
    assert claim is not None and claim.step_id == "a" and claim.workflow.name == unique
    assert [dispatch.args for dispatch in work.dispatches] == [(run_id, "b")]
    assert seen_elsewhere(database, run_id) == ("running", [("a", "running"), ("b", "queued")])

    with database.sessions() as session:  # a second delivery
        again = planning.plan_and_claim(session, database.settings, run_id, WORKER, expected)
        session.commit()
    assert again == (planning.Work(), None)
    assert seen_elsewhere(database, run_id) == ("running", [("a", "running"), ("b", "queued")])


def test_params_refused_at_planning_leave_the_run_queued_without_steps_to_be_buried(
    database: Stack, unique: str
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    database.register(spec(unique, [{"id": "a", "action": "noop"}], params=schema))
    run_id = queued(database, unique, {"n": 1})
    with database.sessions.begin() as session:
        # Params the submission would have refused (a run written some other way).
        session.execute(
            update(Run).where(Run.id == run_id).values(params={"n": "one", "password": "hunter22"})
        )
    with database.sessions() as session:
        with pytest.raises(InvalidParams):
            planning.plan_and_claim(session, database.settings, run_id, WORKER, (unique, 1))
        session.rollback()
    assert seen_elsewhere(database, run_id) == ("queued", [])
    with database.sessions() as session:
        assert session.get(Run, run_id).started_at is None

    with database.sessions.begin() as session:
        # A refusal may quote what it refused: what is kept and logged of it hides secrets.
        buried = plan_failures.bury_plan(
            session,
            database.settings,
            run_id,
            "InvalidParams",
            "'hunter22' is not an integer",
            "x = 'hunter22'",
        )
        assert buried.message == "'[REDACTED]' is not an integer"
    letter_id = buried.letter_id
    assert letter_id is not None
    assert seen_elsewhere(database, run_id) == ("failed", [])
    with database.sessions() as session:
        letter = session.get(DeadLetter, letter_id)
        assert (letter.run_id, letter.args) == (run_id, [run_id, unique, 1])
        assert (letter.message, letter.traceback) == (
            "'[REDACTED]' is not an integer",
            "x = '[REDACTED]'",
        )
