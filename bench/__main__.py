"""`python -m bench [--smoke | --full] [--backends sqlite,postgres] [--output FILE]`

Starts its own workers and API against the local Redis (under a private key prefix, deleted
at the end) on a fresh SQLite file and a fresh PostgreSQL database (created, then dropped),
prints a table and writes every figure with the machine's description to bench/results.json.
`--profile worker|api` samples the worker or the API with py-spy instead (bench/profile.py).
`--show FILE [FILE ...]` prints the table of results written before, one after another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from bench import report, targets
from bench.harness import DEFAULT_POSTGRES, DEFAULT_REDIS
from bench.load import Load, ensure_wrk
from bench.processes import WORKER_LOGLEVEL
from bench.runner import PHASES, run_backend
from bench.sizes import SIZES

HERE = Path(__file__).resolve().parent


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    mode.add_argument("--full", action="store_true", help="bigger sizes (tens of minutes)")
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    parser.add_argument("--output", type=Path, default=HERE / "results.json")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument(
        "--postgres-url", default=DEFAULT_POSTGRES, help="a server login allowed to create DBs"
    )
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install wrk when missing"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {', '.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--profile",
        choices=("worker", "api"),
        help="instead of the bench, sample the worker or the API with py-spy",
    )
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument(
        "--show",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="instead of the bench, print the table of results files written before",
    )
    return parser.parse_args(argv)


def show(paths: list[Path]) -> str:
    """The table of each results file, under its name, its mode and when it ran."""
    parts = []
    for path in paths:
        try:
            results = json.loads(path.read_text())
            table = report.table(results)
        except (OSError, ValueError, LookupError, TypeError, AttributeError) as exc:
            raise SystemExit(f"{path}: not a results file ({type(exc).__name__}: {exc})") from exc
        took = results.get("duration_s")
        parts.append(
            f"== {path}: {results.get('mode')} run of {results.get('started_at')}"
            + (f", {took:.0f} s" if isinstance(took, int | float) else "")
            + f"\n{table}"
        )
    return "\n\n".join(parts)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return host.processor() or "unknown"


def _postgres_version(url: str) -> str | None:
    try:
        db_engine = create_engine(url)
        with db_engine.connect() as connection:
            found = connection.execute(text("SHOW server_version")).scalar()
        db_engine.dispose()
        return str(found)
    except Exception:  # no server: the backend is reported as unavailable instead
        return None


def _wrk_version(wrk: str | None) -> str | None:
    if not wrk:
        return None
    done = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    return (done.stdout or done.stderr).split("\n", 1)[0].strip() or None


def machine(args: argparse.Namespace, wrk: str | None) -> dict[str, Any]:
    client = redis.Redis.from_url(args.redis_url)
    try:
        redis_version = client.info("server").get("redis_version")
    finally:
        client.close()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": host.platform(),
        "python": host.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "sqlalchemy": version("SQLAlchemy"),
        "flask": version("Flask"),
        "gunicorn": version("gunicorn"),
        "psycopg": version("psycopg"),
        "redis_server": redis_version,
        "postgres_server": _postgres_version(args.postgres_url),
        "sqlite": sqlite3.sqlite_version,
        "wrk": _wrk_version(wrk),
        # Other work on the machine skews every figure: the load says how busy it was.
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    mode = "smoke" if args.smoke else "full" if args.full else "quick"
    sizes = SIZES[mode]
    if args.show:
        print(show(args.show))
        return 0
    if args.profile:
        from bench.profile import profile

        backend = args.backends.split(",")[0].strip()
        return profile(
            args.profile, args.redis_url, args.concurrency, args.profile_seconds, backend
        )
    phases = {name.strip() for name in args.only.split(",") if name.strip()}
    if phases - set(PHASES):
        raise SystemExit(f"unknown phase(s) {sorted(phases - set(PHASES))}: use {PHASES}")
    wrk = ensure_wrk(install=not args.no_install and mode != "smoke")
    load = Load(wrk)
    run_id = uuid.uuid4().hex[:10]
    workdir = Path(tempfile.mkdtemp(prefix=f"engine-bench-{run_id}-"))
    started = time.time()
    results: dict[str, Any] = {
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "machine": machine(args, wrk),
        "settings": {
            "concurrency": args.concurrency,
            "pool": "prefork",
            "worker_loglevel": WORKER_LOGLEVEL,
            "load_generator": load.name,
            "gunicorn": "web/gunicorn_conf.py (WEB_CONCURRENCY, WEB_THREADS as set, else 2 x 4)"
            " with --reuse-port",
        },
        "sizes": asdict(sizes),
        "targets": targets.TARGETS,
        "tracked": targets.TRACKED,
        "backends": {},
    }

    def say(message: str) -> None:
        print(f"bench [{time.time() - started:5.0f} s] {message}", flush=True)

    try:
        for backend in [name.strip() for name in args.backends.split(",") if name.strip()]:
            if backend not in ("sqlite", "postgres"):
                raise SystemExit(f"unknown backend {backend!r}: use sqlite and/or postgres")
            if backend == "postgres" and results["machine"]["postgres_server"] is None:
                results["backends"][backend] = {
                    "error": f"PostgreSQL unavailable at {args.postgres_url}"
                }
                say(f"postgres: skipped, no server at {args.postgres_url}")
                continue
            results["backends"][backend] = run_backend(
                backend,
                workdir / backend,
                sizes,
                load,
                redis_url=args.redis_url,
                postgres_admin_url=args.postgres_url,
                concurrency=args.concurrency,
                prefix=f"bench-{run_id}-{backend}:",
                say=say,
                phases=phases,
            )
    finally:
        if args.keep:
            print(f"bench: work directory kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["duration_s"] = time.time() - started
    results["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    results["verdicts"] = {
        name: targets.verdicts(figures) for name, figures in results["backends"].items()
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(report.table(results))
    print(
        f"\nfigures in {args.output} ({results['duration_s']:.0f} s; load average "
        f"{results['machine']['load_average_at_start'][0]} at start, "
        f"{results['machine']['load_average_at_end'][0]} at end)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
