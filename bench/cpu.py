"""Where the CPU went during a measured round: how busy the machine's cores were, and the CPU
time (user + system, from /proc) of each process tree that took part, per run. A ratio then
reads as "the cores were full, so the CPU per run decides" or "the cores waited"."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.harness import Platform
from bench.processes import family, parent_pid

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cores() -> tuple[int, int, int]:
    """(busy, waiting for the disk, all) clock ticks of every core since boot. Stolen time
    counts as none of them: the hypervisor gave it to someone else."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    busy = user + nice + system + irq + softirq
    return busy, iowait, busy + idle + iowait


def _process_s(pid: int, waited: bool = True) -> float:
    """A process's CPU time, with that of the children it has waited for unless not
    `waited`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0  # gone since the family was read: what it spent is in its parent's
    # Fields after the command name: utime, stime, cutime, cstime are 14 to 17 of stat(5).
    after = stat.rsplit(")", 1)[1].split()
    return sum(int(value) for value in after[11 : 15 if waited else 13]) * TICK_S


def tree_s(pid: int) -> float:
    """CPU seconds of a process and its living descendants (each child that ended is in its
    parent's waited-for time)."""
    return sum(_process_s(member) for member in family(pid))


def own_s() -> float:
    """CPU seconds of this process alone (its threads, not the processes it started)."""
    times = os.times()
    return times.user + times.system


def service_pids(platform: Platform) -> dict[str, int]:
    """The local Redis server's and PostgreSQL server's process ids (PostgreSQL's main
    process, whose children are the backends); a service that runs elsewhere is left out."""
    pids = {"redis": int(platform.redis.info("server")["process_id"])}
    if platform.backend == "postgres":
        with platform.db_engine.connect() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        pids["postgres"] = parent_pid(backend)
    return {name: pid for name, pid in pids.items() if _runs_here(pid, name)}


def _runs_here(pid: int, name: str) -> bool:
    """Whether process `pid` of this machine is a `name` server (not a stranger that happens
    to have the id a remote server reported)."""
    try:
        return name in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def measured(
    scenario: Callable[[], dict[str, Any]], trees: dict[str, int], count_key: str
) -> Callable[[], dict[str, Any]]:
    """`scenario`, returning its figures with `cpu` added: the share of the cores busy over
    its whole span and the CPU ms per unit (`count_key` of its figures: runs, tasks) of each
    named process tree (`trees` names the "worker"), of this bench process ("bench": the
    sender, and its waiting) and of the worker's main process alone ("worker main", part of
    "worker": it receives, hands out and acknowledges every message, and bounds the worker
    when it is the busy one)."""
    worker = trees["worker"]

    def run() -> dict[str, Any]:
        before = {name: tree_s(pid) for name, pid in trees.items()}
        main_before = _process_s(worker, waited=False)
        bench_before = own_s()
        cores_before = _cores()
        figures = scenario()
        cores_after = _cores()
        bench_after = own_s()
        after = {name: tree_s(pid) for name, pid in trees.items()}
        main_after = _process_s(worker, waited=False)
        busy, disk, total = (
            end - start for end, start in zip(cores_after, cores_before, strict=True)
        )
        units = figures[count_key]
        spent = {name: after[name] - before[name] for name in trees}
        spent["bench"] = bench_after - bench_before
        spent["worker main"] = main_after - main_before
        figures["cpu"] = {
            "cores_busy": busy / total if total else None,
            # Idle while a process waited for the disk (an fsync, a checkpoint).
            "cores_waiting_for_disk": disk / total if total else None,
            "ms_per_unit": {
                name: round(seconds * 1000 / units, 3) for name, seconds in spent.items()
            },
        }
        return figures

    return run
