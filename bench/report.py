"""The printed table, with each target and its verdict (bench/targets.py). Every figure comes
from the results dict, which is also what bench/results.json holds."""

from __future__ import annotations

from typing import Any

from bench.targets import TARGETS, TRACKED, verdicts


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return ""
    return "PASS" if ok else "MISS"


def _fmt(value: Any, digits: int = 0) -> str:
    """Integers with thousands separators; floats with `digits` decimals (0: whole above 100)."""
    if not _number(value):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if digits == 0:
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return f"{value:.{digits}f}"


def _error(section: Any) -> str | None:
    if isinstance(section, dict) and "error" in section:
        return "error: " + str(section["error"])[:60]
    return None


def _milliseconds(figures: Any, keys: tuple[str, ...], separator: str) -> str:
    """The named figures in ms, or the error that stood in their way."""
    if not isinstance(figures, dict):
        return "–"
    return _error(figures) or separator.join(_fmt(figures.get(k), 1) for k in keys)


def _cpu(figures: Any) -> str:
    """Each process tree's CPU ms per run (those that spent any), and how busy the cores were."""
    if not isinstance(figures, dict):
        return "–"
    spent = [
        f"{name} {_fmt(ms, 1)}"
        for name, ms in figures.get("ms_per_unit", {}).items()
        if _number(ms) and ms >= 0.05
    ]
    shares = [
        f"{_fmt(figures[key] * 100)} % {label}"
        for key, label in (("cores_busy", "busy"), ("cores_waiting_for_disk", "disk wait"))
        if _number(figures.get(key))
    ]
    return " · ".join(spent) + (f" ({', '.join(shares)})" if shares else "")


def _rows(backend: dict[str, Any], sizes: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(label, figure, verdict key, target) rows for one backend."""
    marks = verdicts(backend)
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, figure: str, key: str = "", target: str = "") -> None:
        rows.append((label, figure, _verdict(marks.get(key)) if key else "", target))

    throughput = backend.get("throughput", {})
    raw = throughput.get("raw", {})
    add(
        "1 raw Celery no-op tasks/s (from a full queue)",
        _error(throughput)
        or _error(raw)
        or f"{_fmt(raw.get('tasks_per_s'))} ({_fmt(raw.get('drain_per_s'))})",
    )
    for path, label in (("engine", "engine submit"), ("http", "HTTP via gunicorn")):
        part = throughput.get(path, {})
        figure = (
            _error(throughput)
            or _error(part)
            or f"{_fmt(part.get('runs_per_s'))} runs/s "
            f"= ×{_fmt(throughput.get(path + '_ratio'), 2)}"
        )
        add(f"  1-step runs/s, {label}", figure, f"throughput_{path}", TARGETS["throughput"])
    drain = throughput.get("drain", {})
    add(
        "  1-step runs/s from a full queue (worker only)",
        _error(throughput)
        or _error(drain)
        or f"{_fmt(drain.get('runs_per_s'))} runs/s = ×{_fmt(throughput.get('drain_ratio'), 2)}",
        "",
        "(no target)",
    )
    for path, label in (("raw", "raw Celery"), ("engine", "engine submit"), ("http", "HTTP")):
        add(f"  CPU ms per run by process, {label}", _cpu(throughput.get(path, {}).get("cpu")))
    latency = backend.get("latency", {})
    for label, keys, separator, target_key in (
        (
            f"2 submit→first step ms @{_fmt(latency.get('rate_per_s'))}/s p50/p95/p99 (raw)",
            ("p50_ms", "p95_ms", "p99_ms"),
            "/",
            "latency",
        ),
        # The median in two: until the sender's publish returned, and after it.
        (
            "  p50 ms until the publish returned + after (raw)",
            ("send_p50_ms", "start_p50_ms"),
            " + ",
            "",
        ),
    ):
        add(
            label,
            _error(latency)
            or f"{_milliseconds(latency, keys, separator)}"
            f" ({_milliseconds(latency.get('raw'), keys, separator)})",
            target_key,
            TARGETS.get(target_key, ""),
        )
    add(
        "  raw Celery alone against the same target",
        _error(latency) or _milliseconds(latency.get("raw"), ("p50_ms", "p99_ms"), "/"),
        "latency_raw",
        "(p50/p99: the machine's own share)",
    )
    chain = backend.get("chain", {})
    platform_chain, raw_chain = chain.get("platform", {}), chain.get("raw", {})
    add(
        f"3 {sizes['chain_length']}-step chain ms/step platform/raw",
        _error(chain)
        or _error(platform_chain)
        or _error(raw_chain)
        or f"{_fmt(platform_chain.get('ms_per_step'), 2)} / {_fmt(raw_chain.get('ms_per_task'), 2)}"
        f" = ×{_fmt(chain.get('ratio'), 2)}",
        "chain",
        TARGETS["chain"],
    )
    fanout = backend.get("fanout", {})
    platform_fan, raw_fan = fanout.get("platform", {}), fanout.get("raw", {})
    add(
        f"4 {sizes['fanout_width']}-wide fan-out + join s platform/raw",
        _error(fanout)
        or _error(platform_fan)
        or _error(raw_fan)
        or f"{_fmt(platform_fan.get('total_s'), 2)} / {_fmt(raw_fan.get('total_s'), 2)}"
        f" = ×{_fmt(fanout.get('ratio'), 2)}",
        "fanout",
        TARGETS["fanout"],
    )
    plan = backend.get("planning", {})
    small, large = (str(size) for size in sizes["plan_sizes"])
    plan_sizes = plan.get("sizes", {})
    add(
        f"5 plan {small} / {large} steps s (growth)",
        _error(plan)
        or f"{_fmt(plan_sizes.get(small, {}).get('plan_s'), 3)} / "
        f"{_fmt(plan_sizes.get(large, {}).get('plan_s'), 3)} (×{_fmt(plan.get('growth'), 1)})",
        "planning",
        TARGETS["planning"],
    )
    api = backend.get("api", {})
    for key, label, hello, ratio in (
        ("post_runs", "POST /runs", "hello_post", "post_ratio"),
        ("get_run", "GET /runs/{id}", "hello_get", "get_ratio"),
    ):
        mine, bare = api.get(key, {}), api.get(hello, {})
        figure = _error(api) or (
            f"{_fmt(mine.get('requests_per_s'))} req/s "
            f"(p50 {_fmt(mine.get('p50_ms'), 1)}, p99 {_fmt(mine.get('p99_ms'), 1)} ms) "
            f"vs {_fmt(bare.get('requests_per_s'))} = ×{_fmt(api.get(ratio), 2)}"
        )
        target_key = "api_post" if key == "post_runs" else "api_get"
        add(
            f"6 {label} @{api.get('connections', '?')} conn",
            figure,
            target_key,
            TARGETS[target_key],
        )
    for key, label, floor in (
        ("post_runs", "POST /runs", "api_post_floor"),
        ("get_run", "GET /runs/{id}", "api_get_floor"),
    ):
        add(
            f"  {label} req/s against the tracked floor",
            _error(api) or _fmt(api.get(key, {}).get("requests_per_s")),
            floor,
            f"{TRACKED[floor]} (tracked instead)",
        )
    for label, field, digits in (
        ("  server CPU ms per request (bare app)", "server_cpu_ms", 2),
        ("  app CPU µs per request, in process (bare app)", "app_cpu_us", 0),
    ):
        add(
            label,
            _error(api)
            or " · ".join(
                f"{method} {_fmt(api.get(key, {}).get(field), digits)} "
                f"({_fmt(api.get(hello, {}).get(field), digits)})"
                for method, key, hello in (
                    ("POST", "post_runs", "hello_post"),
                    ("GET", "get_run", "hello_get"),
                )
            ),
        )
    memory = backend.get("memory", {})
    add(
        f"7 worker RSS MB after {_fmt(memory.get('steps'))} steps",
        _error(memory)
        or f"{_fmt(memory.get('rss_before_mb'), 1)} → {_fmt(memory.get('rss_after_mb'), 1)} "
        f"({memory.get('growth_pct', 0):+.1f} %)",
        "memory",
        TARGETS["memory"],
    )
    replay = backend.get("replay", {})
    add(
        f"8 bulk replay of {_fmt(sizes['dead_letters'])} dead letters items/s",
        _error(replay) or replay.get("note") or _fmt(replay.get("items_per_s")),
        "replay",
        TARGETS["replay"],
    )
    return rows


def table(results: dict[str, Any]) -> str:
    backends = list(results["backends"])
    per_backend = {
        name: _rows(results["backends"][name], results["sizes"])
        for name in backends
        if "error" not in results["backends"][name]
    }
    machine = results["machine"]
    lines = [
        f"bench ({results['mode']}): {machine['nproc']} cores, {machine['cpu_model']}, "
        f"Python {machine['python']}, Celery {machine['celery']}, "
        f"worker -c {results['settings']['concurrency']}",
    ]
    if not per_backend:
        for name in backends:
            lines.append(f"{name}: {results['backends'][name].get('error')}")
        return "\n".join(lines)
    labels = [row[0] for row in next(iter(per_backend.values()))]
    columns = {
        name: [f"{figure} {verdict}".rstrip() for _, figure, verdict, _ in rows]
        for name, rows in per_backend.items()
    }
    targets = [row[3] for row in next(iter(per_backend.values()))]
    label_width = max(len(label) for label in labels)
    widths = {
        name: max(len(name), *(len(cell) for cell in cells)) for name, cells in columns.items()
    }
    header = "  ".join(
        ["scenario".ljust(label_width)]
        + [name.ljust(widths[name]) for name in columns]
        + ["target"]
    )
    lines += [header, "-" * len(header)]
    for index, label in enumerate(labels):
        cells = [columns[name][index].ljust(widths[name]) for name in columns]
        lines.append("  ".join([label.ljust(label_width), *cells, targets[index]]).rstrip())
    for name in backends:
        if name not in per_backend:
            lines.append(f"{name}: {results['backends'][name].get('error')}")
    return "\n".join(lines)
