"""Views send work through the workers' dispatcher, after their commit."""

from __future__ import annotations

from flask import current_app

from engine.work import Work
from workers import dispatch


def send(work: Work) -> None:
    dispatch.send(work, current_app.extensions["engine.celery"])
