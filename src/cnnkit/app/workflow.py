"""The steps one training workflow shares, for images and image time series alike.

``cnnkit train`` on a folder of images (:func:`cnnkit.app.train_segmentation`) and on a folder of series
(:func:`cnnkit.app.train_series`) run one pipeline: check the options, hold out a split, count the classes and name
the rare ones, choose the device, fit, evaluate the network and a majority-class baseline on the held-out split,
write the report and the manifest. What differs between the two is what an item is (:class:`Kind`: where its label
sits, how a batch is padded, how the network is called); everything else is here, once.

* :class:`Kind` (:data:`IMAGES`, :data:`SERIES`): an item's layout, its batches and the network's call;
* :func:`evaluate` — held-out metrics (and label maps) of a network, padding and −100 left out;
* :func:`majority_baseline` — the same metrics for the most frequent training class everywhere;
* :func:`count_classes` — labelled pixels per class (labels checked), unlabelled and missing pixels;
* :func:`training_options` — warm-up, encoder learning-rate factor, frozen encoder, gradient accumulation: given or
  the family's defaults, each with its source;
* :func:`holdout_split`, :func:`validation_period`, :func:`choose_accelerator`, :func:`learning_rate`,
  :data:`RARE_CROP_SHARE`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cnnkit._checks import check_int
from cnnkit._tensors import argmax
from cnnkit.errors import ShapeError
from cnnkit.masking import BucketBatchSampler, collate_padded, masked, spatial_sizes
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.metrics import SegmentationMetrics

__all__ = [
    "IMAGES",
    "RARE_CROP_SHARE",
    "SERIES",
    "ClassCounts",
    "Kind",
    "Subset",
    "TrainingOptions",
    "check_class_names",
    "choose_accelerator",
    "choose_network",
    "count_classes",
    "evaluate",
    "holdout_split",
    "learning_rate",
    "majority_baseline",
    "silent",
    "training_options",
    "validation_period",
]

RARE_CROP_SHARE = 0.5
"""Share of the rare-class crops centred on a rare pixel (split evenly between the rare classes)."""


# -- what an item is ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What differs between an image item and a series item, for the shared steps.

    Attributes:
        name: ``"images"`` or ``"series"`` (as the log and the report count them).
        label_index: Where an item's ``(H, W)`` label map sits: ``(image, label)`` or ``(series, valid, label, …)``.
        collate: Pads items into ``(inputs, labels)``: the network's positional inputs and the ``(N, H, W)`` labels.
        runner: The network as the evaluation calls it on ``inputs`` (images through :func:`cnnkit.masked`; a
            series network takes ``(x, valid, days)`` and masks itself).
    """

    name: str
    label_index: int
    collate: Callable[[Sequence[tuple]], tuple[tuple[Tensor, ...], Tensor]]
    runner: Callable[[nn.Module], Callable[..., Tensor]]

    def sizes(self, dataset) -> list[tuple[int, ...]]:
        """Each item's size for :class:`~cnnkit.masking.BucketBatchSampler`: ``(H, W)``, or ``(T, H, W)``."""
        if self is IMAGES:
            return spatial_sizes(dataset)
        sizes = getattr(dataset, "sizes", None)
        if sizes is None:
            sizes = [(int(item[0].shape[0]), *item[0].shape[2:]) for item in (dataset[i] for i in range(len(dataset)))]
        return [tuple(int(v) for v in size) for size in sizes]


def _collate_images(items):
    images, labels = collate_padded(items)
    return (images,), labels


def _collate_series(items):
    from cnnkit.data.series import collate_series

    batch = collate_series(items)
    return (batch[0], batch[1], batch.days), batch[2]


IMAGES = Kind("images", 1, _collate_images, masked)
"""Items ``(image (C, H, W), label (H, W))``; the network runs through :func:`cnnkit.masked` on padded batches."""
SERIES = Kind("series", 2, _collate_series, lambda model: model)
"""Items ``(series (T, C, H, W), valid (T, H, W), label (H, W)[, weight])`` (:class:`~cnnkit.data.series.SeriesItem`,
with their acquisition days); the network is called ``(x, valid, days)``."""


# -- held-out scores ---------------------------------------------------------------------------------


def evaluate(model: nn.Module, dataset, num_classes: int, batch_size: int = 8,
             device: str | torch.device = "cpu", *, kind: Kind = IMAGES, keep: Sequence[int] = (),
             predictions: dict[int, Tensor] | None = None) -> dict[str, Tensor]:
    """:class:`~cnnkit.metrics.SegmentationMetrics` of ``model`` in eval mode over ``dataset``.

    Batches are padded (bucketed, in size order, :class:`~cnnkit.masking.BucketBatchSampler`); padding and −100
    labels are not counted. The model's mode is restored.

    Args:
        model: The network (images: run through :func:`cnnkit.masked`; series: called ``(x, valid, days)``).
        dataset: Items of ``kind``.
        num_classes: Number of classes.
        batch_size: Items per batch.
        device: Where the network is.
        kind: :data:`IMAGES` or :data:`SERIES`.
        keep: Items (by index) whose predicted label maps go into ``predictions``.
        predictions: Filled with ``{index: (H, W) labels}`` for the items ``keep``, unpadded.
    """
    metrics = SegmentationMetrics(num_classes, sync_on_compute=False)  # the whole set, in this process alone
    sizes = kind.sizes(dataset)
    sampler = BucketBatchSampler(sizes, batch_size, shuffle=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=kind.collate)
    keep = set(keep)
    was_training = model.training
    model.eval()
    try:
        runner = kind.runner(model)
        with torch.no_grad():
            for batch, (inputs, labels) in zip(sampler, loader):
                logits = runner(*(x.to(device) for x in inputs)).to("cpu")
                metrics.update(logits, labels)
                for n, i in enumerate(batch):
                    if i in keep and predictions is not None:
                        h, w = sizes[i][-2:]
                        predictions[i] = argmax(logits[n, :, :h, :w], 0)
    finally:
        model.train(was_training)
    return metrics.compute()


def majority_baseline(majority: int, dataset, num_classes: int, *, kind: Kind = IMAGES) -> dict[str, Tensor]:
    """The same metrics as :func:`evaluate` for the constant prediction ``majority`` on every pixel of ``dataset``."""
    metrics = SegmentationMetrics(num_classes, sync_on_compute=False)  # rank 0 alone, after a distributed fit
    for i in range(len(dataset)):
        label = torch.as_tensor(dataset[i][kind.label_index])
        metrics.update(torch.full_like(label, majority)[None], label[None])
    return metrics.compute()


# -- classes -----------------------------------------------------------------------------------------


@dataclass
class ClassCounts:
    """What :func:`count_classes` found in the training split.

    Attributes:
        counts: Labelled pixels of each class (float64).
        unlabelled: Pixels labelled −100 (no data pixels included).
        missing: Pixels without data (validity band 0 or every date invalid), when the items say so, else 0.
        pixels: All pixels of the split.
    """

    counts: Tensor
    unlabelled: int
    missing: int
    pixels: int

    @property
    def share(self) -> list[float]:
        """Each class's share of the labelled pixels."""
        return (self.counts / self.counts.sum()).tolist()

    @property
    def majority(self) -> int:
        """The most frequent class (the first of equals)."""
        return int(self.counts.argmax())

    def rare(self, below: float) -> list[int]:
        """Classes present under ``below`` of the labelled pixels."""
        return [k for k, s in enumerate(self.share) if 0 < s < below]


def count_classes(dataset, num_classes: int, *, kind: Kind = IMAGES, validity_band: bool = False) -> ClassCounts:
    """Count the labelled pixels of every class of ``dataset`` (−100 never counts), checking each label.

    ``validity_band``: an image item's last channel is 1 where there is data; pixels where it is 0 count as
    missing. A series pixel is missing when no date of it is valid.

    Raises:
        ShapeError: a label outside ``[0, num_classes)`` and not −100, or no labelled pixel at all.
    """
    counts = torch.zeros(num_classes, dtype=torch.float64)
    unlabelled = missing = pixels = 0
    for i in range(len(dataset)):
        item = dataset[i]
        label = torch.as_tensor(item[kind.label_index])
        counted = label[label != IGNORE_INDEX]
        if counted.numel() and (counted.min() < 0 or counted.max() >= num_classes):
            bad = int(counted[(counted < 0) | (counted >= num_classes)][0])
            hint = (f" If {bad} marks pixels without a label, pass ignore_index={bad} (--ignore-index {bad})."
                    if bad >= num_classes else "")
            raise ShapeError(f"labels must be class indices in [0, {num_classes}) or -100 (num_classes={num_classes}). "
                             f"Received a label {bad} in training {kind.name} {i}.{hint}")
        counts += torch.bincount(counted.flatten(), minlength=num_classes)
        unlabelled += label.numel() - counted.numel()
        pixels += label.numel()
        if kind is SERIES:
            missing += int((~torch.as_tensor(item[1]).any(0)).sum())
        elif validity_band:
            missing += int((torch.as_tensor(item[0])[-1] == 0).sum())
    if counts.sum() == 0:
        raise ShapeError("The training labels hold no labelled pixel (all are -100).")
    return ClassCounts(counts, unlabelled, missing, pixels)


def check_class_names(class_names: Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """``class_names`` as a tuple, one per class (default ``"class 0"``, …); ``num_classes`` an integer ≥ 2."""
    check_int(num_classes, "num_classes", 2)
    names = tuple(class_names) if class_names is not None else tuple(f"class {k}" for k in range(num_classes))
    if len(names) != num_classes:
        raise ShapeError(f"class_names must name all {num_classes} classes. Received {len(names)} names: {names}.")
    return names


# -- splits, schedule, device ------------------------------------------------------------------------


def holdout_split(folder, fraction: float, seed: int, unit: str = "image"):
    """Hold out a random ``fraction`` of ``folder`` (at least one item each side), seeded.

    Returns:
        ``(train_part, held_part, description)``: two :class:`Subset` views and a line for the log.
    """
    if not 0 < fraction < 1:
        raise ShapeError(f"heldout_fraction must be in (0, 1). Received heldout_fraction={fraction!r}.")
    if len(folder) < 2:
        raise ShapeError(f"{str(folder.root)!r} holds {len(folder)} {unit}: at least 2 are needed to hold one out "
                         "(or give a held-out folder).")
    order = torch.randperm(len(folder), generator=torch.Generator().manual_seed(seed)).tolist()
    count = min(len(folder) - 1, max(1, round(fraction * len(folder))))
    train_part, held_part = Subset(folder, sorted(order[count:])), Subset(folder, sorted(order[:count]))
    units = unit if unit.endswith("s") else f"{unit}s"
    return train_part, held_part, f"{count} of {len(folder)} {units} held out at random (seed {seed})"


class Subset(Dataset):
    """``indices`` of a folder data set, with its ``sizes`` and ``label`` where the folder has them."""

    def __init__(self, folder, indices: list[int]):
        self.folder, self.indices = folder, indices
        if hasattr(folder, "sizes"):
            self.sizes = [folder.sizes[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.folder[self.indices[index]]

    def label(self, index: int) -> Tensor:
        return self.folder.label(self.indices[index])


def validation_period(val_every: int, epochs: int) -> int:
    """The largest period ≤ ``val_every`` that divides ``epochs``, so that the last epoch validates.

    Examples:
        >>> validation_period(2, 24), validation_period(12, 36), validation_period(5, 16), validation_period(3, 1)
        (2, 12, 4, 1)
    """
    return max(d for d in range(1, min(val_every, epochs) + 1) if epochs % d == 0)


def choose_network(model_spec, kind: Kind, *, width: int, hidden: int = 16, kernel_size: int = 3):
    """The spec of the network a run trains, one rule for images and series: ``model_spec`` checked (known names,
    arguments that fit, with the closest names otherwise) and of the kind of data — a network of a series family
    (it reads ``(series, valid, days)``) for series, any other for images — or the kind's default network:
    TinySegNet of ``width`` for images, SeriesSegNet of ``width``, ``hidden`` and ``kernel_size`` for series.

    Examples:
        >>> choose_network(None, IMAGES, width=8)
        ModelSpec(library='cnnkit', architecture='TinySegNet', encoder=None, args={'width': 8})
        >>> choose_network({"library": "cnnkit", "architecture": "UTAE"}, IMAGES, width=16)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: UTAE reads image time series (family ...), and these are single \
images. Choose an image network (cnnkit models lists them), or train on a folder of series. Received UTAE.
    """
    from cnnkit.models import family_of, parse_spec, resolve, spec_for

    if model_spec is None:
        if kind is SERIES:
            return spec_for("SeriesSegNet", args={"width": width, "hidden": hidden, "kernel_size": kernel_size})
        return spec_for("TinySegNet", args={"width": width})
    spec = parse_spec(model_spec)
    resolve(spec)  # unknown names (with the closest ones) and arguments that do not fit, before any data is read
    family = family_of(spec)
    if kind is SERIES and not family.endswith("series"):
        raise ShapeError(f"A time-series run trains a network that reads (series, valid): one of a series family, "
                         f"such as SeriesSegNet. Received {spec.label()} (family {family!r}).")
    if kind is IMAGES and family.endswith("series"):
        raise ShapeError(f"{spec.label()} reads image time series (family {family!r}), and these are single images. "
                         f"Choose an image network (cnnkit models lists them), or train on a folder of series. "
                         f"Received {spec.label()}.")
    return spec


def choose_accelerator(device: str) -> tuple[str, int | list[int]]:
    """Lightning's ``(accelerator, devices)`` for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:<index>"``).

    Examples:
        >>> choose_accelerator("cpu")
        ('cpu', 1)
        >>> choose_accelerator("tpu")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: Unknown device 'tpu'. Expected 'cpu', 'cuda' or 'cuda:<index>'.
    """
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


def learning_rate(lr: float | None, default: float, family: str) -> tuple[float, str]:
    """``(the learning rate, where it came from)``: ``lr`` as given (``"--lr"``), else the family's default.

    Examples:
        >>> learning_rate(None, 0.01, "the cnnkit family")
        (0.01, 'default of the cnnkit family')
        >>> learning_rate(3e-4, 0.01, "the cnnkit family")
        (0.0003, '--lr')
    """
    if lr is None:
        return float(default), f"default of {family}"
    return float(lr), "--lr"


def silent(text: str) -> None:
    """The ``log`` of the processes other than rank 0 of a distributed run."""


# -- training options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingOptions:
    """The training options a run applies, each with where it came from (the family's defaults or the user).

    Attributes:
        warmup_epochs: Epochs of linear learning-rate warm-up (:class:`~cnnkit.train.SegmentationTask`).
        encoder_lr_factor: The encoder's learning rate is ``lr`` times this.
        freeze_encoder_epochs: The encoder is frozen for this many first epochs.
        accumulate_grad_batches: One optimizer step every this many batches (:func:`cnnkit.train.fit`).
        sources: Where each came from, by attribute name (``"--warmup-epochs"``, ``"default of the …"``).
    """

    warmup_epochs: int = 0
    encoder_lr_factor: float = 1.0
    freeze_encoder_epochs: int = 0
    accumulate_grad_batches: int = 1
    sources: dict = field(default_factory=dict)

    def task_kwargs(self) -> dict:
        """The keyword arguments of :class:`~cnnkit.train.SegmentationTask` these set."""
        return {"warmup_epochs": self.warmup_epochs, "encoder_lr_factor": self.encoder_lr_factor,
                "freeze_encoder_epochs": self.freeze_encoder_epochs}

    def rows(self) -> list[tuple[str, object, str]]:
        """``(setting, value, source)`` for the report's *How this run was made*."""
        return [("warm-up epochs", self.warmup_epochs, self.sources.get("warmup_epochs", "")),
                ("encoder learning-rate factor", self.encoder_lr_factor, self.sources.get("encoder_lr_factor", "")),
                ("encoder frozen (epochs)", self.freeze_encoder_epochs, self.sources.get("freeze_encoder_epochs", "")),
                ("batches per optimizer step", self.accumulate_grad_batches,
                 self.sources.get("accumulate_grad_batches", ""))]

    def text(self) -> str:
        """What the log says of them: only those that change the plain run."""
        parts = []
        if self.warmup_epochs:
            parts.append(f"{self.warmup_epochs}-epoch warm-up ({self.sources['warmup_epochs']})")
        if self.encoder_lr_factor != 1.0:
            parts.append(f"encoder learning rate ×{self.encoder_lr_factor:g} ({self.sources['encoder_lr_factor']})")
        if self.freeze_encoder_epochs:
            parts.append(f"encoder frozen for {self.freeze_encoder_epochs} epochs "
                         f"({self.sources['freeze_encoder_epochs']})")
        if self.accumulate_grad_batches != 1:
            parts.append(f"gradients accumulated over {self.accumulate_grad_batches} batches "
                         f"({self.sources['accumulate_grad_batches']})")
        return ", ".join(parts)


def training_options(defaults, family: str, *, has_encoder: bool, pretrained: bool,
                     warmup_epochs: int | None = None, encoder_lr_factor: float | None = None,
                     freeze_encoder_epochs: int = 0, accumulate_grad_batches: int = 1) -> TrainingOptions:
    """The options a run applies: those given, the family's ``defaults`` (:func:`cnnkit.models.training_defaults`)
    for the rest. The family's encoder factor applies to a pretrained encoder only. Checked before any data is read.

    Examples:
        >>> from cnnkit.models import FAMILY_DEFAULTS
        >>> options = training_options(FAMILY_DEFAULTS["convolutional"], "the 'convolutional' family",
        ...                            has_encoder=True, pretrained=True, freeze_encoder_epochs=2)
        >>> options.text()
        "encoder learning rate ×0.1 (default of the 'convolutional' family, pretrained encoder), encoder frozen for \
2 epochs (--freeze-encoder)"
        >>> training_options(FAMILY_DEFAULTS["cnnkit"], "the 'cnnkit' family", has_encoder=False, pretrained=False,
        ...                  freeze_encoder_epochs=1)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: --freeze-encoder needs a network with an encoder (an smp architecture such as \
Unet). Received --freeze-encoder 1.
    """
    sources = {}
    if warmup_epochs is None:
        warmup_epochs, sources["warmup_epochs"] = int(defaults.warmup_epochs), f"default of {family}"
    else:
        warmup_epochs, sources["warmup_epochs"] = check_int(warmup_epochs, "warmup_epochs", 0), "--warmup-epochs"
    freeze_encoder_epochs = check_int(freeze_encoder_epochs, "freeze_encoder_epochs", 0)
    sources["freeze_encoder_epochs"] = "--freeze-encoder" if freeze_encoder_epochs else ""
    accumulate_grad_batches = check_int(accumulate_grad_batches, "accumulate_grad_batches", 1)
    sources["accumulate_grad_batches"] = "--accumulate-grad-batches" if accumulate_grad_batches != 1 else ""
    if encoder_lr_factor is None:
        factor = float(defaults.encoder_lr_factor) if has_encoder and pretrained else 1.0
        sources["encoder_lr_factor"] = f"default of {family}, pretrained encoder" if factor != 1.0 else ""
    else:
        factor = encoder_lr_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < float("inf"):
            raise ShapeError(f"--encoder-lr-factor must be a number > 0. Received --encoder-lr-factor {factor!r}.")
        factor, sources["encoder_lr_factor"] = float(factor), "--encoder-lr-factor"
    for option, value, active in (("--freeze-encoder", freeze_encoder_epochs, freeze_encoder_epochs > 0),
                                  ("--encoder-lr-factor", encoder_lr_factor,
                                   encoder_lr_factor is not None and encoder_lr_factor != 1.0)):
        if active and not has_encoder:
            raise ShapeError(f"{option} needs a network with an encoder (an smp architecture such as Unet). "
                             f"Received {option} {value}.")
    return TrainingOptions(warmup_epochs, factor, freeze_encoder_epochs, accumulate_grad_batches, sources)
