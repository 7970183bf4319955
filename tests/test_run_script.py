"""End-to-end tests of scripts/run.sh, the stack that `make run` starts, and how it stops.

Each test runs the script from the repository root with its state directory
(ENGINE_VAR_DIR), database, Redis and ports of its own, so it never touches var/ or a
developer's running stack. Select them with `pytest -m runscript`.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.runscript,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_SCRIPT = REPO_ROOT / "scripts" / "run.sh"
IN_CI = os.environ.get("CI") == "true"
STARTUP_TIMEOUT_S = 120.0
SHUTDOWN_TIMEOUT_S = 60.0
# Variables of the developer's shell that would change what the script does.
INHERITED_SETTINGS = (
    "API_BIND",
    "DATABASE_URL",
    "ENGINE_ENV",
    "JWT_PREVIOUS_SECRETS",
    "JWT_SECRET",
    "LOG_DIR",
    "REDIS_URL",
    "WEBHOOK_PREVIOUS_SECRETS",
    "WEBHOOK_SECRET",
)


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine that lacks a tool; under CI a missing tool fails."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)")
    pytest.skip(reason)


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that nothing listens on (all held open while choosing)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_status(url: str, credentials: str | None = None) -> int | None:
    """The status code of a GET, or None when nothing answers."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(credentials.encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def wait_for(
    condition: Callable[[], bool],
    what: str,
    *,
    timeout: float = STARTUP_TIMEOUT_S,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll `condition` until it holds; fail early if `process` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        output = log.read_text(errors="replace")[-6000:] if log is not None else ""
        if process is not None and process.poll() is not None:
            pytest.fail(f"run.sh exited ({process.returncode}) before {what}:\n{output}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n{output}")
        time.sleep(0.2)


def process_tree(root_pid: int) -> dict[int, str]:
    """Every live descendant of root_pid (itself included), with its start time."""
    parents: dict[int, int] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z":
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        started[pid] = fields[19]
    tree = {root_pid} if root_pid in started else set()
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return {pid: started[pid] for pid in tree}


def still_running(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` that still run (same pid and start time, not a zombie)."""
    alive = {}
    for pid, started in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and fields[19] == started:
            alive[pid] = command.decode(errors="replace").strip()
    return alive


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_leftovers(process: subprocess.Popen[bytes], known: dict[int, str]) -> None:
    """After a failed test: stop the script and anything it started, by pid."""
    known = {**known, **process_tree(process.pid)}
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in still_running(known):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def script_environment(tmp_path: Path, redis_url: str) -> dict[str, str]:
    """The caller's environment with this test's state directory, database and Redis."""
    environment = {
        name: value
        for name, value in os.environ.items()
        # Flower reads any FLOWER_<option> variable, so none may leak in.
        if name not in INHERITED_SETTINGS and not name.startswith("FLOWER_")
    }
    environment.update(
        ENGINE_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'engine.db'}",
        REDIS_URL=redis_url,
    )
    return environment


@pytest.fixture
def redis_server() -> str:
    path = shutil.which("redis-server")
    require(path is not None, "redis-server is not installed (make test installs it)")
    return str(path)


@pytest.fixture
def running_redis(redis_server: str, tmp_path: Path) -> Iterator[str]:
    """A throwaway Redis on a free loopback port; yields its URL."""
    port = free_port()
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    server = subprocess.Popen(
        [redis_server, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: port_is_open(port), "the test's Redis", timeout=15)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("redis_mode", ["already-running", "started-by-the-script"])
def test_run_serves_api_and_flower_and_sigint_stops_every_process(
    redis_mode: str, redis_server: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require((REPO_ROOT / ".venv" / "bin" / "honcho").exists(), "no .venv: run make venv")
    api_port, flower_port, health_port, redis_port, metrics_port = free_ports(5)
    if redis_mode == "already-running":
        redis_url = request.getfixturevalue("running_redis")
        own_redis_port = None
    else:
        own_redis_port = redis_port
        redis_url = f"redis://127.0.0.1:{own_redis_port}/0"
    environment = script_environment(tmp_path, redis_url)
    environment.update(
        API_PORT=str(api_port),
        API_METRICS_PORT=str(metrics_port),
        FLOWER_PORT=str(flower_port),
        WORKER_HEALTH_PORT=str(health_port),
    )
    var_dir = tmp_path / "var"
    log = tmp_path / "run.log"

    with log.open("wb") as output:
        script = subprocess.Popen(
            ["bash", str(RUN_SCRIPT)],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # As from a terminal: a shell that starts a command in the background without
            # job control (nohup ... &, some CI runners) ignores SIGINT in it, and bash
            # cannot trap a signal that was ignored when it started.
            preexec_fn=_sigint_as_in_a_terminal,
        )
    known: dict[int, str] = {}
    try:
        watch = {"process": script, "log": log}
        api = f"http://127.0.0.1:{api_port}"
        flower = f"http://127.0.0.1:{flower_port}/"
        wait_for(lambda: http_status(f"{api}/health") == 200, "GET /health -> 200", **watch)
        # The API's metrics on their own port, not on the API's.
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(lambda: http_status(metrics) == 200, "the API's metrics -> 200", **watch)
        assert http_status(f"{api}/metrics") == 404
        wait_for(lambda: http_status(flower) == 401, "Flower without credentials -> 401", **watch)

        auth_file = var_dir / "flower_auth"
        assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
        credentials = auth_file.read_text().strip()
        user, password = credentials.split(":", 1)
        assert user == "admin"
        assert len(password) == 24 and password.isalnum()
        wait_for(lambda: http_status(flower, credentials) == 200, "Flower login -> 200", **watch)
        wait_for(
            lambda: http_status(f"http://127.0.0.1:{health_port}/health") == 200,
            "worker /health -> 200",
            **watch,
        )

        jwt_secret = var_dir / "jwt_secret"
        assert stat.S_IMODE(jwt_secret.stat().st_mode) == 0o600
        assert len(jwt_secret.read_text().strip()) >= 32
        printed = log.read_text(errors="replace")
        assert f"http://localhost:{api_port}" in printed
        assert f"http://localhost:{flower_port}" in printed and password in printed
        assert f"http://localhost:{health_port}/health" in printed
        assert f"http://localhost:{metrics_port}/metrics" in printed
        assert "engine token mint admin@example.com" in printed
        assert "stopped (rc=" not in printed, f"a process stopped early:\n{printed}"
        if own_redis_port is not None:
            assert port_is_open(own_redis_port)
            assert (var_dir / "redis").is_dir()

        known = process_tree(script.pid)
        os.killpg(script.pid, signal.SIGINT)
        try:
            status = script.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            waiting = "\n".join(f"  {pid}: {cmd}" for pid, cmd in still_running(known).items())
            pytest.fail(
                f"still running {SHUTDOWN_TIMEOUT_S:g} s after SIGINT:\n{waiting}\n"
                f"the script's output:\n{log.read_text(errors='replace')[-6000:]}"
            )
        assert status == 0, log.read_text(errors="replace")

        deadline = time.monotonic() + 15
        while still_running(known) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert still_running(known) == {}, "processes left running after SIGINT"
        ports = [api_port, flower_port, health_port, metrics_port]
        if own_redis_port is not None:
            ports.append(own_redis_port)
        assert [port for port in ports if port_is_open(port)] == []
    finally:
        stop_leftovers(script, known)


def path_without_redis_server(tmp_path: Path) -> str:
    """A PATH with every program of the current one except redis-server."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for program in Path(directory).iterdir():
            target = bin_dir / program.name
            if program.name != "redis-server" and not target.exists():
                target.symlink_to(program)
    return str(bin_dir)


@pytest.mark.parametrize(
    "case", ["no-redis-server-binary", "not-a-local-address"], ids=lambda case: case
)
def test_run_exits_with_one_line_when_redis_is_unreachable(case: str, tmp_path: Path) -> None:
    require((REPO_ROOT / ".venv" / "bin" / "python").exists(), "no .venv: run make venv")
    port = free_port()  # closed: nothing listens there
    host = "127.0.0.1" if case == "no-redis-server-binary" else "127.0.0.2"
    redis_url = f"redis://{host}:{port}/0"
    environment = script_environment(tmp_path, redis_url)
    if case == "no-redis-server-binary":
        environment["PATH"] = path_without_redis_server(tmp_path)

    finished = subprocess.run(
        ["bash", str(RUN_SCRIPT)],
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = [line for line in (finished.stdout + finished.stderr).splitlines() if line.strip()]
    assert finished.returncode == 1, lines
    assert len(lines) == 1, lines
    assert "Redis" in lines[0] and redis_url in lines[0]
    assert not (tmp_path / "var" / "jwt_secret").exists(), "stopped before the migrations"
