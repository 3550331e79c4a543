"""Masked vs plain execution of CNNs on the same padded tensor (forward + backward).

Rows, per model:
* ``masked(model)`` on a padded batch vs the plain model on the same tensor, single-threaded CPU time (median of
  interleaved steps: what a busy neighbour changes least), the price of exactness (goals: TinyResNet width 16
  and 32 ≤ 1.15×; torchvision resnet18 and smp Unet(resnet18), batch 8, sides 128–224, ≤ 1.10×; those two rows
  need torchvision / segmentation-models-pytorch and are left out without them);
* the same on all of torch's threads, wall clock (best of interleaved rounds): with more threads the arithmetic
  shrinks and masked()'s Python per op does not, so this ratio is the larger one;
* ``masked(model)`` vs running the samples one at a time (what exactness costs without cnnkit).

Run: ``python -m benchmarks masked`` (or ``python -m benchmarks.bench_masked``).
"""

from __future__ import annotations

import torch

from benchmarks._timing import interleaved_cpu_ms, interleaved_ms
from cnnkit.masking import masked, pad_batch
from cnnkit.models import TinyResNet


def _total(out) -> torch.Tensor:
    out = out["out"] if isinstance(out, dict) else out
    return (out.data if hasattr(out, "unpad") else out).square().sum()


def _rows(batch: int, width: int, low: int, high: int, seed: int, model=None, name=None, goal="≤ 1.15",
          multiple: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    sizes = [(int(h) // multiple * multiple, int(w) // multiple * multiple)
             for h, w in torch.randint(low, high + 1, (batch, 2), generator=g)]
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    padded = pad_batch(images)
    # Eval mode: batch-norm statistics of a single sample in the one-at-a-time loop would differ.
    model = (model if model is not None else TinyResNet(3, 10, width=width)).eval()
    wrapped = masked(model)

    def plain_step():
        model.zero_grad(set_to_none=True)
        _total(model(padded.data)).backward()

    def masked_step():
        model.zero_grad(set_to_none=True)
        _total(wrapped(padded)).backward()

    def one_at_a_time():
        model.zero_grad(set_to_none=True)
        for img in images:
            _total(model(img[None])).backward()

    cpu = interleaved_cpu_ms({"plain": plain_step, "masked": masked_step})
    ms = interleaved_ms({"plain": plain_step, "masked": masked_step, "loop": one_at_a_time}, min_run_time=0.3)
    plain_ms, masked_ms, loop_ms = ms["plain"], ms["masked"], ms["loop"]
    name = f"masked {name or f'TinyResNet(width={width})'} fwd+bwd, batch {batch}, sides {low}–{high}"
    threads = torch.get_num_threads()
    return [
        {"benchmark": f"{name}; 1 thread, CPU time", "baseline": "plain model, same padded tensor (median)",
         "ms": cpu["masked"], "baseline_ms": cpu["plain"], "ratio": cpu["masked"] / cpu["plain"], "goal": goal},
        {"benchmark": f"{name}; {threads} threads, wall clock", "baseline": "plain model, same padded tensor (best)",
         "ms": masked_ms, "baseline_ms": plain_ms, "ratio": masked_ms / plain_ms, "goal": goal},
        {"benchmark": f"{name}; {threads} threads, wall clock", "baseline": "one sample at a time (best)",
         "ms": masked_ms, "baseline_ms": loop_ms, "ratio": masked_ms / loop_ms, "goal": "< 1"},
    ]


def run(seed: int = 0) -> list[dict]:
    """Three widths: 64 (ResNet's own first stage), 32, and a thin 16 where the fixed costs of masking show: the
    input's padding check, one zeroing pass before each padded window op (a plain product for tensors known
    finite, a checked one otherwise; folded into ReLU, with ReLU's own gradient, when ReLU precedes the window
    op), and the Python of the dispatch (per op, over a do-nothing torch-function mode: ~15–35 µs for conv, batch
    norm and sums, on top of that mode's own ~14 µs; measured on 8×8 inputs, 2026-12-01)."""
    rows = _rows(16, 64, 64, 128, seed) + _rows(16, 32, 64, 128, seed) + _rows(16, 16, 48, 96, seed)
    try:
        import torchvision
    except ImportError:
        torchvision = None
    if torchvision is not None:
        rows += _rows(8, 0, 128, 224, seed, torchvision.models.resnet18(weights=None), "torchvision resnet18",
                      "≤ 1.10")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        smp = None
    if smp is not None:  # sides rounded down to multiples of 32 (the U-Net's stride)
        rows += _rows(8, 0, 128, 224, seed, smp.Unet("resnet18", encoder_weights=None), "smp Unet(resnet18)",
                      "≤ 1.10", multiple=32)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
