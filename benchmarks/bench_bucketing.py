"""Padded share of BucketBatchSampler's batches vs random batches, on the same sizes.

This benchmark measures a *share of pixels*, not a time: the ``ms`` and ``baseline_ms`` fields hold the
padded share in percent (``"unit"`` says so), ``ratio`` is bucketed share / random share (lower is better).
Padded share = 1 − Σ valid pixels / Σ (batch length × canvas area), canvas = elementwise max of the batch.

Rows:
* 2-D sizes, height and width each drawn log-uniformly from 32–256, 2000 samples, batch 8, default
  ``megabatch`` (the goal: ≤ 10 %).
* the same with ``megabatch=64`` (more varied batches from epoch to epoch, more padding).
* 1-D heights (the seed's constant-width scans), 2000 samples, batch 8.

Run: ``python -m benchmarks bucketing`` (or ``python -m benchmarks.bench_bucketing``).
"""

from __future__ import annotations

import math
import time

import torch

from cnnkit.masking.sampler import BucketBatchSampler, padding_fraction


def _sizes(n: int, dims: int, seed: int, low: int = 32, high: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, dims, generator=g, dtype=torch.float64)
    return torch.exp(math.log(low) + u * math.log(high / low)).long()


def _row(name: str, sizes: torch.Tensor, batch_size: int, seed: int, goal: str, **kwargs) -> dict:
    sampler = BucketBatchSampler(sizes, batch_size, generator=torch.Generator().manual_seed(seed), **kwargs)
    start = time.perf_counter()
    epochs = [list(sampler) for _ in range(3)]
    epoch_ms = 1000 * (time.perf_counter() - start) / 3
    bucketed = 100 * sum(padding_fraction(e, sizes) for e in epochs) / 3
    n = len(sizes)
    randoms = []
    for epoch in range(3):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        randoms.append(padding_fraction([order[i : i + batch_size] for i in range(0, n, batch_size)], sizes))
    random = 100 * sum(randoms) / 3
    return {
        "benchmark": f"bucketing padded share, {name}", "baseline": "random batches",
        "ms": bucketed, "baseline_ms": random, "ratio": bucketed / random, "goal": goal,
        "unit": "% padded pixels (mean of 3 epochs), not ms", "sampler_ms_per_epoch": epoch_ms,
    }


def run(n: int = 2000, batch_size: int = 8, seed: int = 0) -> list[dict]:
    sizes_2d = _sizes(n, 2, seed)
    sizes_1d = _sizes(n, 1, seed)
    return [
        _row(f"2-D log-uniform 32–256, N={n}, batch {batch_size}", sizes_2d, batch_size, seed, "≤ 10 %"),
        _row(f"same, megabatch=64, batch {batch_size}", sizes_2d, batch_size, seed, "—", megabatch=64),
        _row(f"1-D heights log-uniform 32–256, N={n}, batch {batch_size}", sizes_1d, batch_size, seed, "—"),
    ]


if __name__ == "__main__":
    for row in run():
        print(f"{row['benchmark']}: {row['ms']:.2f} % padded vs {row['baseline_ms']:.2f} % for random batches "
              f"(ratio {row['ratio']:.3f}, goal {row['goal']}; sampler {row['sampler_ms_per_epoch']:.0f} ms/epoch)")
