"""GET /runs/{id}/events as Server-Sent Events: the changes engine.watch finds, written as
`event: run` (the run as GET /runs/{id} shows it), a comment line as heartbeat, and
`event: timeout` when the stream has been open EVENTS_MAX_DURATION_S, `event: unauthorized`
when its token expired or was revoked meanwhile. Each open stream holds
one of the process's threads, so a process opens at most EVENTS_MAX_STREAMS of them."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask, Response, current_app
from sqlalchemy.exc import OperationalError

from engine import watch
from engine.config import Settings
from engine.revocations import RevocationList
from web.errors import problem
from web.telemetry import STREAM_MIMETYPE

log = logging.getLogger(__name__)
_SLOTS = "engine.event_streams"
# When a client refused for want of a free stream should try again.
RETRY_AFTER_S = 5
HEARTBEAT = b": keep-alive\n\n"


def init_app(app: Flask) -> None:
    settings: Settings = app.config["SETTINGS"]
    app.extensions[_SLOTS] = threading.BoundedSemaphore(settings.events_max_streams)


class TokenEnded(Exception):
    """The stream's token expired or was revoked while it was open."""


def token_check(claims: Mapping[str, Any], revocations: RevocationList) -> Callable[[], None]:
    """A check, for each reading of a stream, that the token it was opened with is still
    good: it raises TokenEnded once the token expired or was revoked (this process's copy
    of the revocations, as every request is checked)."""
    jti, expires = claims.get("jti"), claims.get("exp")

    def check() -> None:
        if isinstance(expires, int | float) and time.time() >= expires:
            raise TokenEnded("token expired")
        if revocations.is_revoked(jti, expires):
            raise TokenEnded("token revoked")

    return check


def event(name: str, number: int, data: Mapping[str, Any] | None = None) -> bytes:
    body = json.dumps(data, separators=(",", ":")) if data is not None else "{}"
    return f"id: {number}\nevent: {name}\ndata: {body}\n\n".encode()


def stream(read: Callable[[], Mapping[str, Any]], first: Mapping[str, Any]) -> Response:
    """The streamed answer following a run from its `first` reading; a 503 with Retry-After
    when every stream this process may open is open (503, not 429: the server is at
    capacity, the client did nothing wrong, and another process may have room). `read` must
    not need the request's context: the stream outlives it."""
    slots: threading.BoundedSemaphore = current_app.extensions[_SLOTS]
    if not slots.acquire(blocking=False):
        return problem(
            503,
            "Service unavailable",
            "every event stream this server may hold is open; retry shortly, "
            "or poll GET /runs/{id}",
            code="streams_busy",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    settings: Settings = current_app.config["SETTINGS"]
    changes = watch.follow(
        read,
        first=first,
        poll_interval_s=settings.events_poll_interval_s,
        quiet_s=settings.events_heartbeat_s,
        max_duration_s=settings.events_max_duration_s,
    )
    response = Response(_encode(changes), mimetype=STREAM_MIMETYPE)
    response.headers["Cache-Control"] = "no-cache"
    # Proxies that buffer answers (nginx) pass this one on as it comes.
    response.headers["X-Accel-Buffering"] = "no"
    # The slot is given back when the server closes the answer: at its end, or when the
    # client went away (a write failed), whether or not it began.
    response.call_on_close(slots.release)
    return response


def _encode(changes: Iterator[watch.Change]) -> Iterator[bytes]:
    """The changes as the stream's bytes. A database gone away ends the stream, as a server
    restart would: the client connects again, and is answered 503 until it is back."""
    number = 0
    try:
        for change in changes:
            if change.kind == watch.QUIET:
                yield HEARTBEAT
                continue
            number += 1
            if change.kind == watch.EXPIRED:
                yield event("timeout", number)
            else:
                yield event("run", number, change.state)
    except TokenEnded as ended:
        # The client's next request (a reconnection) is answered 401, saying why.
        yield event("unauthorized", number + 1, {"detail": str(ended)})
    except OperationalError as error:
        log.warning("event stream ended: the database is unavailable: %s", error.orig)
