"""GET /runs/{id}/events as Server-Sent Events: the changes engine.watch finds, written as
`event: run` (the run as GET /runs/{id} shows it), a comment line as heartbeat, and
`event: timeout` when the stream has been open EVENTS_MAX_DURATION_S, `event: unauthorized`
when its token expired or was revoked meanwhile. Each open stream holds
one of the process's threads, so a process opens at most EVENTS_MAX_STREAMS of them.

An event's id names the run state the client holds once it has it: a digest of the run's
JSON for `event: run`, the last one sent for the others. A client that connects again with
that id (Last-Event-ID) is sent nothing until the run changes; a finished run it already
has is a 204, which tells EventSource to stop reconnecting."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from flask import Flask, Request, Response, current_app
from sqlalchemy.exc import OperationalError

from engine import watch
from engine.config import Settings
from engine.revocations import RevocationList
from web.errors import problem
from web.telemetry import STREAM_MIMETYPE

log = logging.getLogger(__name__)
_SLOTS = "engine.event_streams"
# When a client refused for want of a free stream should try again; and how long
# EventSource waits before it reconnects after a stream ended.
RETRY_AFTER_S = 5
HEARTBEAT = b": keep-alive\n\n"
# The stream's first bytes, RETRY_AFTER_S in ms. They also send the answer's headers at
# once, when the first event may be a while away (a client that has the current state).
RETRY = f"retry: {RETRY_AFTER_S * 1000}\n\n".encode()


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


def last_event_id(request: Request) -> str | None:
    """The state the client says it has: Last-Event-ID (what EventSource sends when it
    reconnects), else the `last_event_id` query parameter (for a first connection)."""
    return request.headers.get("Last-Event-ID") or request.args.get("last_event_id")


def state_id(data: bytes) -> str:
    """The id of a run state: a digest of its JSON, so it changes whenever the JSON does,
    and every connection gives the same state the same id."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def encode(data: Mapping[str, Any] | None) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() if data is not None else b"{}"


def event(name: str, event_id: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), name.encode(), data)


def stream(
    read: Callable[[], Mapping[str, Any]], first: Mapping[str, Any], client_has: str | None
) -> Response:
    """The streamed answer following a run from its `first` reading, to a client that has
    the state of id `client_has` (None: a new client); a 204 when that is the run finished;
    a 503 with Retry-After when every stream this process may open is open (503, not 429:
    the server is at capacity, the client did nothing wrong, and another process may have
    room). `read` must not need the request's context: the stream outlives it."""
    seen = first if client_has and client_has == state_id(encode(first)) else None
    if seen is not None and watch.finished(seen):
        return Response(status=204)
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
        seen=seen,
        poll_interval_s=settings.events_poll_interval_s,
        quiet_s=settings.events_heartbeat_s,
        max_duration_s=settings.events_max_duration_s,
    )
    has = client_has if seen is not None else None
    response = Response(_encode(changes, has), mimetype=STREAM_MIMETYPE)
    response.headers["Cache-Control"] = "no-cache"
    # Proxies that buffer answers (nginx) pass this one on as it comes.
    response.headers["X-Accel-Buffering"] = "no"
    # The slot is given back when the server closes the answer: at its end, or when the
    # client went away (a write failed), whether or not it began.
    response.call_on_close(slots.release)
    return response


def _encode(changes: Iterator[watch.Change], client_has: str | None) -> Iterator[bytes]:
    """The changes as the stream's bytes, to a client that has the state of id
    `client_has` (None: the first change is a state). A database gone away ends the stream,
    as a server restart would: the client connects again, and is answered 503 until it is
    back."""
    yield RETRY
    current = client_has or ""
    try:
        for change in changes:
            if change.kind == watch.QUIET:
                yield HEARTBEAT
            elif change.kind == watch.EXPIRED:
                yield event("timeout", current, b"{}")
            else:
                data = encode(change.state)
                current = state_id(data)
                yield event("run", current, data)
    except TokenEnded as ended:
        # The client's next request (a reconnection) is answered 401, saying why.
        yield event("unauthorized", current, encode({"detail": str(ended)}))
    except OperationalError as error:
        log.warning("event stream ended: the database is unavailable: %s", error.orig)
