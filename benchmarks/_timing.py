"""Timing shared by the benchmarks: interleaved rounds, best wall time (other processes only ever add time), or
median CPU time of single-threaded calls (what other processes change least)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer


def best_ms(fn: Callable[[], object], min_run_time: float = 0.5) -> float:
    """Best block mean of one ``blocked_autorange`` round, in ms, on all of torch's threads."""
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())  # Timer defaults to 1
    return 1000 * min(timer.blocked_autorange(min_run_time=min_run_time).times)


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int = 3, min_run_time: float = 0.5) -> dict:
    """Best time of each function over ``rounds`` interleaved rounds, in ms.

    On a shared machine other processes only ever add time, so the minimum is the estimate; alternating
    the candidates spreads any disturbance over all of them instead of one.
    """
    for fn in fns.values():
        fn()  # warm-up (allocations, lazy initialisation)
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], best_ms(fn, min_run_time))
    return best


def interleaved_cpu_ms(fns: dict[str, Callable[[], object]], seconds: float = 10.0, min_steps: int = 15,
                       max_steps: int = 200) -> dict[str, float]:
    """Median CPU time per call of each function, in ms, on one thread, the calls interleaved (A, B, A, B, …).

    On a shared machine a wall clock measures the neighbours too; the process's CPU time on one thread counts only
    its own work (other processes still share caches and memory bandwidth, which interleaving spreads evenly).
    As many rounds as fit in about ``seconds`` (between ``min_steps`` and ``max_steps``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for fn in fns.values():  # warm-up (allocations, lazy initialisation, caches of decisions)
            fn()
            fn()
        per_round = (time.perf_counter() - start) / 2
        steps = int(max(min_steps, min(max_steps, seconds / max(per_round, 1e-6))))
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(steps):
            for name, fn in fns.items():
                begin = time.process_time()
                fn()
                times[name].append(time.process_time() - begin)
    finally:
        torch.set_num_threads(threads)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def command_peak(command: list[str], columns: int = 120) -> tuple[float, float, str]:
    """Run ``command`` in a child and return (wall seconds, the child's peak RSS in MiB, its output).

    The peak is the kernel's ``ru_maxrss`` of the child, which Linux counts in KiB: the value returned is in MiB
    (2**20 bytes; 1.0 GB = 10**9 bytes is 953.7 MiB).

    A small launcher starts the command and reports its peak: a child forked from this (large) process would count
    this process's pages as its own until it execs, and Linux keeps that as the child's peak. Raises if the
    command fails.
    """
    launcher = ("import resource, subprocess, sys, time; start = time.perf_counter(); "
                f"done = subprocess.run({command!r}, capture_output=True, text=True); "
                "print(done.returncode, time.perf_counter() - start, "
                "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.stderr.write(done.stdout + done.stderr)")
    done = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": str(columns)})
    code, seconds, peak_kb = done.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(command[:4])} … failed:\n{done.stderr}")
    return float(seconds), int(peak_kb) / 1024, done.stderr  # ru_maxrss is in KiB on Linux
