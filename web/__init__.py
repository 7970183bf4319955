"""The Flask app factory: `gunicorn 'web:create_app()'`."""

from __future__ import annotations

import logging

from flask import Flask
from flask_cors import CORS
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from engine import actions, logs
from engine import workflows as workflow_specs
from engine.config import Settings
from web import (
    admin,
    auth,
    db,
    errors,
    events,
    health,
    openapi,
    rate_limits,
    runs,
    schedules,
    schemas,
    status,
    telemetry,
)
from web import life as life_views
from web import tokens as token_views
from web import workflows as workflow_views
from workers.factory import make_celery

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    logs.configure(settings, "api")
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    actions.load_plugins(settings.action_modules)
    errors.register(app)
    app.before_request(schemas.refuse_unstorable_in_url)
    app.extensions["engine.celery"] = make_celery(settings)
    db.init_app(app)
    auth.init_app(app)
    rate_limits.init_app(app)
    events.init_app(app)
    for blueprint in (health.bp, runs.bp, workflow_views.bp, openapi.bp, admin.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(token_views.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(life_views.bp)
    app.register_blueprint(schedules.bp)
    telemetry.init_app(app)
    _allow_origins(app, settings)
    _register_builtin_workflows(app, settings)
    return app


def _allow_origins(app: Flask, settings: Settings) -> None:
    """CORS for the origins in ALLOWED_ORIGINS only. Credentials are allowed for listed
    origins; a `*` in the list allows every origin, and then never credentials."""
    if not settings.allowed_origins:
        return
    wildcard = "*" in settings.allowed_origins
    CORS(
        app,
        origins="*" if wildcard else list(settings.allowed_origins),
        send_wildcard=wildcard,
        supports_credentials=not wildcard,
        expose_headers=[
            "Location",
            "Retry-After",
            "X-Request-ID",
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        ],
        max_age=600,
    )


def _register_builtin_workflows(app: Flask, settings: Settings) -> None:
    """Specs under workflows/ are registered at start; a second process racing is fine."""
    try:
        with app.extensions["engine.sessions"].begin() as session:
            added = workflow_specs.register_directory(session, settings)
        if added:
            log.info("registered built-in workflows: %s", ", ".join(added))
    except IntegrityError:
        log.info("built-in workflows registered by another process")
    except (OperationalError, ProgrammingError) as exc:
        log.error(
            "built-in workflows not registered (is the database migrated? "
            "run `engine db upgrade`): %s",
            exc.orig,
        )
