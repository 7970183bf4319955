"""The life module over HTTP: a subject's daily wellness summary."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from engine.life import queries
from web.auth import current_caller, require_scopes
from web.db import read_connection

bp = Blueprint("life", __name__, url_prefix="/life")


@bp.get("/health/wellness_daily")
@require_scopes("life.read")
def wellness_daily() -> Any:
    """The caller's summary of `?day=` (today in UTC by default); with admin.life, that of
    any `?subject=`. A day with no entries yet answers a summary of zero entries."""
    raw_day = request.args.get("day")
    day = queries.parse_day(raw_day) if raw_day else queries.today()
    subject = queries.subject_for(current_caller(), request.args.get("subject"))
    with read_connection() as connection:
        summary = queries.daily_summary(connection, subject, day)
    return queries.summary_json(summary)
