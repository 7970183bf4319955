"""One error hierarchy for the domain; web/errors.py maps it to problem+json."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base of every domain error; `code` is stable and shown to API clients."""

    code = "engine_error"
    status = 400
    title = "Request failed"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class NotFound(EngineError):
    code, status, title = "not_found", 404, "Not found"


class InvalidInput(EngineError):
    """Input that parses but does not validate: names the field in `errors`."""

    code, status, title = "invalid_input", 422, "Invalid input"


class InvalidSpec(InvalidInput):
    code, title = "invalid_spec", "Invalid workflow spec"


class InvalidParams(InvalidInput):
    code, title = "invalid_params", "Invalid run params"


class InvalidTransition(EngineError):
    code, status, title = "invalid_transition", 409, "Invalid state transition"


class Conflict(EngineError):
    code, status, title = "conflict", 409, "Conflict"


class WorkflowPaused(Conflict):
    """A new run of a paused workflow (engine.pauses) is refused until it is resumed."""

    code, title = "workflow_paused", "Workflow paused"


class ScheduleTokenRevoked(Conflict):
    """Only its owner may resume a schedule whose token was revoked (engine.schedules.tokens)."""

    code, title = "schedule_token_revoked", "Schedule's token revoked"


class PermissionDenied(EngineError):
    code, status, title = "permission_denied", 403, "Forbidden"


class ConfigError(EngineError):
    """The configuration cannot work; raised at start-up, naming the settings."""

    code, status, title = "config_error", 500, "Configuration error"


class DatabaseOperationError(EngineError):
    """A backup, restore, check or analyze of the database failed (engine.backup)."""

    code, status, title = "database_operation_failed", 500, "Database operation failed"


class TransientError(EngineError):
    """A failure worth retrying (database or broker briefly away)."""

    code, status, title = "transient", 503, "Service unavailable"


class ActionError(Exception):
    """Raised by an action; `retryable=False` skips the remaining attempts. `retry_after_s`
    asks the next attempt to wait at least that long (a server's Retry-After), within the
    step's max_backoff_s."""

    retryable = True

    def __init__(self, *args: object, retry_after_s: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after_s = retry_after_s


class NonRetryableError(ActionError):
    retryable = False


class StepTimeout(ActionError):
    """The attempt ran past its time limit."""
