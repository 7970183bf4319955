"""Running the `engine` command in-process, with a stack's environment."""

from __future__ import annotations

from collections.abc import Mapping

from click.testing import CliRunner, Result

from cli import context
from cli.main import main


def run_engine(env: Mapping[str, str | None], *args: str, stdin: str | None = None) -> Result:
    """`engine ARGS` with exactly this environment (settings are cached per process, so the
    cache is cleared around the call), reading `stdin` if given."""
    context.settings.cache_clear()
    try:
        return CliRunner().invoke(main, list(args), env=dict(env), input=stdin)
    finally:
        context.settings.cache_clear()


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def failed(result: Result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    return result.output
