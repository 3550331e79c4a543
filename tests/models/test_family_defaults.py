"""Each family of :data:`cnnkit.models.FAMILY_DEFAULTS` trains from its defaults on a tiny built-in data set:
the loss stays finite and falls, and the held-out mean IoU beats the majority class's (counted by hand)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cnnkit.data import SyntheticLandCover, crop_series
from cnnkit.masking import IGNORE_INDEX
from cnnkit.models import FAMILY_DEFAULTS, build, family_of, spec_for, training_defaults
from cnnkit.train import SegmentationTask, SeriesSegmentationTask
from cnnkit.train.callbacks import DivergenceStop

EPOCHS = {"cnnkit": 4, "cnnkit-series": 12, "attention-series": 12, "convolutional": 4, "transformer": 4}
"""A few epochs each; the series network sees a fraction of a second of CPU per epoch, so it gets more."""

# One network per family, small enough for seconds of CPU at 32 × 32.
NETWORKS = {
    "cnnkit": spec_for("TinySegNet", args={"width": 8}),
    "cnnkit-series": spec_for("SeriesSegNet", args={"width": 8, "hidden": 8}),
    "attention-series": spec_for("UTAE", args={"encoder_widths": [8, 8], "d_model": 16, "num_heads": 2}),
    "convolutional": spec_for("Unet", encoder="resnet18"),
    "transformer": spec_for("Segformer", encoder="mit_b0"),
}


def test_every_family_has_a_network_here():
    assert set(NETWORKS) == set(FAMILY_DEFAULTS)
    assert all(family_of(spec) == family for family, spec in NETWORKS.items())


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.epochs: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(float(trainer.callback_metrics["train/loss_epoch"]))


def _images(count: int, seed: int):
    data = SyntheticLandCover(count, seed=seed, min_size=32, max_size=32)
    return list(data), data.num_classes


def _series(count: int, seed: int):
    items = []
    for series, label in crop_series(count, seed, steps=(6, 6), sides=(16, 16)):
        valid = series.isfinite().all(1)
        items.append(((torch.nan_to_num(series), valid), label))
    return items, int(max(int(label.max()) for _, label in items)) + 1


def _stack(items):
    if isinstance(items[0][0], tuple):
        xs = torch.stack([x for (x, _), _ in items])
        valid = torch.stack([v for (_, v), _ in items])
        return (xs, valid), torch.stack([label for _, label in items])
    return torch.stack([x for x, _ in items]), torch.stack([label for _, label in items])


def _mean_iou(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean IoU over the classes present in the labels or the predictions, by hand."""
    counted = labels != IGNORE_INDEX
    p, t = predicted[counted], labels[counted]
    ious = []
    for c in range(num_classes):
        union = int(((p == c) | (t == c)).sum())
        if union:
            ious.append(int(((p == c) & (t == c)).sum()) / union)
    return sum(ious) / len(ious)



@pytest.mark.parametrize("family", sorted(NETWORKS))
def test_family_trains_from_its_defaults(family, tmp_path, one_thread):
    spec = NETWORKS[family]
    series = family.endswith("series")
    train, num_classes = _series(12, 0) if series else _images(16, 0)
    heldout, _ = _series(6, 1) if series else _images(8, 1)
    in_channels = train[0][0][0].shape[1] if series else train[0][0].shape[0]
    torch.manual_seed(0)
    net = build(spec, in_channels=in_channels, num_classes=num_classes, validity_band=not series)
    defaults = training_defaults(spec)
    kind = SeriesSegmentationTask if series else SegmentationTask
    task = kind(net, num_classes, optimizer=defaults.optimizer, lr=defaults.lr, weight_decay=defaults.weight_decay,
                scheduler=defaults.schedule, warmup_epochs=defaults.warmup_epochs)
    losses = _Losses()
    loader = DataLoader(train, batch_size=4, shuffle=True, collate_fn=_stack,
                        generator=torch.Generator().manual_seed(0))
    # Lightning's Trainer without checkpoints or logs (fit() writes last.ckpt every epoch: 170 MB for a Unet)
    trainer = L.Trainer(max_epochs=EPOCHS[family], accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path,
                        callbacks=[losses, DivergenceStop(defaults.lr)])
    trainer.fit(task, loader)

    assert len(losses.epochs) == EPOCHS[family] and all(torch.isfinite(torch.tensor(losses.epochs)))
    assert losses.epochs[-1] < losses.epochs[0], losses.epochs
    images, labels = _stack(heldout)
    net.eval()
    with torch.no_grad():
        predicted = (net(*images) if series else net(images)).argmax(1)
    counts = torch.bincount(torch.cat([label[label != IGNORE_INDEX] for _, label in train]), minlength=num_classes)
    majority = torch.full_like(labels, int(counts.argmax()))
    iou, floor = _mean_iou(predicted, labels, num_classes), _mean_iou(majority, labels, num_classes)
    assert iou > floor, (family, iou, floor, losses.epochs)
