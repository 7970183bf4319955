"""What a step's templates, its `when` and an action's expressions see of the run itself:
`run.id`, `run.workflow`, `run.version`, `run.created_at` and `run.scheduled_for` (the fire
time a schedule submitted it for; null otherwise), the times as the API shows them (ISO 8601
in UTC, with a Z). The claim of a step reads them with the run's other facts, in the
statement it already runs (engine.claims, engine.planning)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from engine.models import timestamp

# The names every step's context holds (engine.execution), and what each expression may read
# besides them: `secrets` in a step's `with` (engine.secret_store), `inputs` in an action's
# expression (as transform's).
ROOTS = frozenset({"params", "steps", "run"})
WITH_ROOTS = ROOTS | {"secrets"}
EXPRESSION_ROOTS = ROOTS | {"inputs"}


def run_facts(
    run_id: str,
    workflow: str,
    version: int,
    created_at: datetime | None,
    scheduled_for: datetime | None,
) -> dict[str, Any]:
    """The `run` of a step's context."""
    return {
        "id": run_id,
        "workflow": workflow,
        "version": version,
        "created_at": timestamp(created_at),
        "scheduled_for": timestamp(scheduled_for),
    }
