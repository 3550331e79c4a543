"""Held-out mean IoU of a real segmentation network against cnnkit's small one, on data where colour says nothing.

On :class:`~cnnkit.data.synthetic.SyntheticTextures` (five classes of one mean colour and one distribution of pixel
values, told apart only by stripes' orientation and frequency, a checkerboard, speckle), two networks train from
random weights for the same epochs on the same batches, each from its family's defaults
(:func:`cnnkit.models.training_defaults`: AdamW, cosine, lr 1e-3 for smp's convolutional networks, 1e-2 for
cnnkit's), through :class:`cnnkit.train.SegmentationTask` and :func:`cnnkit.train.fit`:

* smp ``Unet`` on ``resnet18`` (14.3 M parameters, receptive field of hundreds of pixels);
* cnnkit's ``TinySegNet`` (width 16, 15 k parameters).

Row: the held-out mean IoU of each (and the majority class's, the floor), goal Unet > TinySegNet; ``ms`` and
``baseline_ms`` are their training wall times (one thread, on a shared machine: not a speed comparison).

Run: ``python -m benchmarks networks`` (about 4 minutes on a loaded 2-core machine, one thread).
"""

from __future__ import annotations

import tempfile
import time

import torch
from torch.utils.data import DataLoader

from cnnkit.data.synthetic import SyntheticTextures
from cnnkit.metrics import SegmentationMetrics
from cnnkit.models import build, spec_for, training_defaults
from cnnkit.train import SegmentationTask, fit

EPOCHS = 24
TRAIN, HELDOUT, SIZE, BATCH = 48, 16, 64, 8


def held_out_iou(net: torch.nn.Module, heldout: SyntheticTextures) -> tuple[float, list[float]]:
    """(mean IoU, IoU of each class) on ``heldout``."""
    metrics = SegmentationMetrics(heldout.num_classes)
    net.eval()
    with torch.no_grad():
        for image, label in heldout:
            metrics.update(net(image[None]), label[None])
    result = metrics.compute()
    return float(result["mean_iou"]), [float(v) for v in result["iou"]]


def train(spec, data: SyntheticTextures, heldout: SyntheticTextures, epochs: int, seed: int):
    """((held-out mean IoU, per-class IoU), training seconds) of ``spec``'s network from its family's defaults."""
    torch.manual_seed(seed)
    net = build(spec, in_channels=data.bands, num_classes=data.num_classes, validity_band=False)
    defaults = training_defaults(spec)
    task = SegmentationTask(net, data.num_classes, optimizer=defaults.optimizer, lr=defaults.lr,
                            weight_decay=defaults.weight_decay, scheduler=defaults.schedule,
                            warmup_epochs=defaults.warmup_epochs)
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        fit(task, loader, run_dir=run_dir, max_epochs=epochs, progress=False, enable_model_summary=False)
    seconds = time.perf_counter() - start
    return held_out_iou(net, heldout), seconds


def majority_iou(data: SyntheticTextures, heldout: SyntheticTextures) -> float:
    majority = int(data.class_counts().argmax())
    metrics = SegmentationMetrics(heldout.num_classes)
    for _, label in heldout:
        logits = torch.zeros(1, heldout.num_classes, *label.shape)
        logits[:, majority] = 1
        metrics.update(logits, label[None])
    return float(metrics.compute()["mean_iou"])


def run(seed: int = 0, epochs: int = EPOCHS) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a shared machine, spinning OpenMP threads cost more than they give
    try:
        data = SyntheticTextures(TRAIN, seed=seed, size=SIZE)
        heldout = SyntheticTextures(HELDOUT, seed=seed + 1000, size=SIZE)
        (unet, unet_classes), unet_s = train(spec_for("Unet", encoder="resnet18"), data, heldout, epochs, seed)
        (tiny, tiny_classes), tiny_s = train(spec_for("TinySegNet"), data, heldout, epochs, seed)
        floor = majority_iou(data, heldout)
    finally:
        torch.set_num_threads(threads)
    return [{
        "benchmark": f"held-out mean IoU on SyntheticTextures ({TRAIN} train / {HELDOUT} held-out, {SIZE} px, "
                     f"{epochs} epochs, family defaults): Unet(resnet18) random weights {unet:.3f} vs TinySegNet "
                     f"{tiny:.3f} (majority class {floor:.3f}); ms = training time",
        "baseline": "TinySegNet, same epochs and batches", "ms": 1000 * unet_s, "baseline_ms": 1000 * tiny_s,
        "ratio": unet / tiny, "goal": "> 1 (IoU)", "unet_iou": unet, "tinysegnet_iou": tiny, "majority_iou": floor,
        "classes": list(data.class_names), "unet_class_iou": unet_classes, "tinysegnet_class_iou": tiny_classes,
    }]


if __name__ == "__main__":
    for row in run():
        print(row)
