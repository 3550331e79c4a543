"""LocallyConnected2d forward + backward against the matmul-bound limit and an unfold + einsum baseline.

Problem: batch 32, input 32×32×16, 32 filters 3×3, "valid" → 30×30 positions. The layer performs
``3 · 2·N·L·K·out`` FLOPs per forward + backward (one ``(N, K) @ (K, out)`` product per position forward,
two backward). Rows (``ratio = ms / baseline_ms``, lower is better):

* vs the *matmul-bound limit*: those FLOPs divided by the GFLOP/s of a 2048×2048 ``torch.matmul``
  measured in the same run (the machine's best matmul speed; goal ≤ 2).
* vs the same limit computed from a dense ``(N·L, K) @ (K, out)`` matmul — the speed a matmul of this
  layer's shape reaches when the weight is shared (informative).
* vs ``F.unfold`` + ``torch.einsum`` written here (goal ≤ 0.4, i.e. ≥ 2.5× faster).
* vs the layer's own pure-torch path (slabs of ``torch.bmm``), the one used without a C compiler or for
  other dtypes and devices (informative).

The layer runs its C kernel (``cnnkit/nn/csrc/locally_connected.c``) when it can be built; the first row
says which path was timed. Note that on CPUs where MKL's ``sgemm`` does not use AVX-512 (AMD, for one)
the kernel's register tiles can multiply faster than the 2048² ``torch.matmul``, so the "limit" is a
reference speed there, not a hardware bound.

Run: ``python -m benchmarks.bench_locally_connected`` (or ``python -m benchmarks locally``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import cnnkit.nn.locally_connected as lc_module
from benchmarks._timing import interleaved_ms
from cnnkit._native import status
from cnnkit.nn import LocallyConnected2d


def run(batch: int = 32, channels: int = 16, size: int = 32, filters: int = 32, k: int = 3) -> list[dict]:
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    layer = LocallyConnected2d(channels, filters, k, input_size=size)
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    positions, inputs, _ = layer.weight.shape
    out_size = layer.output_size
    grad = torch.randn(batch, filters, *out_size)
    weight = layer.weight.detach().clone().requires_grad_()  # the baseline's own copy
    bias = layer.bias.detach().clone().requires_grad_()

    def ours():
        x.grad = layer.weight.grad = layer.bias.grad = None
        layer(x).backward(grad)

    def torch_path():
        lc_module._use_native = False
        try:
            ours()
        finally:
            lc_module._use_native = True

    def unfold_einsum():
        x.grad = weight.grad = bias.grad = None
        # unfold's patch order is (C, kh, kw); the baseline keeps its weight in that order.
        cols = F.unfold(x, k)  # (N, C·kh·kw, L)
        out = torch.einsum("nkl,lko->nol", cols, weight).reshape(batch, filters, *out_size) + bias
        out.backward(grad)

    flops = 3 * 2 * batch * positions * inputs * filters
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    c, d = torch.randn(batch * positions, inputs), torch.randn(inputs, filters)
    ms = interleaved_ms({"ours": ours, "einsum": unfold_einsum, "torch path": torch_path,
                         "square": lambda: torch.matmul(a, b), "dense": lambda: torch.matmul(c, d)})
    peak = 2 * 2048**3 / ms["square"] / 1e6  # GFLOP/s
    dense = 2 * batch * positions * inputs * filters / ms["dense"] / 1e6
    ours_ms, base_ms = ms["ours"], ms["einsum"]
    limit_ms, dense_ms = flops / peak / 1e6, flops / dense / 1e6
    kernel = lc_module._kernel(x, layer.weight, layer.bias)
    path = (f"C kernel, {kernel.lc_vector_width()}-float vectors" if kernel is not None
            else f"torch path ({status('nn.locally_connected').splitlines()[0]})")
    name = (f"LocallyConnected2d fwd+bwd, ({batch}, {channels}, {size}, {size}) → {filters}, {k}×{k}, "
            f"{path}")
    return [
        {"benchmark": name, "baseline": f"matmul-bound limit ({flops / 1e9:.2f} GFLOP at {peak:.0f} GFLOP/s, "
                                        "2048² matmul)",
         "ms": ours_ms, "baseline_ms": limit_ms, "ratio": ours_ms / limit_ms, "goal": "≤ 2"},
        {"benchmark": name, "baseline": f"same FLOPs at dense ({batch * positions}×{inputs})@({inputs}×{filters}) "
                                        f"matmul speed ({dense:.0f} GFLOP/s)",
         "ms": ours_ms, "baseline_ms": dense_ms, "ratio": ours_ms / dense_ms, "goal": "(info)"},
        {"benchmark": name, "baseline": "F.unfold + torch.einsum",
         "ms": ours_ms, "baseline_ms": base_ms, "ratio": ours_ms / base_ms, "goal": "≤ 0.4"},
        {"benchmark": name, "baseline": "the layer's pure-torch path (torch.bmm per slab of positions)",
         "ms": ours_ms, "baseline_ms": ms["torch path"], "ratio": ours_ms / ms["torch path"], "goal": "(info)"},
    ]


def _print(rows: list[dict]) -> None:
    print(f"{'baseline':<78} {'ms':>8} {'base ms':>8} {'ratio':>6}  goal")
    for r in rows:
        print(f"{r['baseline']:<78} {r['ms']:8.2f} {r['baseline_ms']:8.2f} {r['ratio']:6.2f}  {r['goal']}")


if __name__ == "__main__":
    rows = run()
    print(rows[0]["benchmark"])
    _print(rows)
