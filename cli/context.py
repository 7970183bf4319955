"""What every command needs: settings, a session, an operator identity, JSON output."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import click
from sqlalchemy.orm import Session

from engine import payloads
from engine.auth import Caller
from engine.config import Settings
from engine.db import make_engine, make_session_factory
from engine.errors import EngineError


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


@contextmanager
def session() -> Iterator[Session]:
    """One transaction; domain errors become a one-line message and exit code 1."""
    db_engine = make_engine(settings())
    try:
        with make_session_factory(db_engine).begin() as current:
            yield current
    except EngineError as exc:
        details = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors)
        raise click.ClickException(exc.detail + (f" ({details})" if details else "")) from exc
    finally:
        db_engine.dispose()


def operator() -> Caller:
    """The CLI acts as the local operator, who sees every run."""
    return Caller(f"cli:{getpass.getuser()}", ("admin.*", "runs.*", "workflows.*"))


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
