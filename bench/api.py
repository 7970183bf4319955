"""API requests per second and latency at many connections (wrk), against a bare Flask app
under the same gunicorn settings (web/gunicorn_conf.py), and the CPU each request cost the
server (gunicorn's processes). Both servers stay up, each idle while the other is measured,
and they alternate round by round, so load from outside the bench falls on both alike; the
best round of each counts. No worker runs meanwhile: submitted runs wait in the queue, so
the figures are the API's alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench import in_process, specs
from bench.cpu import tree_s
from bench.harness import Platform
from bench.load import Load
from bench.processes import ROOT, Process
from bench.sizes import Sizes

WARM_S = 1.0


@dataclass(frozen=True)
class Served:
    """An app as gunicorn serves it, and the paths its POSTs and GETs go to."""

    app: str  # gunicorn's form: `module:variable` or `module:factory()`
    health_path: str
    post_path: str
    get_path: str
    root: Path = ROOT  # the checkout it is served from (bench.versions compares several)


# The figures' keys: the platform's requests and the bare app's, which ignores the same
# body and Authorization header.
_KEYS = {
    ("platform", "post"): "post_runs",
    ("platform", "get"): "get_run",
    ("hello", "post"): "hello_post",
    ("hello", "get"): "hello_get",
}


def measure(platform: Platform, sizes: Sizes, load: Load, name: str, run_id: str) -> dict[str, Any]:
    platform.register(specs.one_step(name))
    token = platform.token()
    body = json.dumps({"workflow": name, "params": {}})
    apps = {
        "platform": Served("web:create_app()", "/health", "/runs", f"/runs/{run_id}"),
        "hello": Served("bench.hello_app:app", "/", "/", "/"),
    }
    # wrk counts whole seconds.
    seconds = max(1, round(sizes.api_duration_s / sizes.rounds))
    rounds = alternate(
        platform,
        load,
        apps,
        ("post", "get"),
        body=body,
        token=token,
        rounds=sizes.rounds,
        seconds=seconds,
        connections=sizes.api_connections,
    )
    figures = {key: _best(rounds[served_method]) for served_method, key in _KEYS.items()}
    # The same requests by direct WSGI calls give each app's own CPU per request
    # (`app_cpu_us`); the rest of `server_cpu_ms` is the server's.
    for label, served in apps.items():
        spent = in_process.app_cpu_us(
            platform.env,
            served.app,
            {"post": ("POST", served.post_path, body), "get": ("GET", served.get_path, "")},
            token,
            sizes.in_process_calls,
            platform.directory,
        )
        for method in ("post", "get"):
            figures[_KEYS[label, method]]["app_cpu_us"] = spent[method]
    return {
        "connections": sizes.api_connections,
        "duration_s": seconds,
        "method": f"best of {sizes.rounds} alternating round(s) of {seconds} s",
        "load_generator": load.name,
        **figures,
        "post_ratio": figures["post_runs"]["requests_per_s"]
        / figures["hello_post"]["requests_per_s"],
        "get_ratio": figures["get_run"]["requests_per_s"] / figures["hello_get"]["requests_per_s"],
    }


def alternate(
    platform: Platform,
    load: Load,
    apps: dict[str, Served],
    methods: tuple[str, ...],
    *,
    body: str,
    token: str,
    rounds: int,
    seconds: int,
    connections: int,
    reverse: bool = False,
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every app served by a gunicorn of its own, all up at once and warmed with GETs; then,
    round after round, each method ("post", "get") in turn to each app in turn, the apps in
    reverse order every other round with `reverse`. Each round's figures by (app, method)."""
    figures: dict[tuple[str, str], list[dict[str, Any]]] = {
        (label, method): [] for label in apps for method in methods
    }
    servers: dict[str, tuple[Process, str]] = {}
    try:
        for label, served in apps.items():
            server, base = servers[label] = platform.start_gunicorn(
                served.app, served.health_path, root=served.root
            )
            load.get(base + served.get_path, token, connections=connections, duration_s=WARM_S)
        for index in range(rounds):
            order = list(reversed(apps)) if reverse and index % 2 else list(apps)
            for method in methods:
                for label in order:
                    served = apps[label]
                    server, base = servers[label]
                    send = (
                        partial(load.post, base + served.post_path, body)
                        if method == "post"
                        else partial(load.get, base + served.get_path)
                    )
                    figures[label, method].append(
                        _served_with_cpu(
                            server,
                            partial(send, token, connections=connections, duration_s=seconds),
                        )
                    )
    finally:
        for server, _ in servers.values():
            platform.stop(server)
    return figures


def _best(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the most requests answered per second, every round beside it."""
    best = max(entries, key=lambda entry: entry["requests_per_s"])
    return {**best, "rounds": entries}


def _served_with_cpu(server: Process, send: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`send`'s figures, with the CPU the server spent per request answered meanwhile
    (`server_cpu_ms`)."""
    before = tree_s(server.pid)
    figures = send()
    spent = tree_s(server.pid) - before
    figures["server_cpu_ms"] = spent * 1000 / figures["requests"] if figures["requests"] else None
    return figures
