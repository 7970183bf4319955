"""Step attempts: run the action of a claimed attempt (engine.claims), its inputs rendered
(the secrets they read, engine.secret_store) and its failure kept as data in the Result.
A step whose `when` is falsy is not run: its result says it is skipped.
It runs between transactions and touches no table itself (an action may, through the
sessions it is handed); engine.outcomes records the result.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from engine import actions, metrics, secret_store, templating
from engine.actions import ActionContext
from engine.attempts import Claim, Result
from engine.config import Settings
from engine.errors import InvalidInput, StepTimeout


def attempt(
    claim: Claim,
    timeout_errors: tuple[type[BaseException], ...] = (),
    sessions: sessionmaker[Session] | None = None,
    settings: Settings | None = None,
) -> Result:
    """Render the inputs and run the action, handing it `sessions`, the step's time limit
    and `settings` (see ActionContext); first, a step with a `when` that is falsy is not
    run: the result says it is skipped. Never raises: the result carries the error."""
    started = time.perf_counter()
    result = Result()
    try:
        context = {"params": claim.params, "steps": claim.upstream, "run": claim.run}
        if claim.spec.when is not None and not condition_holds(claim.spec.when, context):
            result.skipped = True
            result.duration_s = time.perf_counter() - started
            return result
        if claim.inputs_override is not None:
            # A replay's inputs, stored as given: `[SECRET:name]` in them is the secret's value.
            result.inputs = claim.inputs_override
            inputs, result.secrets = secret_store.resolve(
                settings or Settings(), claim.inputs_override, claim.spec.secrets
            )
        elif claim.spec.secrets:
            inputs = _render_with_secrets(claim, context, result, settings)
        else:
            inputs = result.inputs = templating.render(claim.spec.template, context)
        action = actions.get(claim.spec.action)
        if action is None:
            raise InvalidInput(
                f"unknown action {claim.spec.action!r}: no module this worker imported "
                "registers it (ENGINE_ACTION_MODULES, the engine.actions entry points)"
            )
        action.check_inputs(inputs)
        result.output = action.function(
            inputs,
            ActionContext(
                claim.run_id,
                claim.step_id,
                claim.attempt,
                claim.params,
                claim.upstream,
                sessions,
                claim.spec.timeout_s,
                settings,
                claim.run,
            ),
        )
        if result.secrets:
            result.output = secret_store.mask(result.output, result.secrets)
    except timeout_errors as exc:
        result.error = StepTimeout(
            f"step {claim.step_id!r} ran past its time limit of {claim.spec.timeout_s:g} s"
        )
        result.error.__cause__ = exc
    except Exception as exc:  # the action's failure is data: it is recorded, not lost
        result.error = exc
    result.duration_s = time.perf_counter() - started
    metrics.step_duration_seconds.labels(action=claim.spec.action).observe(result.duration_s)
    return result


def condition_holds(when: str, context: dict[str, Any]) -> bool:
    """Whether a step's `when` is truthy in `context` (params, the needed steps' outputs, the
    run). One that fails to evaluate is InvalidInput naming `when`: it would fail the same
    way again."""
    try:
        return bool(templating.evaluate(when, context))
    except InvalidInput as exc:
        raise InvalidInput(
            f"when: {exc.detail}", errors=[{"field": "when", "message": exc.detail}]
        ) from exc


def _render_with_secrets(
    claim: Claim, context: dict[str, Any], result: Result, settings: Settings | None
) -> Any:
    """The inputs of a step whose templates read secrets, for its action; `result` keeps
    them as stored, each secret rendered as its placeholder (engine.secret_store). The
    placeholders go first, so a step failing for a missing secret still shows its inputs."""
    names = claim.spec.secrets
    shown = {**context, "secrets": secret_store.placeholders(names)}
    result.inputs = templating.render(claim.spec.template, shown)
    result.secrets = secret_store.read(settings or Settings(), names)
    return templating.render(claim.spec.template, {**context, "secrets": result.secrets})
