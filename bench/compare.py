"""Raw Celery against the platform (scenarios 1 to 4). Both workers stay up, each idle while
the other is measured, and the two sides alternate round by round, so load from outside the
bench falls on both alike. The best round of each side counts; every round is kept."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from bench import cpu, dag, throughput
from bench.baseline import RawSide
from bench.harness import Platform
from bench.load import Load
from bench.sizes import Sizes

RAW_WORK = (
    "one Redis call per task (a script that counts it and stamps its end); "
    "platform steps run `noop`"
)


def _attempt(into: list[Any], measure: Callable[[], Any]) -> None:
    try:
        into.append(measure())
    except Exception as exc:  # a failed round is recorded; the other rounds still count
        print(f"bench: a round failed: {exc}", flush=True)
        into.append({"error": f"{type(exc).__name__}: {exc}"})


def _best_cpu(entries: list[Any]) -> dict[str, Any] | None:
    """The CPU figures (bench.cpu) of the fastest round (errors left out)."""
    rounds = [entry for entry in entries if isinstance(entry, dict) and "error" not in entry]
    best = max(rounds, key=lambda entry: entry["per_s"], default=None)
    return best and best.get("cpu")


def _best(entries: list[Any], key: str | None = None, *, highest: bool = True) -> Any:
    values = [
        entry[key] if key else entry
        for entry in entries
        if not (isinstance(entry, dict) and "error" in entry)
    ]
    if not values:
        return None
    return max(values) if highest else min(values)


def _section(entries: list[Any], **figures: Any) -> dict[str, Any]:
    """The figures, or the first error when no round succeeded."""
    if all(value is None for value in figures.values()):
        errors = [e["error"] for e in entries if isinstance(e, dict) and "error" in e]
        return {"error": errors[0] if errors else "not measured", "rounds": entries}
    return {**figures, "rounds": entries}


def _ratio(top: Any, bottom: Any) -> float | None:
    if isinstance(top, int | float) and isinstance(bottom, int | float) and bottom:
        return top / bottom
    return None


def measure(
    platform: Platform,
    sizes: Sizes,
    say: Callable[[str], None],
    results: dict[str, Any],
    load: Load,
) -> None:
    """Fill results["throughput"], ["latency"], ["chain"] and ["fanout"]."""
    raw = RawSide(platform)
    raw.start()
    worker = server = None
    try:
        worker = platform.start_worker()
        throughput.warm_up(platform, "bench_warm")
        server, base = platform.start_gunicorn("web:create_app()", "/health")
        dag.register_chain(platform, "bench_chain", sizes.chain_length)
        dag.register_fan_out(platform, "bench_fanout", sizes.fanout_width)
        services = cpu.service_pids(platform)
        assert raw.worker is not None
        raw_trees = {"worker": raw.worker.pid, **services}
        trees = {"worker": worker.pid, "api": server.pid, **services}
        rounds: dict[str, list[Any]] = {
            name: [] for name in ("raw", "raw_drain", "engine", "http", "drain")
        }
        chains: dict[str, list[Any]] = {"raw": [], "platform": []}
        fans: dict[str, list[Any]] = {"raw": [], "platform": []}
        for index in range(sizes.rounds):
            say(f"{platform.backend}: round {index + 1}/{sizes.rounds}, raw Celery and platform")
            _attempt(
                rounds["raw"],
                cpu.measured(lambda: raw.end_to_end(sizes.runs), raw_trees, "tasks"),
            )
            _attempt(
                rounds["engine"],
                cpu.measured(
                    partial(throughput.end_to_end, platform, sizes.runs, f"bench_one_{index}"),
                    trees,
                    "runs",
                ),
            )
            _attempt(
                rounds["http"],
                cpu.measured(
                    partial(
                        throughput.http,
                        platform,
                        sizes.runs,
                        sizes.http_connections,
                        f"bench_http_{index}",
                        base,
                        load,
                    ),
                    trees,
                    "runs",
                ),
            )
            # As many tasks as the platform's drain has runs: the same queue depth on both sides.
            _attempt(rounds["raw_drain"], lambda: raw.drain(sizes.runs))
            _attempt(
                rounds["drain"],
                partial(throughput.drain, platform, worker, sizes.runs, f"bench_drain_{index}"),
            )
            for _ in range(sizes.chain_repeats):
                _attempt(chains["raw"], lambda: raw.chain(sizes.chain_length))
                _attempt(
                    chains["platform"],
                    lambda: dag.one_run(platform, "bench_chain", max(60, sizes.chain_length)),
                )
            for _ in range(sizes.fanout_repeats):
                _attempt(fans["raw"], lambda: raw.chord(sizes.fanout_width))
                _attempt(
                    fans["platform"],
                    lambda: dag.one_run(platform, "bench_fanout", max(60, sizes.fanout_width / 5)),
                )
        say(f"{platform.backend}: submit -> first step latency, raw Celery and platform")
        results["latency"] = _latency(
            lambda: raw.latency(sizes.latency_rate, sizes.latency_s),
            lambda: throughput.latency(platform, sizes, "bench_latency"),
        )
    finally:
        if server is not None:
            platform.stop(server)
        if worker is not None:
            platform.stop(worker)
        raw.stop()
    results["throughput"] = _throughput(rounds, sizes)
    results["chain"] = _chain(chains, sizes)
    results["fanout"] = _fan_out(fans, sizes)


def _latency(raw: Callable[[], Any], platform: Callable[[], Any]) -> dict[str, Any]:
    """The platform's figures, with raw Celery's send -> start at the same rate beside them:
    the part of the delay that is the machine's and Celery's, not the platform's."""
    entries: list[Any] = []
    _attempt(entries, raw)
    _attempt(entries, platform)
    raw_figures, figures = entries
    return {**figures, "raw": raw_figures}


def _throughput(rounds: dict[str, list[Any]], sizes: Sizes) -> dict[str, Any]:
    raw = _section(
        rounds["raw"],
        tasks_per_s=_best(rounds["raw"], "per_s"),
        drain_per_s=_best(rounds["raw_drain"], "per_s"),
    )
    raw["drain_rounds"] = rounds["raw_drain"]
    raw["cpu"] = _best_cpu(rounds["raw"])
    raw["work_per_task"] = RAW_WORK
    engine = _section(rounds["engine"], runs_per_s=_best(rounds["engine"], "per_s"))
    engine["cpu"] = _best_cpu(rounds["engine"])
    http = _section(rounds["http"], runs_per_s=_best(rounds["http"], "per_s"))
    http["cpu"] = _best_cpu(rounds["http"])
    http["connections"] = sizes.http_connections
    drain = _section(rounds["drain"], runs_per_s=_best(rounds["drain"], "per_s"))
    return {
        "method": f"best of {sizes.rounds} alternating round(s)",
        "raw": raw,
        "engine": engine,
        "http": http,
        "drain": drain,
        "engine_ratio": _ratio(engine.get("runs_per_s"), raw.get("tasks_per_s")),
        "http_ratio": _ratio(http.get("runs_per_s"), raw.get("tasks_per_s")),
        "drain_ratio": _ratio(drain.get("runs_per_s"), raw.get("drain_per_s")),
    }


def _chain(chains: dict[str, list[Any]], sizes: Sizes) -> dict[str, Any]:
    length = sizes.chain_length
    fastest_raw = _best(chains["raw"], highest=False)
    fastest = _best(chains["platform"], highest=False)
    raw = _section(chains["raw"], ms_per_task=fastest_raw and fastest_raw * 1000 / length)
    platform = _section(chains["platform"], ms_per_step=fastest and fastest * 1000 / length)
    return {
        "length": length,
        "raw": raw,
        "platform": platform,
        "ratio": _ratio(platform.get("ms_per_step"), raw.get("ms_per_task")),
    }


def _fan_out(fans: dict[str, list[Any]], sizes: Sizes) -> dict[str, Any]:
    raw = _section(fans["raw"], total_s=_best(fans["raw"], highest=False))
    platform = _section(fans["platform"], total_s=_best(fans["platform"], highest=False))
    return {
        "width": sizes.fanout_width,
        "raw": raw,
        "platform": platform,
        "ratio": _ratio(platform.get("total_s"), raw.get("total_s")),
    }
