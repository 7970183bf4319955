"""What every command needs: settings, a session, an operator identity, JSON output, and
the one place where an error becomes a one-line message and a non-zero exit."""

from __future__ import annotations

import getpass
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import click
from alembic.util import CommandError
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session

from engine import actions, backup, payloads, pg_client
from engine.auth import OPERATOR_PREFIX, Caller
from engine.config import Settings
from engine.db import make_engine, make_session_factory
from engine.errors import DatabaseOperationError, EngineError
from engine.work import Work

# SQLSTATE of PostgreSQL's "relation does not exist".
UNDEFINED_TABLE = "42P01"
# Its failures are logged with their tracebacks (the API's and the workers' logs keep
# them); the CLI says it in one line instead, and shows them with --debug.
DISPATCH_LOGGER = "workers.dispatch"
UNSENT_WARNING = (
    "warning: committed, but the broker is unreachable; the reconciler will send the "
    "work when it is back (`engine --debug ...` shows why)"
)
_handler: logging.Handler | None = None


def configure_logging(debug: bool) -> None:
    """Warnings on stderr (everything, with tracebacks, under --debug)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not debug:
        _handler.addFilter(lambda record: not record.name.startswith(DISPATCH_LOGGER))
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


def settings_with_actions() -> Settings:
    """Settings, with the action modules they name imported: specs are checked against
    the registered actions, as the API and the workers check them."""
    current = settings()
    actions.load_plugins(current.action_modules)
    return current


def click_error(exc: Exception) -> click.ClickException | None:
    """The operator's one-line message for an error the CLI expects (bad input, bad
    settings, a database that is missing or not migrated); None for a real bug."""
    if isinstance(exc, EngineError):
        details = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
        return click.ClickException(exc.detail + (f" ({details})" if details else ""))
    if isinstance(exc, CommandError):
        return click.ClickException(f"migration: {exc}")
    if isinstance(exc, ArgumentError):  # NoSuchModuleError among them: a DATABASE_URL typo
        return click.ClickException(f"DATABASE_URL cannot be used: {exc}")
    if isinstance(exc, DBAPIError):
        reason = pg_client.first_line(exc)
        orig = getattr(exc, "orig", None)
        if "no such table" in reason or getattr(orig, "sqlstate", None) == UNDEFINED_TABLE:
            return click.ClickException(
                f"the database is not migrated ({reason}): run `engine db upgrade`"
            )
        return click.ClickException(f"database error: {reason}")
    return None


class EngineGroup(click.Group):
    """The `engine` group: expected errors from any command end as one line, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            error = click_error(exc)
            if error is None:
                raise
            raise error from exc


def require_database(current: Settings) -> None:
    """Refuse a SQLite file that does not exist, rather than create an empty one."""
    if not current.is_sqlite:
        return
    try:
        path = backup.sqlite_path(current, must_exist=False)
    except DatabaseOperationError:  # in memory: nothing to find on disk
        return
    if not path.is_file():
        raise click.ClickException(
            f"the database {path} does not exist: check DATABASE_URL (or ENGINE_VAR_DIR), "
            "or create it with `engine db upgrade`"
        )


@contextmanager
def session() -> Iterator[Session]:
    """One transaction, committed when the block ends without an error."""
    require_database(settings())
    db_engine = make_engine(settings())
    try:
        with make_session_factory(db_engine).begin() as current:
            yield current
    finally:
        db_engine.dispose()


@contextmanager
def sender() -> Iterator[Callable[[Work], None]]:
    """Send work to the broker named by the settings (REDIS_URL, REDIS_KEY_PREFIX), after
    the commit; work the broker did not take ends in one warning, not an error: its rows
    are committed and the reconciler sends it again."""
    from workers.dispatch import send
    from workers.factory import make_celery

    app = make_celery(settings())
    unsent = 0

    def deliver(work: Work) -> None:
        nonlocal unsent
        if not send(work, app):
            unsent += 1

    try:
        yield deliver
    finally:
        app.close()
    if unsent:
        click.echo(UNSENT_WARNING, err=True)


def operator() -> Caller:
    """The CLI acts as the local operator, who sees every run."""
    return Caller(f"{OPERATOR_PREFIX}{getpass.getuser()}", ("admin.*", "runs.*", "workflows.*"))


def json_option(text: str, hint: str) -> Any:
    """An option's JSON value; text that is not JSON, or a value beyond engine.payloads'
    limits, is a usage error naming the option."""
    try:
        return payloads.loads(text, hint.lstrip("-"))
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint) from exc
    except EngineError as exc:
        raise click.BadParameter(exc.detail, param_hint=hint) from exc


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
