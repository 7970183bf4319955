"""The actions registry: what a plugin registers is checked as it registers."""

from __future__ import annotations

import pytest

from engine import actions
from engine.errors import ConfigError


def test_an_action_whose_schema_is_not_json_schema_is_refused_as_it_registers() -> None:
    """Else every workflow using it would fail when registered (the schema is checked
    against constant inputs) and every attempt of its steps at run time."""
    with pytest.raises(ConfigError, match="'unit.bad_schema': its schema is not a valid JSON"):

        @actions.register("unit.bad_schema", schema={"type": "objekt"})
        def bad(inputs: object, context: actions.ActionContext) -> None:
            return None

    assert actions.get("unit.bad_schema") is None


def test_a_second_action_under_a_name_already_registered_is_refused() -> None:
    """Else whichever plugin was imported last would run, by the entry points' order."""
    with pytest.raises(ConfigError, match="'echo' is registered twice: by engine.actions"):

        @actions.register("echo")
        def echo(inputs: object, context: actions.ActionContext) -> None:
            return None

    builtin = actions.get("echo")
    assert builtin is not None and builtin.function.__module__ == "engine.actions.builtin"
