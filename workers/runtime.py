"""Per-process resources of a worker: settings, database sessions (rebuilt after fork)."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from engine import actions
from engine.config import Settings
from engine.db import make_engine, make_session_factory


@lru_cache(maxsize=1)
def settings() -> Settings:
    configured = Settings.from_env()
    # prometheus_client opens its files when the first metric is created: the directory must
    # exist before anything imports engine.metrics, the action modules loaded here among them.
    if configured.metrics_dir is not None:
        configured.metrics_dir.mkdir(parents=True, exist_ok=True)
    actions.load_plugins(configured.action_modules)
    return configured


@lru_cache(maxsize=1)
def db_engine() -> Engine:
    """The worker's engine: on PostgreSQL its commits follow WORKER_SYNCHRONOUS_COMMIT."""
    configured = settings()
    return make_engine(configured, synchronous_commit=configured.worker_synchronous_commit)


@lru_cache(maxsize=1)
def sessions() -> sessionmaker[Session]:
    return make_session_factory(db_engine())


def unbegun_session() -> Session:
    """A session that has not begun a transaction, for a use case that may write with one
    statement outside any (engine.db.statement_by_statement); the caller commits."""
    return sessions()()


def after_fork() -> None:
    """A forked child must not share its parent's database connections."""
    if db_engine.cache_info().currsize:
        db_engine().dispose(close=False)
