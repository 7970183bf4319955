"""The `http.request` action: one HTTP request to an outside host, its answer as output.

Where it may go is engine.outbound's policy (HTTP_ALLOWED_HOSTS, and no private or
reserved address unless HTTP_ALLOW_PRIVATE_ADDRESSES), checked on every connection,
redirects included. It follows at most MAX_REDIRECTS redirects (`follow_redirects: false`
follows none): enough for a moved API, few enough that a loop fails fast; requests drops
the Authorization header when a redirect leaves the host.

A connection error, a timeout, a 5xx, 429 or 408 is worth retrying (ActionError, carrying
the answer's Retry-After, which stretches the wait up to the step's max_backoff_s); any
other status outside `expect` (default: 2xx) is not (NonRetryableError: a dead letter at
once). Messages name the method, the URL without user info, query or fragment, and the
status; never the exception of requests, whose text quotes the query.
"""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from engine import outbound, payloads
from engine.actions import ActionContext, register
from engine.config import Settings
from engine.errors import ActionError, NonRetryableError
from engine.redaction import SECRET_NAME

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MAX_REDIRECTS = 5
RETRYABLE_STATUSES = frozenset({408, 429})
CHUNK_BYTES = 65_536
SCALAR = {"type": ["string", "number", "boolean"]}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["url"],
    "additionalProperties": False,
    "properties": {
        "method": {"enum": list(METHODS)},
        "url": {
            "type": "string",
            "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]+",
            "maxLength": 8192,
        },
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "query": {
            "type": "object",
            "additionalProperties": {"anyOf": [SCALAR, {"type": "array", "items": SCALAR}]},
        },
        "json": {},
        "body": {"type": "string"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0},
        "expect": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "integer", "minimum": 100, "maximum": 599},
        },
        "follow_redirects": {"type": "boolean"},
    },
    "dependentSchemas": {"json": {"not": {"required": ["body"]}}},
}


def public_url(url: str) -> str:
    """`url` as messages may show it: scheme, host, port and path only."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@register("http.request", schema=SCHEMA)
def http_request(inputs: dict[str, Any], context: ActionContext) -> dict[str, Any]:
    settings = context.settings or Settings()
    method = inputs.get("method", "GET")
    where = f"{method} {public_url(inputs['url'])}"
    timeout = inputs.get("timeout_s", settings.http_timeout_s)
    if context.timeout_s is not None:  # the step's own limit would cut it short anyway
        timeout = min(timeout, context.timeout_s)
    deadline = time.monotonic() + timeout
    client = outbound.session(outbound.Policy.from_settings(settings), MAX_REDIRECTS)
    try:
        with client.request(
            method,
            inputs["url"],
            headers=inputs.get("headers"),
            params=inputs.get("query"),
            json=inputs.get("json"),
            data=inputs["body"].encode() if "body" in inputs else None,
            timeout=timeout,
            allow_redirects=inputs.get("follow_redirects", True),
            stream=True,
        ) as response:
            _check_status(response, where, inputs.get("expect"))
            content = b"" if method == "HEAD" else _read(response, where, settings, deadline)
    except outbound.Refused as exc:
        raise NonRetryableError(f"{where} refused: {exc}") from None
    except requests.TooManyRedirects:
        raise NonRetryableError(f"{where}: more than {MAX_REDIRECTS} redirects") from None
    except requests.Timeout as exc:
        raise ActionError(f"{where} timed out after {timeout:g} s ({type(exc).__name__})") from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise ActionError(f"{where}: connection failed ({type(exc).__name__})") from None
    except requests.RequestException as exc:
        raise NonRetryableError(f"{where} failed ({type(exc).__name__})") from None
    finally:
        client.close()
    return {
        "status": response.status_code,
        "headers": {
            name.lower(): value
            for name, value in response.headers.items()
            if not SECRET_NAME.search(name)
        },
        "body": None if method == "HEAD" else _body(response, content, where),
    }


def _read(response: requests.Response, where: str, settings: Settings, deadline: float) -> bytes:
    """The body, decoded from its content encoding, refused past HTTP_MAX_RESPONSE_BYTES or
    once the request's timeout is spent (a server sending a byte at a time)."""
    cap = settings.http_max_response_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise NonRetryableError(
            f"{where}: the response of {declared} bytes exceeds HTTP_MAX_RESPONSE_BYTES ({cap})"
        )
    content = bytearray()
    for chunk in response.iter_content(CHUNK_BYTES):
        content += chunk
        if len(content) > cap:
            raise NonRetryableError(
                f"{where}: the response exceeds HTTP_MAX_RESPONSE_BYTES ({cap})"
            )
        if time.monotonic() > deadline:
            raise ActionError(f"{where}: the response took longer than its timeout to arrive")
    return bytes(content)


def _check_status(response: requests.Response, where: str, expect: list[int] | None) -> None:
    status = response.status_code
    if (status in expect) if expect else 200 <= status < 300:
        return
    message = f"{where} answered {status} {response.reason or ''}".rstrip()
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise ActionError(message, retry_after_s=retry_after(response.headers.get("Retry-After")))
    raise NonRetryableError(message)


def _body(response: requests.Response, content: bytes, where: str) -> Any:
    """JSON when the response says so (and parses), else text. The step's output column
    cannot hold a NUL (engine.payloads): text gets U+FFFD for it, JSON holding one (or
    nested past payloads' limits) is refused."""
    media = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    charset = response.encoding if "charset=" in response.headers.get("Content-Type", "") else None
    try:
        text = content.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = content.decode("utf-8", errors="replace")
    if media == "application/json" or media.endswith("+json"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            value = None
        else:
            problem = payloads.excess(value) or payloads.unstorable_within(value)
            if problem:
                raise NonRetryableError(f"{where}: the JSON answer {problem}")
            return value
    return text.replace("\x00", "\ufffd")
