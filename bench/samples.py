"""Reading py-spy's raw (collapsed) stacks: where the samples went, by process (the main
process or the pool's children), by layer (the library of the innermost frame), through the
engine's own functions and their calls into libraries, and by function (self). `python -m
bench --profile` prints it (bench/profile.py)."""

from __future__ import annotations

from collections import Counter

from bench.processes import ROOT

# First matching fragment of a frame's file path names its layer (order matters).
LAYERS = (
    ("sqlite3", "database driver (sqlite3)"),
    ("psycopg", "database driver (psycopg)"),
    ("sqlalchemy/orm", "SQLAlchemy ORM"),
    ("sqlalchemy", "SQLAlchemy Core/engine"),
    ("redis/", "broker client (redis-py)"),
    ("kombu", "broker client (kombu)"),
    ("billiard", "prefork pool (billiard)"),
    ("celery", "Celery"),
    ("logging", "logging"),
    ("jsonschema", "jsonschema"),
    ("json", "json"),
    ("jinja2", "Jinja2"),
    ("prometheus_client", "prometheus_client"),
    ("flask_jwt_extended", "JWT (flask-jwt-extended)"),
    ("jwt/", "JWT (PyJWT)"),
    ("flask", "Flask"),
    ("werkzeug", "Werkzeug"),
    ("gunicorn", "gunicorn"),
)
# The project's own packages, by where a (shortened) path starts.
OWN_LAYERS = (("engine/", "engine"), ("workers/", "workers (tasks)"), ("web/", "web (views)"))
TOP = 25


def _parse(line: str) -> tuple[int, list[tuple[str, str]], int] | None:
    """(process depth, frames outermost first as (function, file), samples) of a raw line."""
    stack, _, count_text = line.rpartition(" ")
    if not stack or not count_text.isdigit():
        return None
    depth, frames = 0, []
    for frame in stack.split(";"):
        if frame.startswith("process "):
            depth += 1
            continue
        function, _, where = frame.partition(" (")
        frames.append((function.strip(), _short(where.rstrip(")").rsplit(":", 1)[0])))
    return depth, frames, int(count_text)


def _layer(path: str) -> str:
    for prefix, name in OWN_LAYERS:
        if path.startswith(prefix):
            return name
    for fragment, name in LAYERS:
        if fragment in path:
            return name
    return "other"


def _ours(path: str) -> bool:
    return path.startswith(("engine/", "workers/", "web/"))


def _share(counter: Counter[str], total: int, limit: int | None = None) -> list[str]:
    return [f"  {100 * n / total:5.1f} %  {name}" for name, n in counter.most_common(limit)]


def summarise(collapsed: str) -> str:
    """Where the samples went: main process vs pool children, layers (by the innermost
    frame), the engine's calls into libraries (inclusive), and functions (self)."""
    total = 0
    processes: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in collapsed.splitlines():
        parsed = _parse(line)
        if parsed is None or not parsed[1]:
            continue
        depth, frames, count = parsed
        total += count
        processes["main process" if depth <= 1 else "child processes"] += count
        function, path = frames[-1]
        layers[_layer(path)] += count
        own[f"{function} ({path})"] += count
        crossings, mine = set(), set()
        for (outer, outer_path), (inner, inner_path) in zip(frames, frames[1:], strict=False):
            if _ours(outer_path):
                mine.add(f"{outer} ({outer_path})")
                if not _ours(inner_path):
                    crossings.add(f"{outer} -> {inner} ({inner_path})")
        if _ours(path):
            mine.add(f"{function} ({path})")
        for name in crossings:
            calls[name] += count
        for name in mine:
            ours[name] += count
    if not total:
        return "no samples (is py-spy allowed to attach? it needs ptrace)"
    lines = [f"{total} samples of busy threads", "", "by process:"]
    lines += _share(processes, total)
    lines += ["", "by layer (innermost frame):"]
    lines += _share(layers, total)
    lines += ["", f"engine and task functions, inclusive (top {TOP}):"]
    lines += _share(ours, total, TOP)
    lines += ["", f"library calls made by the engine and tasks, inclusive (top {TOP}):"]
    lines += _share(calls, total, TOP)
    lines += ["", f"functions, self (top {TOP}):"]
    lines += _share(own, total, TOP)
    return "\n".join(lines)


def _short(path: str) -> str:
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
