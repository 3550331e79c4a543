"""ConvLSTM2d (input convolution over all frames at once, masks on) against a plain cat([x, h])-conv cell.

Problem: batch 8, 10 steps, 32×32 frames, 8 → 16 channels, 3×3 kernels, "same" padding. The baseline is
the textbook cell written here: at every step one ``Conv2d(C + F, 4F)`` over ``cat([x_t, h])``, no mask.
Rows (``ratio = ms / baseline_ms``, lower is better; goal ≤ 1.1 with masks on):

* forward + backward with an ``(N, T)`` step mask, with an ``(N, T, H', W')`` pixel mask, and without.
* forward only (inference, ``torch.no_grad``) with the pixel mask.

Run: ``python -m benchmarks.bench_conv_lstm`` (or ``python -m benchmarks conv_lstm``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from benchmarks._timing import interleaved_ms
from cnnkit.nn import ConvLSTM2d


class CatCell(nn.Module):
    """The plain ConvLSTM cell: gates = conv(cat([x_t, h_{t−1}])), one convolution per step."""

    def __init__(self, in_channels: int, hidden: int, kernel: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _, h, w = x.shape
        hs = x.new_zeros(n, self.hidden, h, w)
        cs = torch.zeros_like(hs)
        outputs = []
        for step in range(t):
            i, f, g, o = self.conv(torch.cat([x[:, step], hs], 1)).chunk(4, 1)
            cs = torch.sigmoid(f) * cs + torch.sigmoid(i) * torch.tanh(g)
            hs = torch.sigmoid(o) * torch.tanh(cs)
            outputs.append(hs)
        return torch.stack(outputs, 1)


def run(batch: int = 8, steps: int = 10, size: int = 32, channels: int = 8, hidden: int = 16) -> list[dict]:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    x = torch.randn(batch, steps, channels, size, size, requires_grad=True)
    lengths = torch.randint(steps // 2, steps + 1, (batch,))
    step_mask = torch.arange(steps)[None, :] < lengths[:, None]  # right-padded sequences
    pixel_mask = torch.rand(batch, steps, size, size) > 0.2
    ours = ConvLSTM2d(channels, hidden, 3)
    cell = CatCell(channels, hidden, 3)

    def train_step(mask):
        def step():
            x.grad = None
            ours.zero_grad(set_to_none=True)
            ours(x, mask=mask)[0].sum().backward()
        return step

    def cell_step():
        x.grad = None
        cell.zero_grad(set_to_none=True)
        cell(x).sum().backward()

    def infer(mask):
        def step():
            with torch.no_grad():
                ours(x, mask=mask)
        return step

    def cell_infer():
        with torch.no_grad():
            cell(x)

    ms = interleaved_ms({
        "cell": cell_step, "cell_fwd": cell_infer, "step": train_step(step_mask),
        "pixel": train_step(pixel_mask), "none": train_step(None), "pixel_fwd": infer(pixel_mask),
    })
    name = f"ConvLSTM2d, batch {batch}, {steps} steps, {size}×{size}, {channels} → {hidden}, 3×3"
    rows = []
    for key, label in (("step", "(N, T) mask"), ("pixel", "(N, T, H, W) mask"), ("none", "no mask")):
        rows.append({"benchmark": f"{name}, fwd+bwd, {label}", "baseline": "cat([x, h]) conv cell, fwd+bwd",
                     "ms": ms[key], "baseline_ms": ms["cell"], "ratio": ms[key] / ms["cell"], "goal": "≤ 1.1"})
    rows.append({"benchmark": f"{name}, forward, (N, T, H, W) mask", "baseline": "cat([x, h]) conv cell, forward",
                 "ms": ms["pixel_fwd"], "baseline_ms": ms["cell_fwd"], "ratio": ms["pixel_fwd"] / ms["cell_fwd"],
                 "goal": "≤ 1.1"})
    return rows


if __name__ == "__main__":
    rows = run()
    print(f"{'benchmark':<82} {'ms':>7} {'base ms':>8} {'ratio':>6}  goal")
    for r in rows:
        print(f"{r['benchmark']:<82} {r['ms']:7.2f} {r['baseline_ms']:8.2f} {r['ratio']:6.2f}  {r['goal']}")
