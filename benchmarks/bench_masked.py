"""Masked vs plain execution of a ResNet-style CNN on the same padded tensor (forward + backward).

Rows:
* ``masked(model)`` on a padded batch vs the plain model on the same tensor (goal ≤ 1.15×): the price
  of exactness.
* ``masked(model)`` on a padded batch vs running the samples one at a time (what exactness costs
  without cnnkit).

Run: ``python -m benchmarks masked`` (or ``python benchmarks/bench_masked.py``).
"""

from __future__ import annotations

import time

import torch

from cnnkit.demo import TinyResNet
from cnnkit.masking import masked, pad_batch


def _best_ms(fn, repeat: int = 7, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def run(batch: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(int(h), int(w)) for h, w in torch.randint(48, 97, (batch, 2), generator=g)]
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    padded = pad_batch(images)
    model = TinyResNet(3, 10, width=16).train()
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

    model.eval()  # batch norm statistics per sample only make sense in eval for the loop comparison
    plain_ms = _best_ms(plain_step)
    masked_ms = _best_ms(masked_step)
    loop_ms = _best_ms(one_at_a_time)
    return [
        {"benchmark": f"masked ResNet fwd+bwd, batch {batch}", "baseline": "plain model, same padded tensor",
         "ms": masked_ms, "baseline_ms": plain_ms, "ratio": masked_ms / plain_ms, "goal": "≤ 1.15"},
        {"benchmark": f"masked ResNet fwd+bwd, batch {batch}", "baseline": "one sample at a time",
         "ms": masked_ms, "baseline_ms": loop_ms, "ratio": masked_ms / loop_ms, "goal": "< 1"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
