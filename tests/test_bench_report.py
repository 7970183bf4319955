"""The bench's verdicts (bench/targets.py) and its printed table (bench/report.py), from
figures written here: a miss must be readable as the platform's or the machine's."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench import report, targets
from bench.sizes import SIZES


def _latency(p50: float, p99: float) -> dict[str, float]:
    return {"p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "send_p50_ms": 1.0, "start_p50_ms": 1.0}


def _backend(platform_p50: float, raw_p50: float, post: float, get: float) -> dict[str, Any]:
    return {
        "latency": {**_latency(platform_p50, 8.0), "rate_per_s": 50, "raw": _latency(raw_p50, 7.0)},
        "api": {
            "connections": 50,
            "post_runs": {"requests_per_s": post},
            "get_run": {"requests_per_s": get},
            "hello_post": {"requests_per_s": 4000.0},
            "hello_get": {"requests_per_s": 4000.0},
            "post_ratio": post / 4000,
            "get_ratio": get / 4000,
        },
    }


def test_raw_celery_is_held_to_the_absolute_latency_target_too() -> None:
    platform_only = targets.verdicts(_backend(5.6, 4.2, 600, 1200))
    assert platform_only["latency"] is False and platform_only["latency_raw"] is True
    machine = targets.verdicts(_backend(5.9, 5.2, 600, 1200))
    assert machine["latency"] is False and machine["latency_raw"] is False
    assert targets.verdicts(_backend(4.1, 3.9, 600, 1200))["latency"] is True


def test_the_api_is_checked_against_its_tracked_floors_beside_the_ratios() -> None:
    marks = targets.verdicts(_backend(4.0, 4.0, 499.0, 1000.0))
    assert marks["api_post"] is False and marks["api_get"] is False
    assert marks["api_post_floor"] is False and marks["api_get_floor"] is True
    marks = targets.verdicts(_backend(4.0, 4.0, 500.0, 999.0))
    assert marks["api_post_floor"] is True and marks["api_get_floor"] is False


def test_a_figure_not_measured_has_no_verdict() -> None:
    marks = targets.verdicts({})
    assert marks["latency_raw"] is None and marks["api_post_floor"] is None


def _results(post: float, get: float) -> dict[str, Any]:
    return {
        "mode": "quick",
        "machine": {"nproc": 2, "cpu_model": "cpu", "python": "3.11", "celery": "5.7"},
        "settings": {"concurrency": 2},
        "sizes": asdict(SIZES["quick"]),
        "backends": {"sqlite": _backend(5.9, 5.2, post, get)},
    }


def test_the_table_prints_each_tracked_verdict_beside_its_target() -> None:
    lines = report.table(_results(404.0, 1190.0)).splitlines()

    def line(label: str) -> str:
        [found] = [text for text in lines if text.lstrip().startswith(label)]
        return found

    raw = line("raw Celery alone against the same target")
    assert "5.2/7.0 MISS" in raw and targets.TARGETS["latency"] not in raw
    assert "404 MISS" in line("POST /runs req/s against the tracked floor")
    assert "≥ 500 req/s" in line("POST /runs req/s against the tracked floor")
    assert "1,190 PASS" in line("GET /runs/{id} req/s against the tracked floor")
    assert "≥ 1,000 req/s" in line("GET /runs/{id} req/s against the tracked floor")


def test_show_prints_the_table_of_each_results_file_written_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(
        json.dumps({**_results(404.0, 1190.0), "started_at": "T1", "duration_s": 330})
    )
    after.write_text(json.dumps({**_results(612.0, 1050.0), "started_at": "T2"}))
    assert bench_main.main(["--show", str(before), str(after)]) == 0
    shown = capsys.readouterr().out
    first, second = shown.split(f"== {after}: quick run of T2\n")
    assert first.startswith(f"== {before}: quick run of T1, 330 s\n")
    assert "404 MISS" in first and "612 PASS" not in first
    assert "612 PASS" in second and "1,050 PASS" in second
    with pytest.raises(SystemExit, match="missing.json: not a results file"):
        bench_main.main(["--show", str(tmp_path / "missing.json")])
    other = tmp_path / "other.json"
    for text in ('{"mode": "quick"}', "[1, 2]", "{not json"):
        other.write_text(text)
        with pytest.raises(SystemExit, match="other.json: not a results file"):
            bench_main.main(["--show", str(before), str(other)])
