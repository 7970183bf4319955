"""The bench's sizes: `--smoke` checks the harness in seconds, quick is the default, `--full`
takes tens of minutes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    # Raw and platform figures are measured in alternating rounds; the best round counts.
    rounds: int
    # 1-step runs per round of each platform path, and as many raw tasks: the same work
    # on both sides, so a round's fixed costs (starting wrk, the first connections, the
    # last run's tail) weigh alike.
    runs: int
    http_connections: int
    latency_rate: float
    latency_s: float
    chain_length: int
    chain_repeats: int
    fanout_width: int
    fanout_repeats: int
    plan_sizes: tuple[int, int]
    plan_repeats: int
    api_connections: int
    api_duration_s: float
    # Direct WSGI calls per round for the app's own CPU per request (bench.in_process).
    in_process_calls: int
    memory_steps: int
    memory_warmup_steps: int
    dead_letters: int


SIZES = {
    "smoke": Sizes(
        rounds=1,
        # Enough for each worker's CPU over a round to span several of /proc's 10 ms ticks
        # (the smoke test asks that it be above nought): at 10 runs it was as little as one.
        runs=50,
        http_connections=2,
        latency_rate=20,
        latency_s=0.5,
        chain_length=5,
        chain_repeats=1,
        fanout_width=10,
        fanout_repeats=1,
        plan_sizes=(10, 100),
        plan_repeats=1,
        api_connections=5,
        api_duration_s=1,
        in_process_calls=20,
        memory_steps=20,
        memory_warmup_steps=10,
        dead_letters=5,
    ),
    "quick": Sizes(
        rounds=3,
        runs=1000,
        http_connections=8,
        latency_rate=50,
        latency_s=10,
        chain_length=100,
        chain_repeats=2,
        fanout_width=1000,
        fanout_repeats=1,
        plan_sizes=(1000, 10000),
        plan_repeats=3,
        api_connections=50,
        api_duration_s=5,
        in_process_calls=1000,
        memory_steps=5000,
        memory_warmup_steps=500,
        dead_letters=1000,
    ),
    "full": Sizes(
        rounds=3,
        runs=5000,
        http_connections=8,
        latency_rate=50,
        latency_s=60,
        chain_length=100,
        chain_repeats=5,
        fanout_width=1000,
        fanout_repeats=3,
        plan_sizes=(1000, 10000),
        plan_repeats=5,
        api_connections=50,
        api_duration_s=20,
        in_process_calls=3000,
        memory_steps=50000,
        memory_warmup_steps=1000,
        dead_letters=10000,
    ),
}
