"""OPERATIONS.md works: every block is labelled, every `engine` command and option it names
exists, every block is valid bash, and every `safe` block runs to exit code 0 against a
real platform (gunicorn API, prefork worker with its health server, Flower, Redis, SQLite).
Every curl of it and of README.md that sends the API a body declares it JSON.
Blocks that need Docker, Prometheus, Grafana or the `make run` ports are skipped, saying so."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import jwt
import pytest
import yaml
from jsonschema import Draft202012Validator
from sqlalchemy import select

from cli.main import main as engine_main
from engine.models import DeadLetter
from tests.conftest import spec
from tests.support import services
from tests.support.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = ROOT / "OPERATIONS.md"
WORKFLOWS = ROOT / "workflows"
LABELS = {"safe", "changes", "destructive"}
REQUIREMENTS = {
    "docker": "needs the docker compose deployment",
    "prometheus": "needs Prometheus on :9090 (docker compose)",
    "grafana": "needs Grafana on :3001 (docker compose)",
    "make-run": "needs the `make run` stack on its default ports (see tests/test_run_script.py)",
}
BLOCK = re.compile(r"^```bash([^\n]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{2,3} (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Block:
    label: str
    requires: tuple[str, ...]
    code: str
    line: int
    section: str

    @property
    def name(self) -> str:
        words = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"L{self.line}-{words}"


def blocks() -> list[Block]:
    text = RUNBOOK.read_text()
    found = []
    for match in BLOCK.finditer(text):
        words = match[1].split()
        requires = tuple(
            need for word in words if word.startswith("requires=") for need in word[9:].split(",")
        )
        label = next((word for word in words if word in LABELS), "")
        headings = HEADING.findall(text[: match.start()])
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(label, requires, match[2], line, headings[-1] if headings else ""))
    return found


BLOCKS = blocks()
SAFE = [block for block in BLOCKS if block.label == "safe"]


def test_every_command_block_says_how_safe_it_is_and_what_it_needs() -> None:
    assert len(BLOCKS) > 30 and len(SAFE) > 20
    for block in BLOCKS:
        assert block.label in LABELS, f"line {block.line}: label a bash block with {LABELS}"
        assert set(block.requires) <= set(REQUIREMENTS), f"line {block.line}: {block.requires}"
    labels = {block.label for block in BLOCKS}
    assert labels == LABELS


def test_every_block_is_valid_bash() -> None:
    for block in BLOCKS:
        result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        assert result.returncode == 0, f"line {block.line}: {result.stderr}"


# curl's options that send a body; without a Content-Type they send a form's, which the API
# answers with a 415 (an API's URL is $API or localhost:8000 in the docs).
BODY_OPTIONS = {"-d", "--data", "--data-raw", "--data-binary", "--data-urlencode", "-F", "--form"}
API_URL = re.compile(r"^(\$API|\$\{API\}|(https?://)?localhost:8000)(/|$)")
# A bash block, indented as in a list item too (README's).
ANY_BLOCK = re.compile(r"^[ \t]*```bash[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


def api_curls_with_a_body(text: str) -> Iterator[tuple[str, list[str]]]:
    """(command, words) of each curl to the API that sends a body, in a document's blocks."""
    for match in ANY_BLOCK.finditer(text):
        for line in match[1].replace("\\\n", " ").splitlines():
            if "curl " not in line:
                continue
            words = shlex.split(line[line.index("curl ") :], comments=True)
            if BODY_OPTIONS & set(words) and any(API_URL.match(word) for word in words):
                yield line.strip(), words


def test_every_documented_curl_that_sends_a_body_declares_it_json() -> None:
    seen = 0
    for document in (RUNBOOK, ROOT / "README.md"):
        for line, words in api_curls_with_a_body(document.read_text()):
            seen += 1
            declared = [
                value.lower()
                for option, value in zip(words, words[1:], strict=False)
                if option == "-H"
            ]
            assert "content-type: application/json" in declared, f"{document.name}: {line}"
    assert seen >= 4


def test_every_documented_submission_of_a_built_in_workflow_has_params_it_accepts() -> None:
    schemas = {
        document["name"]: document.get("params", {})
        for document in (yaml.safe_load(path.read_text()) for path in WORKFLOWS.glob("*.yaml"))
    }
    seen = 0
    for document in (RUNBOOK, ROOT / "README.md"):
        for line, words in api_curls_with_a_body(document.read_text()):
            if not any(re.search(r"/runs/?$", word) for word in words):
                continue
            body = json.loads(words[words.index("-d") + 1])
            if body["workflow"] in schemas:
                seen += 1
                problems = [
                    error.message
                    for error in Draft202012Validator(schemas[body["workflow"]]).iter_errors(
                        body.get("params", {})
                    )
                ]
                assert problems == [], f"{document.name}: {line}"
    assert seen >= 2


def engine_invocations(code: str) -> Iterator[list[str]]:
    """The arguments of every `engine ...` command in a block (continuations joined)."""
    for line in code.replace("\\\n", " ").splitlines():
        for match in re.finditer(
            r"(?:^|[;&|(]|\$\()\s*(?:[A-Z_]+=\S+\s+)*engine\s+([^;&|)]*)", line
        ):
            words = shlex.split(match[1].split("#", 1)[0], posix=True)
            yield words


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = engine_main
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def unknown_options(command: click.Command, words: list[str]) -> list[str]:
    """Words click would refuse as an option it does not know (`-1` among them), skipping
    option values; none when the command takes unknown options as arguments."""
    if command.context_settings.get("ignore_unknown_options"):
        return []
    takes_value = {
        name: not (isinstance(param, click.Option) and (param.is_flag or param.count))
        for param in command.params
        for name in param.opts
    }
    unknown, words = [], list(words)
    while words:
        word = words.pop(0)
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1:
            name = word.split("=")[0]
            if name not in takes_value:
                unknown.append(word)
            elif takes_value[name] and "=" not in word and words:
                words.pop(0)
    return unknown


def test_every_engine_command_and_option_the_runbook_names_exists() -> None:
    seen = 0
    for block in BLOCKS:
        for words in engine_invocations(block.code):
            command, rest = resolve(words)
            assert not isinstance(command, click.Group), f"line {block.line}: engine {words}"
            unknown = unknown_options(command, rest)
            assert not unknown, f"line {block.line}: click refuses {unknown} in engine {words}"
            seen += 1
    assert seen > 20


def test_an_argument_that_looks_like_an_option_is_caught() -> None:
    @click.command()
    @click.argument("revision")
    @click.option("--tag", default=None)
    @click.option("--sql", is_flag=True)
    def plain(revision: str, tag: str | None, sql: bool) -> None: ...

    assert unknown_options(plain, ["-1"]) == ["-1"]
    assert unknown_options(plain, ["--tag", "-x", "--sql", "base"]) == []
    assert unknown_options(plain, ["--other"]) == ["--other"]
    db = engine_main.commands["db"]
    assert isinstance(db, click.Group)
    assert unknown_options(db.commands["downgrade"], ["-1"]) == []


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def answered() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{url}: process exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    services.wait_for(answered, 60, 0.1, url)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A running platform like `make run`'s, and the variables the runbook uses."""
    directory = tmp_path_factory.mktemp("runbook")
    log_dir = directory / "log"
    log_dir.mkdir()
    stack = Stack("sqlite", directory)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # What `make run` leaves in its state directory.
        (directory / "jwt_secret").write_text(stack.settings.jwt_secret + "\n")
        (directory / "webhook_secret").write_text(stack.settings.webhook_secret + "\n")
        flower_auth = f"ops:{uuid.uuid4().hex[:16]}"
        (directory / "flower_auth").write_text(flower_auth + "\n")
        stack.start_worker(concurrency=2)
        api_port, flower_port = services.free_port(), services.free_port()
        metrics_port = services.free_port()
        # The API logs to files, as under `make run`; the worker keeps stdout (its readiness).
        env = {**stack.env, "FLOWER_BASIC_AUTH": flower_auth, "LOG_DIR": str(log_dir)}
        processes.append(
            services.start_gunicorn(
                env, log_dir / "gunicorn.out", api_port, "-w", "1", metrics_port=metrics_port
            )
        )
        celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        processes.append(
            _start(
                [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"],
                env,
                log_dir / "flower.out",
            )
        )
        api, flower = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{flower_port}"
        _wait_http(f"{api}/health", processes[0], log_dir / "gunicorn.out")
        _wait_http(f"{flower}/healthcheck", processes[1], log_dir / "flower.out")
        worker = f"http://127.0.0.1:{stack.env['WORKER_HEALTH_PORT']}"
        services.wait_for(lambda: _ok(f"{worker}/health"), 30, 0.1, "worker health")

        # A run that failed into the dead-letter queue, submitted and watched through the
        # API (so its log lines exist), gives the ids the runbook uses.
        token = stack.token("ops@example.com", "admin.*,runs.*,workflows.*,schedules.*,life.read")
        name = f"wf_{uuid.uuid4().hex[:8]}"
        retry = {"max_attempts": 1, "backoff_s": 0.05, "max_backoff_s": 0.1}
        steps = [{"id": "boom", "action": "fail", "retry": retry}]
        _call(api, "POST", "/workflows", token, spec(name, steps))
        run_id = _call(api, "POST", "/runs", token, {"workflow": name})["id"]
        services.wait_for(
            lambda: _call(api, "GET", f"/runs/{run_id}", token)["status"] == "failed",
            60,
            0.1,
            f"run {run_id} to fail",
        )
        with stack.sessions() as session:
            letter = session.scalars(select(DeadLetter).where(DeadLetter.run_id == run_id)).one()
        spare = stack.token("spare@example.com", "runs.read")
        yield {
            **env,
            "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "API": api,
            "METRICS": f"http://127.0.0.1:{metrics_port}",
            "WORKER": worker,
            "FLOWER": flower,
            "TOKEN": token,
            "OLD_TOKEN": token,
            "RUN_ID": run_id,
            "DLQ_ID": letter.id,
            "FINGERPRINT": letter.fingerprint,
            "JTI": jwt.decode(spare, options={"verify_signature": False})["jti"],
        }
    finally:
        for process in processes:
            _stop(process)
        stack.close()


def _call(api: str, method: str, path: str, token: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        api + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("block", SAFE, ids=[block.name for block in SAFE])
def test_every_safe_block_of_the_runbook_succeeds_on_a_running_platform(
    platform: dict[str, Any], block: Block
) -> None:
    missing = [need for need in block.requires if need in REQUIREMENTS]
    if missing:
        pytest.skip("; ".join(REQUIREMENTS[need] for need in missing))
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-e", "-c", block.code],
        cwd=ROOT,
        env=platform,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"OPERATIONS.md line {block.line} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


def test_the_scopes_the_runbook_lists_are_the_ones_the_platform_knows() -> None:
    from engine.auth import KNOWN_SCOPES

    section = RUNBOOK.read_text().split("## 3. Key management", 1)[1].split("### ", 1)[0]
    listed = set(re.findall(r"`([a-z]+(?:\.[a-z]+)+)`", section))
    assert listed == set(KNOWN_SCOPES)
    checked = {
        scope
        for path in (ROOT / "web").glob("*.py")
        for scope in re.findall(r'require_scopes\("([^"]+)"\)', path.read_text())
    }
    assert checked <= set(KNOWN_SCOPES), checked - set(KNOWN_SCOPES)
