"""The `engine` CLI against the real database and broker: tokens, workflows, runs, db."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from click.testing import Result

from engine import migrations, payloads
from tests.conftest import spec
from tests.support import services
from tests.support.cli import failed, ok, run_engine
from tests.support.stack import Stack

DIAMOND = [
    {"id": "a", "action": "noop"},
    {"id": "b", "action": "noop", "needs": ["a"]},
    {"id": "c", "action": "noop", "needs": ["a"]},
    {"id": "d", "action": "echo", "needs": ["b", "c"], "with": {"n": "{{ params.n }}"}},
]
PARAMS = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}


def write_spec(directory: Path, body: dict[str, Any]) -> Path:
    path = directory / f"{body['name']}-{body['version']}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_minted_token_is_accepted_by_the_api(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, [{"id": "only", "action": "noop"}]))
    out = ok(
        engine_cli(
            stack,
            "token",
            "mint",
            "admin@example.com",
            "--scopes",
            "admin.*,life.read,runs.write",
            "--ttl",
            "1h",
        )
    )
    token = out.strip()
    assert token.count(".") == 2 and "\n" not in token
    response = stack.client().post(
        "/runs", json={"workflow": unique}, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["created_by"] == "admin@example.com"
    assert stack.wait_finished(response.get_json()["id"])["status"] == "succeeded"

    assert "scopes" in failed(engine_cli(stack, "token", "mint", "x", "--scopes", "Runs!"))
    for scopes in ("", " , ", "nonexistent.scope", "runs.read,runs.delete", "nothing.*"):
        assert "scopes" in failed(engine_cli(stack, "token", "mint", "x", "--scopes", scopes))
    for scopes in ("admin.dlq.*", "life.read", "runs.*,workflows.write"):
        ok(engine_cli(stack, "token", "mint", "x", "--scopes", scopes))
    assert "ttl" in failed(engine_cli(stack, "token", "mint", "x", "--ttl", "forever"))


def test_a_minted_token_lives_at_most_token_max_ttl_s(database: Stack) -> None:
    # The same cap as POST /admin/tokens: 30 days unless TOKEN_MAX_TTL_S says otherwise.
    result = engine_cli(database, "token", "mint", "x", "--ttl", "400d")
    assert failed(result).strip().splitlines() == [
        "Error: ttl is too long (ttl: at most 2,592,000 seconds)"
    ]
    ok(engine_cli(database, "token", "mint", "x", "--ttl", "30d"))
    capped = engine_cli(database, "token", "mint", "x", "--ttl", "2h", TOKEN_MAX_TTL_S="3600")
    assert "at most 3,600 seconds" in failed(capped)
    token = ok(engine_cli(database, "token", "mint", "x", "--ttl", "1h", TOKEN_MAX_TTL_S="3600"))
    assert token.count(".") == 2


def test_workflows_are_validated_registered_and_listed(
    database: Stack, unique: str, tmp_path: Path
) -> None:
    good = write_spec(tmp_path, spec(unique, DIAMOND, params=PARAMS))
    out = ok(engine_cli(database, "workflows", "validate", str(good)))
    assert f"{unique}@1 is valid" in out and "[['a'], ['b', 'c'], ['d']]" in out

    broken_steps = [{"id": "a", "action": "noop"}, {"id": "b", "action": "noop", "needs": ["z"]}]
    broken = write_spec(tmp_path, spec(f"{unique}_broken", broken_steps))
    result = engine_cli(database, "workflows", "validate", str(broken))
    assert "steps[1].needs" in failed(result) and "'z'" in result.stderr
    not_yaml = tmp_path / "not.yaml"
    not_yaml.write_text("steps: [")
    failed(engine_cli(database, "workflows", "validate", str(not_yaml)))
    for command in ("validate", "register"):  # a usage error, not a traceback
        missing = engine_cli(database, "workflows", command, str(tmp_path / "missing.yaml"))
        assert missing.exit_code == 2 and "cannot read" in missing.output, missing.output

    assert f"registered {unique}@1" in ok(engine_cli(database, "workflows", "register", str(good)))
    assert f"already registered {unique}@1" in ok(
        engine_cli(database, "workflows", "register", str(good))
    )
    (tmp_path / "other").mkdir()
    conflicting = write_spec(tmp_path / "other", spec(unique, DIAMOND[:1]))
    assert "immutable" in failed(engine_cli(database, "workflows", "register", str(conflicting)))
    failed(engine_cli(database, "workflows", "register", str(broken)))

    listed = ok(engine_cli(database, "workflows", "ls"))
    assert f"{unique}@1  4 steps" in listed
    assert f"{unique}_broken" not in listed
    response = database.client().get(
        f"/workflows/{unique}", headers=database.headers(scopes="workflows.read")
    )
    assert response.status_code == 200 and response.get_json()["spec"]["steps"] == DIAMOND


def test_a_run_submitted_from_the_cli_is_executed_and_can_be_listed_and_shown(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, DIAMOND, params=PARAMS))
    run_id = ok(engine_cli(stack, "runs", "submit", unique, "--params", '{"n": 5}')).strip()
    run = stack.wait_finished(run_id)
    assert run["status"] == "succeeded", run
    assert run["created_by"].startswith("cli:")
    assert {s["step_id"]: s["output"] for s in run["steps"]}["d"] == {"n": 5}

    listed = ok(engine_cli(stack, "runs", "ls", "--workflow", unique))
    assert run_id in listed and "succeeded" in listed
    assert run_id not in ok(
        engine_cli(stack, "runs", "ls", "--workflow", unique, "--status", "failed")
    )
    assert run_id in ok(engine_cli(stack, "runs", "ls", "--since", "2000-01-01T00:00:00Z"))
    assert run_id in ok(engine_cli(stack, "runs", "ls", "--by", run["created_by"]))
    assert run_id not in ok(engine_cli(stack, "runs", "ls", "--by", "nobody@example.com"))
    assert run_id not in ok(
        engine_cli(stack, "runs", "ls", "--workflow", unique, "--until", "2000-01-01")
    )
    assert "until" in failed(
        engine_cli(stack, "runs", "ls", "--since", "2001-01-01", "--until", "2000-01-01")
    )
    shown = json.loads(ok(engine_cli(stack, "runs", "show", run_id)))
    assert shown["id"] == run_id and [s["step_id"] for s in shown["steps"]] == list("abcd")

    assert "params.n" in failed(engine_cli(stack, "runs", "submit", unique, "--params", "{}"))
    bad_json = engine_cli(stack, "runs", "submit", unique, "--params", "{n")
    assert bad_json.exit_code == 2 and "--params" in bad_json.output
    too_high = engine_cli(stack, "runs", "submit", unique, "--version", str(2**31))
    assert too_high.exit_code == 2 and "--version" in too_high.output
    # Nested deeper than the API takes (engine.payloads), or than the parser can descend.
    levels = payloads.MAX_DEPTH
    beyond_the_parser = "[" * 5000 + "]" * 5000
    for deep in (
        json.dumps({"n": "X"}).replace('"X"', "[" * levels + "]" * levels),
        beyond_the_parser,
    ):
        refused = engine_cli(stack, "runs", "submit", unique, "--params", deep)
        assert refused.exit_code == 2 and f"nested more than {levels} levels" in refused.output
    assert "does not exist" in failed(engine_cli(stack, "runs", "show", "no-such-run"))


def test_the_installed_command_loads_plugin_actions_and_its_run_executes(
    stack: Stack, unique: str, tmp_path: Path
) -> None:
    """In a fresh process only ENGINE_ACTION_MODULES registers `record`: the CLI must load it."""
    path = write_spec(tmp_path, spec(unique, [{"id": "mark", "action": "record"}]))

    def engine(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=services.ROOT,
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert f"registered {unique}@1" in engine("workflows", "register", str(path))
    run_id = engine("runs", "submit", unique).strip()
    assert stack.wait_finished(run_id)["status"] == "succeeded"
    assert stack.executions(run_id) == [(run_id, "mark", 1)]


def test_a_running_run_is_cancelled_from_the_cli(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, [{"id": "nap", "action": "record", "with": {"sleep": 60}}]))
    run_id = stack.submit(unique)
    pid_file = Path(stack.settings.var_dir) / "pids" / f"{run_id}.nap.1"
    services.wait_for(pid_file.exists, 30, message="the sleeping step to start")

    assert f"cancelled {run_id}" in ok(engine_cli(stack, "runs", "cancel", run_id))
    run = stack.run(run_id)
    assert run["status"] == "cancelled"
    assert [s["status"] for s in run["steps"]] == ["cancelled"]
    # The revocation reached the stack's worker, which stopped the sleeping attempt.
    pid = int(pid_file.read_text())
    services.wait_for(lambda: not running(pid), 20, message="the sleeping attempt to stop")
    assert "cannot be cancelled" in failed(engine_cli(stack, "runs", "cancel", run_id))


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except FileNotFoundError:
        return False


def test_the_database_is_upgraded_and_its_revision_shown(
    database: Stack, fresh_database: str
) -> None:
    head = migrations.head()
    if database.backend == "sqlite":
        # No file yet: said so, and none is created by asking.
        missing = refused(engine_cli(database, "db", "current", DATABASE_URL=fresh_database))
        assert "does not exist" in missing and "engine db upgrade" in missing
        assert not Path(fresh_database.removeprefix("sqlite:///")).exists()
    else:
        before = ok(engine_cli(database, "db", "current", DATABASE_URL=fresh_database))
        assert "current: None" in before and f"head:    {head}" in before
    assert f"database at {head}" in ok(
        engine_cli(database, "db", "upgrade", DATABASE_URL=fresh_database)
    )
    after = ok(engine_cli(database, "db", "current", DATABASE_URL=fresh_database))
    assert f"current: {head}" in after and f"head:    {head}" in after
    # Upgrading an up-to-date database is a no-op.
    ok(engine_cli(database, "db", "upgrade", DATABASE_URL=fresh_database))
    assert migrations.current(fresh_database) == head


def test_the_runbooks_downgrade_by_one_works_and_history_lists_the_migrations(
    database: Stack, fresh_database: str, tmp_path: Path
) -> None:
    ok(engine_cli(database, "db", "upgrade", DATABASE_URL=fresh_database))
    revisions = history_revisions()
    assert revisions[0] == migrations.head() and len(revisions) >= 2
    assert f"database at {revisions[1]}" in ok(
        engine_cli(database, "db", "downgrade", "-1", DATABASE_URL=fresh_database)
    )
    assert migrations.current(fresh_database) == revisions[1]
    assert "Revert migrations" in ok(engine_cli(database, "db", "downgrade", "--help"))

    # `db history` reads the code's migrations from any directory, as `db upgrade` does.
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "history"],
        cwd=tmp_path,
        env={**database.env, "DATABASE_URL": fresh_database},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{revisions[0]} (head)" in done.stdout and "<base> ->" in done.stdout


def history_revisions() -> list[str]:
    out = ok(run_engine({}, "db", "history"))
    return [line.split(" -> ", 1)[1].split()[0].rstrip(",") for line in out.splitlines()]


def test_bad_input_and_bad_settings_end_in_one_line_and_a_non_zero_exit(
    database: Stack, fresh_database: str, tmp_path: Path
) -> None:
    bad_revisions = {("upgrade", "nosuchrev"), ("downgrade", "9999"), ("upgrade", "+1")}
    for command, revision in bad_revisions:
        message = refused(engine_cli(database, "db", command, revision))
        assert "migration:" in message and revision.lstrip("+") in message, message

    if database.backend == "sqlite":
        sqlite3.connect(fresh_database.removeprefix("sqlite:///")).close()  # empty, exists
    for words in (("runs", "ls"), ("dlq", "ls"), ("workflows", "ls")):
        message = refused(engine_cli(database, *words, DATABASE_URL=fresh_database))
        assert "not migrated" in message and "engine db upgrade" in message, message

    no_secret = {"ENGINE_ENV": "production", "JWT_SECRET": ""}
    assert "JWT_SECRET" in refused(engine_cli(database, "db", "current", **no_secret))
    assert "RETRY_MAX_ATTEMPTS" in refused(
        engine_cli(database, "runs", "ls", RETRY_MAX_ATTEMPTS="abc")
    )
    assert "DATABASE_URL" in refused(engine_cli(database, "db", "check", DATABASE_URL="bogus://x"))
    message = refused(
        engine_cli(database, "workflows", "validate", "-", ENGINE_ACTION_MODULES="no_such.actions")
    )
    assert "ENGINE_ACTION_MODULES names 'no_such.actions'" in message, message
    nowhere = tmp_path / "no" / "such" / "directory" / "engine.db"
    assert "does not exist" in refused(
        engine_cli(database, "db", "current", DATABASE_URL=f"sqlite:///{nowhere}")
    )
    assert not nowhere.parent.exists()


def refused(result: Result) -> str:
    """A refusal as an operator should see it: exit 1, one `Error:` line, no traceback."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines and lines[-1].startswith("Error: "), result.output
    return lines[-1]


def engine_cli(stack: Stack, *args: str, **env: str) -> Result:
    """Run `engine ARGS` with the stack's environment (its database, Redis prefix, secret)."""
    return run_engine({**stack.env, **env}, *args)


def test_dlq_replay_says_what_it_needs(database: Stack) -> None:
    def usage_error(*args: str) -> str:
        result = engine_cli(database, "dlq", "replay", *args)
        assert result.exit_code == 2, result.output
        return result.output.strip().splitlines()[-1]

    assert usage_error() == "Error: give a LETTER_ID or --all"
    assert usage_error("some-letter", "--all") == "Error: give a LETTER_ID or --all, not both"
    for args in (
        ("some-letter",),
        ("some-letter", "--reason", " "),
        ("--all", "--confirm-count", "3"),
    ):
        assert "--reason" in usage_error(*args)
    help_text = " ".join(ok(engine_cli(database, "dlq", "replay", "--help")).split())
    assert "Required, except for a --dry-run" in help_text


FLAKY = [
    {"id": "work", "action": "fail", "with": {"until_attempt": 2}, "retry": {"max_attempts": 1}}
]


def test_the_listings_give_the_apis_json_for_scripts(stack: Stack, unique: str) -> None:
    stack.register(spec(unique, FLAKY))
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "failed"
    admin = stack.headers("ops@example.com", "admin.*,runs.read,workflows.read")

    def api(path: str, **query: str) -> Any:
        response = stack.client().get(path, query_string=query, headers=admin)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def cli(*args: str) -> Any:
        return json.loads(ok(engine_cli(stack, *args, "--json")))

    assert cli("runs", "ls", "--workflow", unique) == api("/runs", workflow=unique)
    assert [run["id"] for run in cli("runs", "ls", "--workflow", unique)["items"]] == [run_id]
    letters = cli("dlq", "ls", "--run", run_id)
    assert letters == api("/admin/dlq", run_id=run_id)
    assert [letter["run_id"] for letter in letters["items"]] == [run_id]
    assert letters["groups"][0]["count"] == 1
    listed = cli("workflows", "ls")
    assert listed == api("/workflows")
    assert unique in {workflow["name"] for workflow in listed["items"]}


def test_with_the_broker_down_a_submit_and_a_replay_are_committed_with_one_warning(
    stack: Stack, unique: str
) -> None:
    stack.register(spec(unique, FLAKY))
    failed_run = stack.submit(unique)
    assert stack.wait_finished(failed_run)["status"] == "failed"
    (letter,) = stack.dead_letters(failed_run)
    unreachable = {**stack.env, "REDIS_URL": f"redis://127.0.0.1:{services.free_port()}/0"}

    def engine(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=services.ROOT,
            env=unreachable,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for args in (("runs", "submit", unique), ("dlq", "replay", letter.id, "--reason", "fixed")):
        done = engine(*args)
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip().splitlines() == [
            "warning: committed, but the broker is unreachable; the reconciler will send the "
            "work when it is back (`engine --debug ...` shows why)"
        ], done.stderr
    runs_queued = json.loads(ok(engine_cli(stack, "runs", "ls", "--workflow", unique, "--json")))
    statuses = {run["id"]: run["status"] for run in runs_queued["items"]}
    assert statuses[failed_run] != "failed" and len(statuses) == 2, statuses
    assert [item["status"] for item in stack_letters(stack, failed_run)] == ["replayed"]
    # Why is there for whoever asks: the dispatcher's own line, naming the error.
    debug = engine("--debug", "runs", "submit", unique)
    assert debug.returncode == 0, debug.stderr
    assert "WARNING workers.dispatch: the broker is unreachable (" in debug.stderr, debug.stderr


def stack_letters(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return json.loads(ok(engine_cli(stack, "dlq", "ls", "--run", run_id, "--json")))["items"]


def test_a_replay_from_the_cli_in_the_apis_environment_counts_in_the_apis_metrics(
    stack: Stack, unique: str, tmp_path: Path
) -> None:
    """As `docker compose exec api engine ...` runs it: with the API's
    PROMETHEUS_MULTIPROC_DIR, the CLI's counts land where the API's /metrics reads them."""
    stack.register(spec(unique, FLAKY))
    run_id = stack.submit(unique)
    assert stack.wait_finished(run_id)["status"] == "failed"
    (letter,) = stack.dead_letters(run_id)
    env = {**stack.env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    port, metrics_port = services.free_port(), services.free_port()
    api = services.start_gunicorn(
        env, tmp_path / "gunicorn.log", port, "-w", "1", metrics_port=metrics_port
    )
    try:

        def replayed() -> float | None:
            try:
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return None
            found = re.search(r'^dlq_events_total\{event="replayed"\} (\S+)$', text, re.M)
            return float(found[1]) if found else None

        services.wait_for(lambda: replayed() is not None, 60, message="the API's /metrics")
        before = replayed()
        done = subprocess.run(
            [sys.executable, "-m", "cli.main", "dlq", "replay", letter.id, "--reason", "fixed"],
            cwd=services.ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert replayed() == (before or 0) + 1
        assert stack.wait_finished(run_id)["status"] == "succeeded"
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(20)
