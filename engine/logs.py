"""Structured logs: one JSON object per line, configured once per process.

Every line has `ts`, `level`, `logger`, `message` and `component`, plus `request_id`,
`run_id`, `step_id` and `task_id` when the code that logs runs on behalf of one (see
`bind`). With LOG_DIR set, application lines go to LOG_DIR/app.log and access lines to
LOG_DIR/access.log; otherwise both go to stderr. Secrets never reach a line: bearer tokens,
JWT-shaped strings, Authorization values and the configured JWT secrets are redacted.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.config import Settings

ACCESS_LOGGER = "engine.access"
CONTEXT_FIELDS = ("request_id", "run_id", "step_id", "task_id")
REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("engine_log_context", default=_EMPTY)


def bind(**fields: str | None) -> Token[Mapping[str, str]]:
    """Add ids to every line logged from here on, in this thread or task; `reset` undoes."""
    current = dict(_context.get())
    current.update({name: str(value) for name, value in fields.items() if value})
    return _context.set(current)


def reset(token: Token[Mapping[str, str]]) -> None:
    try:
        _context.reset(token)
    except ValueError:  # made in another context (a thread that ended): start clean
        _context.set(_EMPTY)


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def current_context() -> Mapping[str, str]:
    return _context.get()


class Redactor:
    """Replaces credentials in text: Authorization values, bearer tokens, JWTs, secrets."""

    # Each pattern with the word (lower case) a text must hold for it to match: most lines
    # hold none, and looking for a word costs far less than a case-blind regex.
    _PATTERNS = (
        # "Authorization: Bearer x", authorization='Basic x', {"authorization": "x"}
        (
            "authorization",
            re.compile(
                r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?"
                r"[^\s\"',;}]+"
            ),
        ),
        ("bearer", re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*")),
        # header.payload.signature, the header being base64url JSON: `{"` is `eyJ`.
        ("eyj", re.compile(r"()\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")),
    )

    def __init__(self, secrets: Iterable[str] = (), min_length: int = MIN_SECRET_LENGTH) -> None:
        literal = sorted({s for s in secrets if len(s) >= min_length}, key=len)
        self._literal = tuple(literal)
        self._secrets = (
            re.compile("|".join(re.escape(s) for s in reversed(literal))) if literal else None
        )

    def redact(self, text: str) -> str:
        if self._secrets is not None and any(secret in text for secret in self._literal):
            text = self._secrets.sub(REDACTED, text)
        # A regex with (?i) matches the Turkish dotted and dotless i for an i as well.
        words = text.lower().replace("\u0131", "i").replace("i\u0307", "i")
        for word, pattern in self._PATTERNS:
            if word in words:
                text = pattern.sub(lambda match: match.group(1) + REDACTED, text)
        return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message, arguments and traceback before any handler formats it."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = self.redactor.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            record.fields = {
                name: self.redactor.redact(value) if isinstance(value, str) else value
                for name, value in fields.items()
            }
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record. `extra={"fields": {...}}` adds keys to the object."""

    def __init__(self, component: str, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.component = component
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "component": self.component,
        }
        bound = _context.get()
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None) or bound.get(name)
            if value:
                line[name] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for name, value in fields.items():
                line.setdefault(name, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # A last pass over the whole line: whatever field a secret hid in, it goes.
        return self.redactor.redact(json.dumps(line, default=str, ensure_ascii=False))


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _handler(log_dir: Path | None, filename: str) -> logging.Handler:
    if log_dir is None:
        return StderrHandler()
    log_dir.mkdir(parents=True, exist_ok=True)
    # Watched: logrotate may move the file; several processes append to it.
    return logging.handlers.WatchedFileHandler(log_dir / filename, encoding="utf-8")


def redactor_for(settings: Settings) -> Redactor:
    return Redactor((settings.jwt_secret, *settings.jwt_previous_secrets))


_lock = threading.Lock()
_configured: tuple[Any, ...] | None = None
_installed: list[tuple[logging.Logger, logging.Handler]] = []


def configure(
    settings: Settings,
    component: str,
    level: int | str | None = None,
    filters: Iterable[logging.Filter] = (),
) -> bool:
    """Install the JSON handlers on the root and access loggers; configuring again with the
    same settings does nothing, with new ones replaces what this module installed.
    `filters` run before redaction (they may add ids to records). True when it changed."""
    global _configured
    filters = tuple(filters)
    resolved = level if level is not None else settings.log_level
    if isinstance(resolved, str):
        resolved = logging.getLevelName(resolved.upper())
        if not isinstance(resolved, int):
            resolved = logging.INFO
    key = (
        component,
        settings.log_dir,
        resolved,
        settings.jwt_secret,
        settings.jwt_previous_secrets,
        tuple(type(f) for f in filters),
    )
    with _lock:
        if key == _configured:
            return False
        for logger, handler in _installed:
            logger.removeHandler(handler)
            handler.close()
        _installed.clear()
        redactor = redactor_for(settings)
        formatter = JsonFormatter(component, redactor)
        root = logging.getLogger()
        access = logging.getLogger(ACCESS_LOGGER)
        for logger, filename in ((root, "app.log"), (access, "access.log")):
            handler = _handler(settings.log_dir, filename)
            for extra in filters:
                handler.addFilter(extra)
            handler.addFilter(RedactingFilter(redactor))
            handler.setFormatter(formatter)
            logger.addHandler(handler)
            _installed.append((logger, handler))
        root.setLevel(resolved)
        access.setLevel(logging.INFO)
        # Access lines go to their own file only, not to app.log as well.
        access.propagate = False
        logging.captureWarnings(True)
        _configured = key
        return True
