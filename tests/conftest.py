"""Fixtures: a platform per database backend (SQLite and PostgreSQL), with a real worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import services
from tests.support.stack import Stack

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def stack(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The shared platform of a backend: database, API and one prefork worker (-c 2)."""
    platform = Stack(backend, tmp_path_factory.mktemp(f"stack-{backend}"))
    platform.start_worker(concurrency=2)
    yield platform
    platform.close()


@pytest.fixture(scope="session")
def database(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A migrated database and API without a worker (for tests that need none)."""
    platform = Stack(backend, tmp_path_factory.mktemp(f"db-{backend}"))
    yield platform
    platform.close()


@pytest.fixture
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend, for this test only (no migrations applied)."""
    if backend == "postgres":
        url = services.create_postgres_database()
        yield url
        services.drop_postgres_database(url)
    else:
        yield f"sqlite:///{tmp_path / 'fresh.db'}"


@pytest.fixture
def no_other_schedules(database: Stack) -> Iterator[None]:
    """A tick fires every due schedule of the database: the test starts with none, and
    leaves none behind. A schedule test module names it in its pytestmark."""
    from sqlalchemy import delete

    from engine.schedules.models import Schedule

    with database.sessions.begin() as session:
        session.execute(delete(Schedule))
    yield
    with database.sessions.begin() as session:
        session.execute(delete(Schedule))


@pytest.fixture
def unique() -> str:
    """A name no other test uses (tests share a database per backend)."""
    return f"wf_{uuid.uuid4().hex[:10]}"


def spec(name: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": name, "version": 1, "steps": steps, **extra}
