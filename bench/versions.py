"""`python -m bench.versions [options] NAME=DIR NAME=DIR ...`: the API of several checkouts of
the platform side by side, to tell whether a change made its requests cheaper.

Each DIR is a checkout (`git worktree add /tmp/before HEAD~1`, say) served by a gunicorn of
its own, started in DIR with DIR's web/gunicorn_conf.py and this interpreter's packages. All
are up at once, on one database and one Redis key prefix of this checkout's making, so the
versions must share its schema. wrk sends GETs of one run (with `--post`, POSTs of a one-step
run too) to each in turn for `--seconds`, round after round, the order reversed every other
round, so a slow spell of the machine falls on every version alike. A single round says
little: the same code moves by a tenth from round to round here. Printed per request and
version: the median and the best round's requests a second, the median CPU the server spent
per request, and every round. `--bare` adds the bare Flask app of the API phase. No worker
runs: the POSTed runs wait in their queue.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench import specs
from bench.api import Served, alternate
from bench.harness import DEFAULT_POSTGRES, DEFAULT_REDIS, Platform
from bench.load import Load, ensure_wrk

BARE = "bare"
WORKFLOW = "versions_one_step"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.versions", description=__doc__.split("\n")[0]
    )
    parser.add_argument("versions", nargs="+", metavar="NAME=DIR", help="checkouts to compare")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=3, help="wrk's time per request and round")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--post", action="store_true", help="POST /runs as well as GET")
    parser.add_argument("--bare", action="store_true", help="the bare Flask app as well")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    args = parser.parse_args(argv)
    args.checkouts = {}
    for text in args.versions:
        name, _, directory = text.partition("=")
        root = Path(directory).resolve()
        if not name or name == BARE or name in args.checkouts:
            parser.error(f"{text!r}: each version needs a name of its own (not {BARE!r})")
        if not (root / "web" / "gunicorn_conf.py").is_file():
            parser.error(f"{text!r}: {root} is not a checkout of the platform")
        args.checkouts[name] = root
    return args


def compare(
    platform: Platform, load: Load, args: argparse.Namespace
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every round's figures, by request ("get", "post") and version."""
    platform.register(specs.one_step(WORKFLOW))
    run_id = platform.submit(WORKFLOW)
    apps = {
        name: Served("web:create_app()", "/health", "/runs", f"/runs/{run_id}", root)
        for name, root in args.checkouts.items()
    }
    if args.bare:
        apps[BARE] = Served("bench.hello_app:app", "/", "/", "/")
    requests = ("get", "post") if args.post else ("get",)
    rounds = alternate(
        platform,
        load,
        apps,
        requests,
        body=json.dumps({"workflow": WORKFLOW, "params": {}}),
        token=platform.token(),
        rounds=args.rounds,
        seconds=args.seconds,
        connections=args.connections,
        reverse=True,
    )
    return {request: {name: rounds[name, request] for name in apps} for request in requests}


def table(rounds: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.backend}: {args.rounds} round(s) of {args.seconds} s at "
        f"{args.connections} connections, each version in turn"
    ]
    for request, versions in rounds.items():
        lines.append("")
        lines.append(
            f"{'GET /runs/{id}' if request == 'get' else 'POST /runs':14s}"
            f"{'median req/s':>14s}{'best':>8s}{'server CPU ms':>15s}{'failed':>8s}  rounds"
        )
        for name, entries in versions.items():
            rates = [entry["requests_per_s"] for entry in entries]
            cpu = [entry["server_cpu_ms"] for entry in entries if entry["server_cpu_ms"]]
            failed = sum(entry["non_2xx"] for entry in entries)
            lines.append(
                f"{name:14s}{statistics.median(rates):14,.0f}{max(rates):8,.0f}"
                f"{statistics.median(cpu) if cpu else float('nan'):15.3f}{failed:8d}  "
                + " ".join(f"{rate:,.0f}" for rate in rates)
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    load = Load(ensure_wrk(install=not args.no_install))
    directory = Path(tempfile.mkdtemp(prefix="engine-bench-versions-"))
    platform = Platform(
        args.backend,
        directory,
        redis_url=args.redis_url,
        postgres_admin_url=args.postgres_url,
        concurrency=1,
        prefix=f"bench-versions-{uuid.uuid4().hex[:10]}:",
    )
    try:
        rounds = compare(platform, load, args)
    finally:
        platform.close()
        shutil.rmtree(directory, ignore_errors=True)
    print(table(rounds, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
