"""HTTP load: wrk (Debian's package, installed on first use when possible), or a small
threaded Python generator where wrk cannot be had (it is slower: its figures say so)."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.measure import BenchError, percentile

HERE = Path(__file__).resolve().parent
POST_SCRIPT = HERE / "post.lua"
GET_SCRIPT = HERE / "get.lua"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def ensure_wrk(install: bool) -> str | None:
    """The wrk binary; `apt-get install -y wrk` first when it is missing and allowed."""
    found = shutil.which("wrk")
    if found or not install or shutil.which("apt-get") is None:
        return found
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("bench: wrk is missing; installing it with apt-get", flush=True)
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        if subprocess.run(prefix + command, env=env, capture_output=True).returncode != 0:
            return None
    return shutil.which("wrk")


def _milliseconds(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not match:
        raise BenchError(f"unexpected wrk duration {value!r}")
    return float(match[1]) * _UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, p50/p99 latency (ms), request count and failures from `wrk --latency`."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    if not rate or not total:
        raise BenchError(f"could not read wrk's output: {output[-1500:]}")
    latencies = {
        share: _milliseconds(value)
        for share, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.MULTILINE)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests_per_s": float(rate[1]),
        "requests": int(total[1]),
        "p50_ms": latencies.get("50"),
        "p99_ms": latencies.get("99"),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
    }


def run_wrk(
    wrk: str,
    url: str,
    *,
    script: Path,
    connections: int,
    duration_s: float,
    env: dict[str, str],
    threads: int = 1,
    until: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """wrk for `duration_s`; with `until`, stopped (SIGINT: it still reports) once that
    says so, since wrk otherwise runs out its whole duration."""
    args = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    process = subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if until is not None:
        deadline = time.monotonic() + duration_s
        while process.poll() is None and time.monotonic() < deadline and not until():
            time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    try:
        stdout, stderr = process.communicate(timeout=duration_s + 120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise BenchError("wrk did not finish") from None
    if process.returncode != 0:
        raise BenchError(f"wrk failed ({process.returncode}): {stderr[-1500:]}")
    result = parse_wrk(stdout)
    result["load_generator"] = "wrk"
    return result


def run_python(
    url: str,
    *,
    method: str,
    connections: int,
    duration_s: float,
    headers: dict[str, str],
    body: bytes | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Keep-alive connections in threads, each sending requests back to back."""
    parts = urlsplit(url)
    path = parts.path or "/"
    deadline = time.monotonic() + duration_s
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    sent = [0]

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        mine: list[float] = []
        while time.monotonic() < deadline:
            with lock:
                if limit is not None and sent[0] >= limit:
                    break
                sent[0] += 1
            started = time.perf_counter()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 400
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                ok = False
            mine.append((time.perf_counter() - started) * 1000)
            if not ok:
                with lock:
                    failures[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "requests_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "non_2xx": failures[0],
        "socket_errors": 0,
        "load_generator": "python",
    }


class Load:
    """One way to send load for a whole bench run: wrk when available, else Python."""

    def __init__(self, wrk: str | None) -> None:
        self.wrk = wrk

    @property
    def name(self) -> str:
        return "wrk" if self.wrk else "python"

    def post(
        self,
        url: str,
        body: str,
        token: str | None,
        *,
        connections: int,
        duration_s: float,
        limit: int | None = None,
        done: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """POST `body` for `duration_s`, or until `limit` requests were answered (with wrk,
        `done` says when: wrk sends no more after `limit` but cannot count to exit)."""
        if self.wrk:
            env = {"BENCH_BODY": body, "BENCH_TOKEN": token or ""}
            if limit is not None:
                env["BENCH_LIMIT"] = str(limit)
            return run_wrk(
                self.wrk,
                url,
                script=POST_SCRIPT,
                connections=connections,
                duration_s=duration_s,
                env=env,
                until=done,
            )
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return run_python(
            url,
            method="POST",
            connections=connections,
            duration_s=duration_s,
            headers=headers,
            body=body.encode(),
            limit=limit,
        )

    def get(
        self, url: str, token: str | None, *, connections: int, duration_s: float
    ) -> dict[str, Any]:
        if self.wrk:
            return run_wrk(
                self.wrk,
                url,
                script=GET_SCRIPT,
                connections=connections,
                duration_s=duration_s,
                env={"BENCH_TOKEN": token or ""},
            )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return run_python(
            url, method="GET", connections=connections, duration_s=duration_s, headers=headers
        )
