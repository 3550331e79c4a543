"""Timing shared by the benchmarks: interleaved rounds, best time (other processes only ever add time)."""

from __future__ import annotations

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
