"""Masked vs plain execution of a ResNet-style CNN on the same padded tensor (forward + backward).

Rows:
* ``masked(model)`` on a padded batch vs the plain model on the same tensor (goal ≤ 1.15×): the price
  of exactness.
* ``masked(model)`` on a padded batch vs running the samples one at a time (what exactness costs
  without cnnkit).

Run: ``python -m benchmarks masked`` (or ``python -m benchmarks.bench_masked``).
"""

from __future__ import annotations

import torch

from benchmarks._timing import interleaved_ms
from cnnkit.masking import masked, pad_batch
from cnnkit.models import TinyResNet


def _rows(batch: int, width: int, low: int, high: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(int(h), int(w)) for h, w in torch.randint(low, high + 1, (batch, 2), generator=g)]
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    padded = pad_batch(images)
    # Eval mode: batch-norm statistics of a single sample in the one-at-a-time loop would differ.
    model = TinyResNet(3, 10, width=width).eval()
    wrapped = masked(model)

    def plain_step():
        model.zero_grad(set_to_none=True)
        model(padded.data).square().sum().backward()

    def masked_step():
        model.zero_grad(set_to_none=True)
        wrapped(padded).square().sum().backward()

    def one_at_a_time():
        model.zero_grad(set_to_none=True)
        for img in images:
            model(img[None]).square().sum().backward()

    ms = interleaved_ms({"plain": plain_step, "masked": masked_step, "loop": one_at_a_time}, min_run_time=0.3)
    plain_ms, masked_ms, loop_ms = ms["plain"], ms["masked"], ms["loop"]
    name = f"masked TinyResNet(width={width}) fwd+bwd, batch {batch}, sides {low}–{high}"
    return [
        {"benchmark": name, "baseline": "plain model, same padded tensor",
         "ms": masked_ms, "baseline_ms": plain_ms, "ratio": masked_ms / plain_ms, "goal": "≤ 1.15"},
        {"benchmark": name, "baseline": "one sample at a time",
         "ms": masked_ms, "baseline_ms": loop_ms, "ratio": masked_ms / loop_ms, "goal": "< 1"},
    ]


def run(seed: int = 0) -> list[dict]:
    """Three widths: 64 (ResNet's own first stage), 32, and a thin 16 where the fixed costs of masking (one
    zeroing pass before each padded window op, forward and backward, plus ~50 µs of Python per op) show."""
    return _rows(16, 64, 64, 128, seed) + _rows(16, 32, 64, 128, seed) + _rows(16, 16, 48, 96, seed)


if __name__ == "__main__":
    for row in run():
        print(row)
