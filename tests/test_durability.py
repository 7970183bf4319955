"""What reaches disk before a commit returns (PostgreSQL): the workers' step bookkeeping
commits asynchronously (WORKER_SYNCHRONOUS_COMMIT, "off" by default), dead letters and the
API's writes commit durably."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from engine import dlq
from engine.config import Settings
from engine.db import make_engine
from engine.errors import ConfigError
from engine.work import Work
from tests.conftest import spec
from tests.support.stack import Stack


def _postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("SQLite has no synchronous_commit (it runs WAL with synchronous=NORMAL)")


def _synchronous_commit(session: Session) -> str:
    return str(session.execute(text("SHOW synchronous_commit")).scalar_one())


def test_worker_synchronous_commit_defaults_to_off_and_refuses_an_unknown_value(
    tmp_path: Path,
) -> None:
    environment = {"JWT_SECRET": "s" * 40, "ENGINE_VAR_DIR": str(tmp_path)}
    assert Settings.from_env(environment).worker_synchronous_commit == "off"
    chosen = Settings.from_env({**environment, "WORKER_SYNCHRONOUS_COMMIT": "ON"})
    assert chosen.worker_synchronous_commit == "on"
    with pytest.raises(ConfigError, match="WORKER_SYNCHRONOUS_COMMIT must be one of"):
        Settings.from_env({**environment, "WORKER_SYNCHRONOUS_COMMIT": "sometimes"})


def test_a_dead_letter_commits_durably_in_a_session_that_commits_asynchronously(
    backend: str, database: Stack
) -> None:
    _postgres_only(backend)
    worker_engine: Engine = make_engine(database.settings, synchronous_commit="off")
    try:
        with Session(worker_engine) as session:
            assert _synchronous_commit(session) == "off"
            server_value = str(
                session.execute(
                    text("SELECT reset_val FROM pg_settings WHERE name = :n"),
                    {"n": "synchronous_commit"},
                ).scalar_one()
            )
            dlq.record(
                session,
                Work(),
                task_name="engine.test",
                task_id=None,
                queue="default",
                args=[],
                run_id=None,
                step_id=None,
                workflow=None,
                exception_type="RuntimeError",
                message="boom",
                trace="",
                attempts=1,
            )
            assert _synchronous_commit(session) == server_value
            session.rollback()
            # The next transaction on the same connection is back to the engine's setting.
            assert _synchronous_commit(session) == "off"
    finally:
        worker_engine.dispose()
    with database.sessions() as session:
        assert _synchronous_commit(session) == server_value  # the API's engine sets nothing


def test_the_real_worker_commits_its_step_bookkeeping_asynchronously(
    backend: str, stack: Stack, unique: str
) -> None:
    _postgres_only(backend)
    stack.register(spec(unique, [{"id": "probe", "action": "worker_facts"}]))
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    assert stack.step(run_id, "probe")["output"]["synchronous_commit"] == "off"
