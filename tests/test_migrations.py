"""Migrations go up to head, down to base and up again on SQLite and PostgreSQL, and the
schema they build is the one the models describe."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from engine import migrations
from engine.db import make_engine
from engine.models import Base

DIALECTS = ("postgresql", "sqlite")


def tables(url: str) -> set[str]:
    db_engine = make_engine(url)
    try:
        return set(inspect(db_engine).get_table_names())
    finally:
        db_engine.dispose()


def drift(url: str) -> list[object]:
    """Differences between the migrated schema and the models (empty when they agree)."""
    db_engine = make_engine(url)
    try:
        with db_engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        db_engine.dispose()


def test_upgrade_downgrade_and_upgrade_again(fresh_database: str) -> None:
    head = migrations.head()
    model_tables = set(Base.metadata.tables)
    assert migrations.current(fresh_database) is None

    migrations.upgrade(fresh_database)
    assert migrations.current(fresh_database) == head
    assert tables(fresh_database) == model_tables | {"alembic_version"}
    assert drift(fresh_database) == []

    migrations.downgrade(fresh_database, "base")
    assert migrations.current(fresh_database) is None
    assert tables(fresh_database) - {"alembic_version"} == set()

    migrations.upgrade(fresh_database)
    assert migrations.current(fresh_database) == head
    assert tables(fresh_database) == model_tables | {"alembic_version"}


def test_every_revision_steps_down_and_up_again(fresh_database: str) -> None:
    script = ScriptDirectory.from_config(migrations.alembic_config(fresh_database))
    revisions = [revision.revision for revision in script.walk_revisions("base", "heads")]
    assert len(script.get_heads()) == 1, "migrations have more than one head"
    for revision in reversed(revisions):  # oldest first
        migrations.upgrade(fresh_database, revision)
        migrations.downgrade(fresh_database, "-1")
        migrations.upgrade(fresh_database, revision)
        assert migrations.current(fresh_database) == revision
    assert migrations.current(fresh_database) == migrations.head()


def test_runs_in_flight_count_their_leaf_steps_after_the_upgrade(fresh_database: str) -> None:
    from sqlalchemy import text

    migrations.upgrade(fresh_database, "0001")
    db_engine = make_engine(fresh_database)
    # a -> (b, c) -> d with a and b done: of its leaves only d is left. A lone queued run: 1.
    steps = [
        ("a", "[]", "succeeded"),
        ("b", '["a"]', "succeeded"),
        ("c", '["a"]', "queued"),
        ("d", '["b", "c"]', "pending"),
    ]
    try:
        with db_engine.begin() as connection:
            for run_id, left in (("r1", 2), ("r2", 1)):
                connection.execute(
                    text(
                        "INSERT INTO runs (id, workflow, version, params, status, priority, "
                        "created_by, steps_left, plan_deliveries, created_at) VALUES (:id, 'w', 1, "
                        "'{}', 'running', 0, 'me', :left, 0, '2026-01-01 00:00:00')"
                    ),
                    {"id": run_id, "left": left},
                )
            for position, (step_id, needs, status) in enumerate(steps):
                connection.execute(
                    text(
                        "INSERT INTO steps (run_id, step_id, position, action, queue, depends_on, "
                        "pending_deps, status, attempts, max_attempts, timeout_s) VALUES ('r1', "
                        ":step, :position, 'noop', 'steps', :needs, 0, :status, 0, 1, 1)"
                    ),
                    {"step": step_id, "position": position, "needs": needs, "status": status},
                )
            connection.execute(
                text(
                    "INSERT INTO steps (run_id, step_id, position, action, queue, depends_on, "
                    "pending_deps, status, attempts, max_attempts, timeout_s) "
                    "VALUES ('r2', 'only', 0, 'noop', 'steps', '[]', 0, 'queued', 0, 1, 1)"
                )
            )
        db_engine.dispose()
        migrations.upgrade(fresh_database)
        with db_engine.connect() as connection:
            counts = dict(connection.execute(text("SELECT id, leaves_left FROM runs")).all())
        assert counts == {"r1": 1, "r2": 1}
        migrations.downgrade(fresh_database, "0001")
        with db_engine.connect() as connection:
            counts = dict(connection.execute(text("SELECT id, steps_left FROM runs")).all())
        assert counts == {"r1": 2, "r2": 1}
    finally:
        db_engine.dispose()


def test_the_life_tables_come_with_0003_and_leave_with_its_downgrade(fresh_database: str) -> None:
    life = {"life_wellness_entries", "life_daily_summaries"}
    migrations.upgrade(fresh_database, "0002")
    assert tables(fresh_database) & life == set()
    migrations.upgrade(fresh_database, "0003")
    assert tables(fresh_database) >= life | {"runs", "steps"}
    migrations.downgrade(fresh_database, "0002")
    assert tables(fresh_database) & life == set()
    assert migrations.current(fresh_database) == "0002"


def test_0010_gives_schedules_a_token_id_that_those_made_before_it_lack(
    fresh_database: str,
) -> None:
    from sqlalchemy import text

    def columns() -> set[str]:
        db_engine = make_engine(fresh_database)
        try:
            return {column["name"] for column in inspect(db_engine).get_columns("schedules")}
        finally:
            db_engine.dispose()

    migrations.upgrade(fresh_database, "0009")
    assert "created_jti" not in columns()
    db_engine = make_engine(fresh_database)
    try:
        with db_engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO schedules (id, name, workflow, cron, timezone, params, priority, "
                    "enabled, next_fire_at, created_by, created_scopes, created_at, updated_at) "
                    "VALUES ('s1', 'nightly', 'w', '0 3 * * *', 'UTC', '{}', 0, :enabled, "
                    "'2026-01-02 03:00:00', 'me', '[\"runs.write\"]', '2026-01-01 00:00:00', "
                    "'2026-01-01 00:00:00')"
                ),
                {"enabled": True},
            )
        db_engine.dispose()
        migrations.upgrade(fresh_database, "0010")
        with db_engine.connect() as connection:
            rows = connection.execute(text("SELECT id, name, created_jti FROM schedules")).all()
        # Made before: no token remembered, so no revocation stops it (it fires as before).
        assert [tuple(row) for row in rows] == [("s1", "nightly", None)]
        db_engine.dispose()
        migrations.downgrade(fresh_database, "0009")
        assert "created_jti" not in columns()
        with db_engine.connect() as connection:
            assert connection.execute(text("SELECT name FROM schedules")).scalars().all() == [
                "nightly"
            ]
    finally:
        db_engine.dispose()
    migrations.upgrade(fresh_database)
    assert "created_jti" in columns() and drift(fresh_database) == []


def test_0011_gives_runs_a_fire_time_that_those_submitted_before_it_lack(
    fresh_database: str,
) -> None:
    from sqlalchemy import text

    def columns() -> set[str]:
        db_engine = make_engine(fresh_database)
        try:
            return {column["name"] for column in inspect(db_engine).get_columns("runs")}
        finally:
            db_engine.dispose()

    migrations.upgrade(fresh_database, "0010")
    assert "scheduled_for" not in columns()
    db_engine = make_engine(fresh_database)
    try:
        with db_engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO runs (id, workflow, version, params, status, priority, "
                    "created_by, leaves_left, plan_deliveries, created_at) VALUES ('r1', 'w', 1, "
                    "'{}', 'queued', 0, 'me', 1, 0, '2026-01-01 00:00:00')"
                )
            )
        db_engine.dispose()
        migrations.upgrade(fresh_database, "0011")
        with db_engine.connect() as connection:
            rows = connection.execute(text("SELECT id, scheduled_for FROM runs")).all()
        # Submitted before: no fire time known (its steps see run.scheduled_for as null).
        assert [tuple(row) for row in rows] == [("r1", None)]
        db_engine.dispose()
        migrations.downgrade(fresh_database, "0010")
        assert "scheduled_for" not in columns()
        with db_engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM runs")).scalars().all() == ["r1"]
    finally:
        db_engine.dispose()
    migrations.upgrade(fresh_database)
    assert "scheduled_for" in columns() and drift(fresh_database) == []


def test_0012_gives_runs_a_not_before_and_the_partial_index_of_delayed_runs(
    fresh_database: str,
) -> None:
    from sqlalchemy import text

    def schema() -> tuple[set[str], dict[str, Any]]:
        db_engine = make_engine(fresh_database)
        try:
            inspector = inspect(db_engine)
            columns = {column["name"] for column in inspector.get_columns("runs")}
            indexes = {index["name"]: index for index in inspector.get_indexes("runs")}
            return columns, indexes
        finally:
            db_engine.dispose()

    migrations.upgrade(fresh_database, "0011")
    columns, indexes = schema()
    assert "not_before" not in columns and "ix_runs_not_before" not in indexes
    db_engine = make_engine(fresh_database)
    try:
        with db_engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO runs (id, workflow, version, params, status, priority, "
                    "created_by, leaves_left, plan_deliveries, created_at, dispatched_at) "
                    "VALUES ('r1', 'w', 1, '{}', 'queued', 0, 'me', 1, 0, "
                    "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                )
            )
        db_engine.dispose()
        migrations.upgrade(fresh_database, "0012")
        columns, indexes = schema()
        assert "not_before" in columns
        index = indexes["ix_runs_not_before"]
        assert index["column_names"] == ["not_before"]
        options = index.get("dialect_options", {})
        predicate = " ".join(str(options.get(f"{name}_where", "")) for name in DIALECTS)
        assert "not_before IS NOT NULL" in predicate and "queued" in predicate, index
        with db_engine.connect() as connection:
            rows = connection.execute(text("SELECT id, not_before FROM runs")).all()
        # Submitted before: starts at once, as it always would have.
        assert [tuple(row) for row in rows] == [("r1", None)]
        db_engine.dispose()
        migrations.downgrade(fresh_database, "0011")
        columns, indexes = schema()
        assert "not_before" not in columns and "ix_runs_not_before" not in indexes
    finally:
        db_engine.dispose()
    migrations.upgrade(fresh_database)
    assert drift(fresh_database) == []


def test_0013_gives_runs_a_waiting_reason_and_the_partial_index_of_runs_waiting_for_a_slot(
    fresh_database: str,
) -> None:
    from sqlalchemy import text

    def schema() -> tuple[dict[str, Any], dict[str, Any]]:
        db_engine = make_engine(fresh_database)
        try:
            inspector = inspect(db_engine)
            columns = {column["name"]: column for column in inspector.get_columns("runs")}
            indexes = {index["name"]: index for index in inspector.get_indexes("runs")}
            return columns, indexes
        finally:
            db_engine.dispose()

    migrations.upgrade(fresh_database, "0012")
    columns, indexes = schema()
    assert "waiting" not in columns and "ix_runs_waiting" not in indexes
    db_engine = make_engine(fresh_database)
    try:
        with db_engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO runs (id, workflow, version, params, status, priority, "
                    "created_by, leaves_left, plan_deliveries, created_at, dispatched_at) "
                    "VALUES ('r1', 'w', 1, '{}', 'queued', 0, 'me', 1, 0, "
                    "'2026-01-01 00:00:00', '2026-01-01 00:00:00')"
                )
            )
        db_engine.dispose()
        migrations.upgrade(fresh_database, "0013")
        columns, indexes = schema()
        assert columns["waiting"]["nullable"]
        index = indexes["ix_runs_waiting"]
        assert index["column_names"] == ["workflow", "priority", "created_at"]
        options = index.get("dialect_options", {})
        predicate = " ".join(str(options.get(f"{name}_where", "")) for name in DIALECTS)
        assert "waiting IS NOT NULL" in predicate and "queued" in predicate, index
        with db_engine.connect() as connection:
            rows = connection.execute(text("SELECT id, waiting FROM runs")).all()
            held = connection.execute(
                text("SELECT count(*) FROM runs WHERE status = 'queued' AND waiting IS NOT NULL")
            ).scalar()
        # Submitted before: it waits for no slot (admission never takes it), as it never did.
        assert [tuple(row) for row in rows] == [("r1", None)] and held == 0
        db_engine.dispose()
        migrations.downgrade(fresh_database, "0012")
        columns, indexes = schema()
        assert "waiting" not in columns and "ix_runs_waiting" not in indexes
        with db_engine.connect() as connection:
            assert connection.execute(text("SELECT id FROM runs")).scalars().all() == ["r1"]
    finally:
        db_engine.dispose()
    migrations.upgrade(fresh_database)
    assert "waiting" in schema()[0] and drift(fresh_database) == []
