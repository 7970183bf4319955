"""Assertions on API responses."""

from __future__ import annotations

from typing import Any


def problem(response: Any, status: int) -> dict[str, Any]:
    """The response is an application/problem+json of this status; its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status and body["type"] and body["title"]
    return body


def fields(body: dict[str, Any]) -> list[str]:
    """The fields a problem names."""
    return [error["field"] for error in body.get("errors", [])]
