"""The CPU an app spends on a request with no server around it: direct WSGI calls, in a
process of its own (the app's logging stays out of the bench's output), the best of three
rounds. Beside the CPU gunicorn's processes spent per request (bench.api), it says how much
of a request is the app and how much the server.

`python -m bench.in_process SPEC OUTPUT` reads the app and its requests from the JSON file
SPEC and writes microseconds per request to OUTPUT; `app_cpu_us` runs it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.measure import BenchError
from bench.processes import ROOT

ROUNDS = 3
WARM_CALLS = 50


def app_cpu_us(
    env: Mapping[str, str],
    app: str,
    requests: dict[str, tuple[str, str, str]],
    token: str,
    calls: int,
    directory: Path,
) -> dict[str, float]:
    """CPU µs per call of each named request (method, path, JSON body) to `app`, given in
    gunicorn's form (`module:variable` or `module:factory()`), with this bearer token."""
    spec_path, output = directory / "in-process.json", directory / "in-process-figures.json"
    spec_path.write_text(
        json.dumps({"app": app, "requests": requests, "token": token, "calls": calls})
    )
    with open(directory / "in-process.log", "ab") as log:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.in_process", str(spec_path), str(output)],
            env=dict(env),
            cwd=ROOT,
            stdout=log,
            stderr=log,
            timeout=600,
        )
    if completed.returncode != 0:
        raise BenchError(f"in-process calls to {app} failed: see {directory / 'in-process.log'}")
    return json.loads(output.read_text())  # type: ignore[no-any-return]


def _caller(application: Any, method: str, path: str, body: str, token: str) -> Callable[[], str]:
    """One request's WSGI call, on a fresh body stream each time; returns the status."""
    from werkzeug.test import EnvironBuilder

    data = body.encode()
    builder = EnvironBuilder(
        path=path,
        method=method,
        data=data,
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    environ = builder.get_environ()
    builder.close()
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def call() -> str:
        chunks = application({**environ, "wsgi.input": io.BytesIO(data)}, start_response)
        try:
            for _ in chunks:
                pass
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return statuses.pop()

    return call


def _per_call_us(call: Callable[[], str], calls: int) -> float:
    status = call()
    if not status.startswith("2"):
        raise SystemExit(f"the request was answered {status}")
    for _ in range(WARM_CALLS):
        call()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(calls):
            call()
        best = min(best, time.process_time() - started)
    return best * 1e6 / calls


def main(spec_path: str, output: str) -> None:
    from gunicorn.util import import_app

    spec = json.loads(Path(spec_path).read_text())
    application = import_app(spec["app"])
    figures = {
        name: _per_call_us(_caller(application, method, path, body, spec["token"]), spec["calls"])
        for name, (method, path, body) in spec["requests"].items()
    }
    Path(output).write_text(json.dumps(figures))


if __name__ == "__main__":
    main(*sys.argv[1:])
