"""Migrations go up to head, down to base and up again on SQLite and PostgreSQL, and the
schema they build is the one the models describe."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from engine import migrations
from engine.db import make_engine
from engine.models import Base
from tests.support import services


@pytest.fixture
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend, for this test only."""
    if backend == "postgres":
        url = services.create_postgres_database()
        yield url
        services.drop_postgres_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'migrations.db'}"


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
