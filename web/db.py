"""One database session per request, created lazily and closed on teardown; or, for a read
of Core statements, a pooled connection for just that read."""

from __future__ import annotations

from flask import Flask, current_app, g, request
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from engine.db import make_engine, make_session_factory, read_engine

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def init_app(app: Flask) -> None:
    db_engine = make_engine(app.config["SETTINGS"])
    app.extensions["engine.db"] = db_engine
    app.extensions["engine.sessions"] = make_session_factory(db_engine)
    # For read sessions and for reads of Core statements: each statement in autocommit.
    read_db = read_engine(db_engine)
    app.extensions["engine.read_sessions"] = make_session_factory(read_db)
    app.extensions["engine.read_db"] = read_db
    app.teardown_appcontext(_close)


def get_session() -> Session:
    """The request's session; reads take no write lock on SQLite."""
    if "db_session" not in g:
        kind = "engine.read_sessions" if request.method in READ_METHODS else "engine.sessions"
        g.db_session = current_app.extensions[kind]()
    return g.db_session


def read_connection() -> Connection:
    """A connection for one read, to use as a context manager: a session would add its own
    bookkeeping (its transaction, its close) to a one-statement GET for nothing."""
    return current_app.extensions["engine.read_db"].connect()  # type: ignore[no-any-return]


def dispose(app: Flask) -> None:
    """Close the app's pooled connections, its writers' and its readers' (a pool of their
    own, engine.db.read_engine): for tests and tools that make apps of their own."""
    app.extensions["engine.db"].dispose()
    app.extensions["engine.read_db"].dispose()


def _close(_error: BaseException | None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
