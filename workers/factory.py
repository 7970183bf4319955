"""Build a Celery app from settings: the worker's own, or a sender for the API and CLI."""

from __future__ import annotations

from celery import Celery

import celeryconfig
from engine.config import Settings


def make_celery(settings: Settings) -> Celery:
    app = Celery("engine", set_as_current=False)
    app.config_from_object(celeryconfig.build(settings))
    return app
