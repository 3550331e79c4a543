"""``cnnkit demo``: train a mask-aware segmentation network on the built-in data set and write the report.

Steps (:func:`train_demo`):

1. generate a training and a held-out split of :class:`~cnnkit.demo.SyntheticLandCover` (different seeds);
2. estimate class weights from the training labels (:func:`cnnkit.losses.class_weights`,
   median-frequency balancing; unlabelled pixels are not counted);
3. train :class:`~cnnkit.demo.TinySegNet` through :class:`~cnnkit.train.SegmentationTask` with
   ``masked_input=True`` (every padded batch runs through :func:`cnnkit.masked`), on batches of
   similar sizes (:class:`~cnnkit.masking.BucketBatchSampler` + :func:`~cnnkit.masking.collate_padded`),
   the whole scenes mixed with crops around rare-class pixels (:class:`~cnnkit.data.RareClassCrops`),
   with the weighted cross-entropy that ignores −100 (clouds, unlabelled areas, padding);
4. evaluate the mean IoU on the held-out split, and that of a majority-class baseline computed the
   same way (:class:`~cnnkit.metrics.SegmentationMetrics`);
5. write the HTML report (:func:`cnnkit.report.write_report`) and ``data_summary.png`` beside it (sizes
   and the padding share saved by bucketing).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader

from cnnkit.data import RareClassCrops
from cnnkit.demo.dataset import CLASS_NAMES, RARE_CLASS, SyntheticLandCover
from cnnkit.errors import ShapeError
from cnnkit.losses import class_weights
from cnnkit.masking import BucketBatchSampler, collate_padded, masked, padding_fraction
from cnnkit.metrics import SegmentationMetrics
from cnnkit.models import TinySegNet

__all__ = ["DemoResult", "evaluate", "majority_baseline", "padding_shares", "train_demo"]

DEFAULT_EPOCHS = 30
DEFAULT_TRAIN = 160
DEFAULT_HELDOUT = 32


@dataclass
class DemoResult:
    """What :func:`train_demo` measured and wrote.

    Attributes:
        report: Path of ``report.html``.
        data_summary: Path of ``data_summary.png`` (beside the report).
        mean_iou: Mean IoU of the trained network on the held-out split.
        baseline_mean_iou: Mean IoU of predicting the most frequent training class everywhere, same split.
        iou: Per-class IoU of the network on the held-out split (NaN: class absent and never predicted).
        class_weight: The class weights used in the loss.
        padding_bucketed / padding_random: Share of padded pixels of one training epoch's batches with
            :class:`~cnnkit.masking.BucketBatchSampler` and with random batches of the same size.
        rare_share: Share of the rare class among the labelled training pixels.
        seconds: Wall time of the whole run.
        majority: The baseline's class (most frequent in the training labels).
    """

    report: Path
    data_summary: Path
    mean_iou: float
    baseline_mean_iou: float
    iou: list[float]
    class_weight: list[float]
    padding_bucketed: float
    padding_random: float
    rare_share: float
    seconds: float
    majority: int
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)


def evaluate(model: nn.Module, dataset, batch_size: int = 8, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """:class:`~cnnkit.metrics.SegmentationMetrics` of ``masked(model)`` in eval mode over ``dataset``.

    Batches are padded (bucketed, in size order); padding and −100 labels are not counted.
    """
    metrics = SegmentationMetrics(len(CLASS_NAMES))
    sampler = BucketBatchSampler(dataset.sizes, batch_size, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_padded)
    was_training = model.training
    model.eval()
    try:
        runner = masked(model)
        with torch.no_grad():
            for images, labels in loader:
                logits = runner(images.to(device))
                metrics.update(logits.to("cpu"), labels)
    finally:
        model.train(was_training)
    return metrics.compute()


def majority_baseline(majority: int, dataset) -> dict[str, Tensor]:
    """The same metrics for a constant prediction ``majority`` on every pixel of ``dataset``."""
    metrics = SegmentationMetrics(len(CLASS_NAMES))
    for _, label in dataset:
        metrics.update(torch.full_like(label, majority)[None], label[None])
    return metrics.compute()


def padding_shares(sizes, batch_size: int, seed: int) -> tuple[float, float]:
    """Padded share of one epoch's batches: (bucketed, random batches of the same size)."""
    g = torch.Generator().manual_seed(seed)
    bucketed = padding_fraction(BucketBatchSampler(sizes, batch_size, generator=g).batches(), sizes)
    order = torch.randperm(len(sizes), generator=g).tolist()
    randomly = padding_fraction([order[i : i + batch_size] for i in range(0, len(order), batch_size)], sizes)
    return bucketed, randomly


def _data_summary(path: Path, sizes, bucketed: float, randomly: float, rare_share: float) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, middle, right = fig.subplots(1, 3)
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    left.scatter(widths, heights, s=10, alpha=0.6)
    left.set(xlabel="width (px)", ylabel="height (px)", title=f"{len(sizes)} training image sizes")
    bins = list(range(min(heights + widths) - 2, max(heights + widths) + 7, 8))
    middle.hist([heights, widths], bins=bins, label=["height", "width"])
    middle.set(xlabel="pixels", ylabel="images", title="size histogram")
    middle.legend()
    bars = right.bar(["random\nbatches", "BucketBatch\nSampler"], [100 * randomly, 100 * bucketed],
                     color=["#c44e52", "#4c72b0"])
    right.bar_label(bars, fmt="%.1f %%")
    right.set(ylabel="padded pixels (%)", title="padding per epoch", ylim=(0, 100))
    fig.suptitle(f"training data: rare class {100 * rare_share:.2f} % of labelled pixels")
    fig.savefig(path, format="png")
    return path


def _report_samples(dataset: SyntheticLandCover, count: int = 8, side: int = 48) -> list[tuple[Tensor, Tensor]]:
    """Up to ``count`` held-out (image, label) pairs cut to ``side × side`` (write_report stacks them)."""
    chosen = [i for i, (h, w) in enumerate(dataset.sizes) if h >= side and w >= side]
    cloudy = [i for i in chosen if dataset.clouds[i].any()]
    ordered = cloudy[: count // 2] + [i for i in chosen if i not in cloudy[: count // 2]]
    return [(dataset[i][0][:, :side, :side], dataset[i][1][:side, :side]) for i in ordered[:count]]


def train_demo(
    out: str | os.PathLike = "cnnkit-demo",
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: str = "cpu",
    n_train: int = DEFAULT_TRAIN,
    n_heldout: int = DEFAULT_HELDOUT,
    width: int = 16,
    batch_size: int = 8,
    lr: float = 1e-2,
    crop_size: int = 32,
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Train the demo network on the built-in data set, evaluate it, and write the report into ``out``.

    Args:
        out: Run folder (created). Its ``logs/``, ``checkpoints/``, ``tensorboard/`` and ``report/`` from
            an earlier demo are replaced.
        epochs: Training epochs (>= 1).
        seed: Seed of the data, the initial weights and the batch order.
        device: ``"cpu"`` or a CUDA device such as ``"cuda"`` / ``"cuda:0"``.
        n_train, n_heldout: Number of training and held-out scenes.
        width: Channels of :class:`TinySegNet`'s first stage.
        batch_size: Scenes (or crops) per batch.
        lr: AdamW learning rate.
        crop_size: Side of the rare-class crops mixed into each epoch (one per training scene).
        progress: Show Lightning's progress bar.
        log: Called with each line of text to print.

    Returns:
        A :class:`DemoResult`.
    """
    import lightning as L

    from cnnkit.report import write_report
    from cnnkit.train import FilterEvolutionCallback, SegmentationTask, fit

    for name, value, low in (("epochs", epochs, 1), ("n_train", n_train, 2), ("n_heldout", n_heldout, 1),
                             ("width", width, 1), ("batch_size", batch_size, 1), ("crop_size", crop_size, 8)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ShapeError(f"{name} must be an integer >= {low}. Received {name}={value!r}.")
    accelerator, devices = _accelerator(device)
    start = time.perf_counter()
    out = Path(out)
    for old in ("logs", "checkpoints", "tensorboard", "report"):
        if (out / old).is_dir():
            shutil.rmtree(out / old)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    train = SyntheticLandCover(n_train, seed=2 * seed)
    heldout = SyntheticLandCover(n_heldout, seed=2 * seed + 1)
    counts = train.class_counts()
    rare_share = float(counts[RARE_CLASS] / counts.sum())
    weight = class_weights((label for _, label in train), len(CLASS_NAMES), "median_frequency")
    majority = int(counts.argmax())
    log(f"data: {n_train} training and {n_heldout} held-out scenes, {train.bands} bands + validity band, sizes "
        f"{min(min(s) for s in train.sizes)}–{max(max(s) for s in train.sizes)} px, rare class "
        f"'{CLASS_NAMES[RARE_CLASS]}' {100 * rare_share:.2f} % of labelled pixels")
    log("class weights (median frequency): "
        + ", ".join(f"{n} {w:.2f}" for n, w in zip(CLASS_NAMES, weight.tolist())))

    crops = RareClassCrops(train, crop_size=crop_size, class_ratios={RARE_CLASS: 0.5},
                           generator=torch.Generator().manual_seed(seed))
    mixed = ConcatDataset([train, crops])
    sizes = list(train.sizes) + [(crop_size, crop_size)] * len(crops)
    sampler = BucketBatchSampler(sizes, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    train_loader = DataLoader(mixed, batch_sampler=sampler, collate_fn=collate_padded)
    val_loader = DataLoader(heldout, batch_sampler=BucketBatchSampler(heldout.sizes, batch_size, shuffle=False),
                            collate_fn=collate_padded)
    bucketed, randomly = padding_shares(train.sizes, batch_size, seed)

    class _NewCrops(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            crops.set_epoch(trainer.current_epoch)

    net = TinySegNet(in_channels=train.bands + 1, num_classes=len(CLASS_NAMES), width=width)
    task = SegmentationTask(net, len(CLASS_NAMES), class_weight=weight, masked_input=True, lr=lr,
                            weight_decay=1e-4, class_names=CLASS_NAMES)
    steps = epochs * len(sampler)
    evolution = FilterEvolutionCallback("stem.0", every_n_steps=max(1, steps // 8))
    fit(task, train_loader, val_loader, run_dir=out, max_epochs=epochs, resume=None, accelerator=accelerator,
        devices=devices, progress=progress, callbacks=[_NewCrops(), evolution], enable_model_summary=False,
        num_sanity_val_steps=0)
    net.to(torch.device(device))

    result = evaluate(net, heldout, batch_size, device)
    baseline = majority_baseline(majority, heldout)
    samples = [(image.to(device), label) for image, label in _report_samples(heldout)]
    report = write_report(out, model=net, samples=samples, class_names=CLASS_NAMES,
                          title="cnnkit demo: TinySegNet on synthetic land cover with clouds")
    summary = _data_summary(report.parent / "data_summary.png", train.sizes, bucketed, randomly, rare_share)
    return DemoResult(
        report=report, data_summary=summary, mean_iou=float(result["mean_iou"]),
        baseline_mean_iou=float(baseline["mean_iou"]), iou=[float(v) for v in result["iou"]],
        class_weight=weight.tolist(), padding_bucketed=bucketed, padding_random=randomly, rare_share=rare_share,
        seconds=time.perf_counter() - start, majority=majority,
    )


def _accelerator(device: str) -> tuple[str, int | list[int]]:
    if not isinstance(device, str):
        raise ShapeError(f"device must be a string such as 'cpu' or 'cuda:0'. Received device={device!r}.")
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return "cpu", 1
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise ShapeError(f"device {device!r} needs CUDA, which this machine does not have. Use --device cpu.")
        return "gpu", [int(index or 0)]
    raise ShapeError(f"Unknown device {device!r}. Expected 'cpu', 'cuda' or 'cuda:<index>'.")
