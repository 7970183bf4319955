"""API requests per second and latency at many connections (wrk), against a bare Flask app
under the same gunicorn settings (web/gunicorn_conf.py), and the CPU each request cost the
server (gunicorn's processes). No worker runs meanwhile: submitted runs wait in the queue, so
the figures are the API's alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench import in_process, specs
from bench.cpu import tree_s
from bench.harness import Platform
from bench.load import Load
from bench.processes import Process
from bench.sizes import Sizes

WARM_S = 1.0


def measure(platform: Platform, sizes: Sizes, load: Load, name: str, run_id: str) -> dict[str, Any]:
    platform.register(specs.one_step(name))
    token = platform.token()
    body = json.dumps({"workflow": name, "params": {}})
    post, get = _post_and_get(
        platform,
        sizes,
        load,
        ("web:create_app()", "/health"),
        "/runs",
        f"/runs/{run_id}",
        body,
        token,
    )
    # The same body and Authorization header, which the bare app ignores.
    hello_post, hello_get = _post_and_get(
        platform, sizes, load, ("bench.hello_app:app", "/"), "/", "/", body, token
    )
    return {
        "connections": sizes.api_connections,
        "duration_s": sizes.api_duration_s,
        "load_generator": load.name,
        "post_runs": post,
        "get_run": get,
        "hello_post": hello_post,
        "hello_get": hello_get,
        "post_ratio": post["requests_per_s"] / hello_post["requests_per_s"],
        "get_ratio": get["requests_per_s"] / hello_get["requests_per_s"],
    }


def _post_and_get(
    platform: Platform,
    sizes: Sizes,
    load: Load,
    app: tuple[str, str],
    post_path: str,
    get_path: str,
    body: str,
    token: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """gunicorn serving `app` (its import string and health path): warmed with GETs, then
    POSTs and GETs for the bench's duration. Then the same requests by direct WSGI calls
    give the app's own CPU per request (`app_cpu_us`); the rest of `server_cpu_ms` is the
    server's."""
    connections, duration = sizes.api_connections, sizes.api_duration_s
    server, base = platform.start_gunicorn(*app)
    try:
        load.get(base + get_path, token, connections=connections, duration_s=WARM_S)
        post = _served(
            server,
            lambda: load.post(
                base + post_path, body, token, connections=connections, duration_s=duration
            ),
        )
        get = _served(
            server,
            lambda: load.get(base + get_path, token, connections=connections, duration_s=duration),
        )
    finally:
        platform.stop(server)
    spent = in_process.app_cpu_us(
        platform.env,
        app[0],
        {"post": ("POST", post_path, body), "get": ("GET", get_path, "")},
        token,
        sizes.in_process_calls,
        platform.directory,
    )
    post["app_cpu_us"], get["app_cpu_us"] = spent["post"], spent["get"]
    return post, get


def _served(server: Process, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`send`'s figures, with the CPU the server spent per request answered meanwhile
    (`server_cpu_ms`)."""
    before = tree_s(server.pid)
    figures = send()
    spent = tree_s(server.pid) - before
    figures["server_cpu_ms"] = spent * 1000 / figures["requests"] if figures["requests"] else None
    return figures
