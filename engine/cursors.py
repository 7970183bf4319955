"""Opaque page cursors: the sort key of a page's last item, as a JSON array in URL-safe
base64. A cursor that does not decode to an array of the expected length is refused (422
naming `cursor`)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from engine.errors import InvalidInput


def encode(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode(cursor: str, length: int) -> list[Any]:
    """The key `encode` was given, checked to have `length` parts."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise invalid() from exc
    if not isinstance(key, list) or len(key) != length:
        raise invalid()
    return key


def invalid() -> InvalidInput:
    return InvalidInput(
        "invalid cursor", errors=[{"field": "cursor", "message": "not a cursor we issued"}]
    )
