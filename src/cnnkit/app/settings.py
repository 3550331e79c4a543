"""How a run trains, for images and image time series alike: one :class:`TrainSettings`.

:func:`cnnkit.app.train_segmentation` and :func:`cnnkit.app.train_series` (and so ``cnnkit train``, the demos and
:func:`~cnnkit.app.train_folder`) take the same settings object, or the same names as keyword arguments. A field left
at ``None`` takes the default of the kind of data (:data:`KIND_DEFAULTS`: images and series differ in epochs,
schedule and the default network's size) or of the network's family (the learning rate, warm-up, the encoder's
factor: :func:`cnnkit.models.training_defaults`). A setting that does not apply to the kind of data (crops per series
for images, several processes for series) is refused rather than ignored.

Examples:
    >>> settings = TrainSettings(epochs=4, lr=1e-3)
    >>> settings.resolved("images").scheduler, settings.resolved("series").scheduler
    ('cosine', None)
    >>> TrainSettings(scheduler=None).resolved("images").scheduler is None  # constant, asked for
    True
    >>> settings_for("images", None, {"epoch": 4})
    Traceback (most recent call last):
    ...
    cnnkit.errors.ShapeError: Unknown training setting 'epoch' (did you mean 'epochs' or 'epoch_lines'?). \
Expected one of ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from cnnkit._checks import check_int
from cnnkit.app.workflow import RARE_CROP_SHARE
from cnnkit.errors import ShapeError

__all__ = ["KIND_DEFAULTS", "SETTING_NAMES", "TrainSettings", "pop_settings", "settings_for"]

@dataclass(frozen=True)
class TrainSettings:
    """How a run trains: the same fields for images and image time series.

    Attributes:
        epochs: Training epochs (>= 1); ``None``: 30 for images, 12 for series.
        seed: Seed of the initial weights, the crops and the batch order.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
        batch_size: Items (or crops) per batch: the global batch, over all processes.
        lr: AdamW learning rate (the first one, with ``scheduler``); ``None``: the network family's
            (:func:`cnnkit.models.training_defaults`: 1e-2 for cnnkit's networks, 1e-3 for smp's convolutional ones),
            shown in the log. A loss that diverges stops the run with what to change.
        scheduler: ``"cosine"`` (``lr`` down to 0 over the run) or ``None`` (constant); ``"default"``: ``"cosine"``
            for images, constant for series (on the demo series, 240 cosine steps gave held-out mean IoU 0.26 where 276
            constant-rate steps gave 0.59, see ``docs/timeseries.md``).
        width: Channels of the default network's first stage (TinySegNet: 16; SeriesSegNet: 8).
        hidden: Series: hidden channels of the default SeriesSegNet's ConvLSTM (16).
        kernel_size: Series: window of the default SeriesSegNet's ConvLSTM (3).
        crop_size: Side of the training crops (a multiple of the network's size multiple for images).
        crops_per_series: Series: crops of each series per epoch (images: the rare-class crops are extra).
        rare_below: A class under this share of the labelled training pixels is rare.
        rare_share: Share of the crops centred on a rare-class pixel (series; images mix in crops of this share
            of the rare classes).
        weighting: ``method`` of :func:`cnnkit.losses.class_weights` (ENet's ``1 / ln(1.02 + share)`` by default),
            or ``None`` (series only): every class weighs 1.
        val_every: Validate at most every this many epochs, on a period that divides ``epochs`` so that the last
            epoch validates; the final evaluation always runs.
        warmup_epochs: Epochs of linear learning-rate warm-up (``None``: the family's).
        encoder_lr_factor: The encoder's learning rate is ``lr`` times this (``None``: the family's factor for a
            pretrained encoder, 1 otherwise); needs a network with an ``encoder``.
        freeze_encoder_epochs: Keep the encoder frozen for this many first epochs (needs an ``encoder``).
        accumulate_grad_batches: One optimizer step every this many batches (Lightning's gradient accumulation).
        devices, num_nodes, strategy, precision: Images: train on ``devices`` processes or GPUs per node on
            ``num_nodes`` machines with Lightning's ``strategy`` and ``precision`` (see
            :func:`cnnkit.app.train.check_scaling`). Series train in one process.
        single_date_baseline: Series: also train and evaluate the network on each series' least cloudy date.
        progress: Show Lightning's progress bar.
        quiet: Hide Lightning's banners, tips and known-harmless warnings.
        epoch_lines: Print one line per epoch through ``log``.
        log: Called with each line of text to print.
        overwrite: The run folder holds an earlier cnnkit run: remove what that run wrote and train afresh.
        resume: The run folder holds an earlier cnnkit run: continue its training from ``checkpoints/last.ckpt``.
    """

    epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8
    lr: float | None = None
    scheduler: str | None = "default"
    width: int | None = None
    hidden: int = 16
    kernel_size: int = 3
    crop_size: int = 32
    crops_per_series: int = 1
    rare_below: float = 0.05
    rare_share: float = RARE_CROP_SHARE
    weighting: str | None = "enet"
    val_every: int = 1
    warmup_epochs: int | None = None
    encoder_lr_factor: float | None = None
    freeze_encoder_epochs: int = 0
    accumulate_grad_batches: int = 1
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    single_date_baseline: bool = True
    progress: bool = True
    quiet: bool = True
    epoch_lines: bool = True
    log: Callable[[str], None] = print
    overwrite: bool = False
    resume: bool = False

    def resolved(self, kind: str) -> TrainSettings:
        """These settings with the kind's defaults filled in (:data:`KIND_DEFAULTS`) and checked for ``kind``
        (``"images"`` or ``"series"``).

        Raises:
            ShapeError: a value out of range, or a setting the kind of data does not take.
        """
        if kind not in KIND_DEFAULTS:
            raise ShapeError(f"kind must be one of {sorted(KIND_DEFAULTS)}. Received kind={kind!r}.")
        filled = {name: value for name, value in KIND_DEFAULTS[kind].items()  # scheduler=None means constant
                  if getattr(self, name) == "default" or (name != "scheduler" and getattr(self, name) is None)}
        settings = replace(self, **filled)
        settings._check(kind)
        return settings

    def _check(self, kind: str) -> None:
        for name, low in (("epochs", 1), ("width", 1), ("hidden", 1), ("kernel_size", 1), ("batch_size", 1),
                          ("crop_size", 4), ("crops_per_series", 1), ("val_every", 1),
                          ("accumulate_grad_batches", 1), ("freeze_encoder_epochs", 0)):
            check_int(getattr(self, name), name, low)
        if not 0 <= self.rare_below < 1:
            raise ShapeError(f"rare_below must be in [0, 1). Received rare_below={self.rare_below!r}.")
        if not 0 <= self.rare_share <= 1:
            raise ShapeError(f"rare_share must be in [0, 1]. Received rare_share={self.rare_share!r}.")
        if self.scheduler not in (None, "cosine"):
            raise ShapeError(f"scheduler must be 'cosine' or None (constant). Received scheduler={self.scheduler!r}.")
        if kind == "images" and self.weighting is None:
            raise ShapeError("weighting=None (every class weighs 1) is for series; images take a method of "
                             "cnnkit.losses.class_weights. Received weighting=None.")
        unused = [name for name, value in _NOT_FOR[kind].items() if getattr(self, name) != value]
        if unused:
            what = "image time series" if kind == "series" else "single images"
            raise ShapeError(f"{', '.join(unused)}: not a setting for {what} "
                             f"({'; '.join(_WHY[kind][name] for name in unused)}). Received "
                             + ", ".join(f"{name}={getattr(self, name)!r}" for name in unused) + ".")


KIND_DEFAULTS: Mapping[str, Mapping[str, object]] = {
    "images": {"epochs": 30, "scheduler": "cosine", "width": 16},
    "series": {"epochs": 12, "scheduler": None, "width": 8},
}
"""What ``None`` (and the scheduler's ``"default"``) means for each kind of data."""

_NOT_FOR = {  # the settings a kind of data does not take, with their neutral values
    "images": {"crops_per_series": 1, "single_date_baseline": True},
    "series": {"devices": 1, "num_nodes": 1, "strategy": "auto", "precision": None},
}
_WHY = {
    "images": {"crops_per_series": "images train whole, with rare-class crops mixed in",
               "single_date_baseline": "there is no date to choose"},
    "series": {name: "a time-series run trains in one process, for now"
               for name in ("devices", "num_nodes", "strategy", "precision")},
}


SETTING_NAMES = frozenset(f.name for f in fields(TrainSettings))
"""The names of :class:`TrainSettings`' fields: what the training functions take as keyword arguments."""


def settings_for(kind: str, settings: TrainSettings | None, options: Mapping[str, object]) -> TrainSettings:
    """``settings`` (default :class:`TrainSettings`) with ``options`` (keyword arguments of the same names) applied,
    resolved for ``kind``. An unknown name is refused with the closest ones.

    Examples:
        >>> settings_for("series", TrainSettings(epochs=3), {"batch_size": 2}).batch_size
        2
    """
    names = [f.name for f in fields(TrainSettings)]
    unknown = [name for name in options if name not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ShapeError(f"Unknown training setting {unknown[0]!r}{hint}. Expected one of {names}.")
    if settings is not None and not isinstance(settings, TrainSettings):
        raise ShapeError(f"settings must be a cnnkit.app.TrainSettings. Received {type(settings).__name__}.")
    return replace(settings or TrainSettings(), **options).resolved(kind)


def pop_settings(kind: str, kwargs: dict) -> TrainSettings:
    """The settings in a function's ``**kwargs`` — ``settings`` and the fields given by name — taken out of
    ``kwargs`` (the rest is left for the function) and resolved for ``kind``, as :func:`settings_for` does.

    Examples:
        >>> kwargs = {"epochs": 2, "model_spec": None}
        >>> pop_settings("images", kwargs).epochs, kwargs
        (2, {'model_spec': None})
    """
    return settings_for(kind, kwargs.pop("settings", None),
                        {name: kwargs.pop(name) for name in list(kwargs) if name in SETTING_NAMES})
