"""Training defaults per network family: the starting point a training run takes when the user names none.

One row per family of :data:`~cnnkit.models.spec.FAMILIES`; :func:`~cnnkit.models.family_of` says which family
a spec's network belongs to. The training path reads the row and shows it in the run's log; every value can be
overridden by the user.

Why these values:

- ``cnnkit`` (TinySegNet, TinyResNet): AdamW at 1e-2 with a cosine schedule, what ``cnnkit train`` has used
  for them all along (``train_segmentation``'s defaults); small, batch-normalised, randomly initialised networks
  that train in seconds at that rate.
- ``cnnkit-series`` (SeriesSegNet): AdamW at 1e-2, constant, as ``train_series`` uses (on its demo data
  a constant rate reached a held-out mean IoU of 0.59 where cosine reached 0.26, see docs/timeseries.md).
- ``attention-series`` (UTAE): AdamW at 3e-3, constant. On the time-series demo UTAE at 1e-2 (the ConvLSTM's rate)
  reached 0.46–0.48 held-out mean IoU on seed 2 and 3e-3 0.79 (same steps); the published U-TAE trains with Adam
  at 1e-3 on PASTIS, with far more steps (docs/timeseries.md, docs/pastis.md).
- ``convolutional`` (smp's architectures on convolutional encoders: ResNet, EfficientNet, ConvNeXt, …):
  AdamW at 1e-3, cosine, no warm-up. 1e-2 made Unet/resnet18 diverge on cnnkit's land-cover data (issue 25:
  validation loss 5.5e8, IoU below the majority baseline), 1e-3 trained it (IoU 0.765 in 6 epochs); 1e-3 is
  also Adam's own default. Their batch norms keep the first steps stable without warm-up.
- ``transformer`` (smp networks on attention encoders: DPT on its ViT, any architecture on smp's MiT encoders):
  AdamW at 1e-4, weight decay 0.01, cosine after 1 epoch of linear warm-up. Attention layers are the least
  stable part early in training at high rates; vision-transformer fine-tuning recipes work at 1e-4 or below,
  with a warm-up.

``encoder_lr_factor`` multiplies the encoder's learning rate **when it starts from pretrained weights** (0.1:
the pretrained filters move ten times slower than the new decoder); an encoder with random weights learns at
``lr`` like the rest.

Every row reaches :class:`cnnkit.train.SegmentationTask` as it is (``optimizer``, ``lr``, ``weight_decay``,
``scheduler=schedule``, ``warmup_epochs``, ``encoder_lr_factor``), and ``tests/models/test_family_defaults.py``
trains one network of each family from its row for a few epochs on built-in data: the loss finite and falling,
the held-out mean IoU above the majority class's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cnnkit.models.registry import family_of
from cnnkit.models.spec import ModelSpec

__all__ = ["FAMILY_DEFAULTS", "TrainingDefaults", "training_defaults"]


@dataclass(frozen=True)
class TrainingDefaults:
    """How a family of networks starts training (see the module docstring for why).

    Attributes:
        optimizer: ``"adamw"`` (the name :class:`cnnkit.train.SegmentationTask` takes).
        lr: The learning rate after warm-up.
        weight_decay: AdamW's decoupled weight decay.
        schedule: ``"cosine"`` (from ``lr`` down to 0 over the run) or ``None`` (constant).
        warmup_epochs: Epochs of linear warm-up from 0 to ``lr`` before the schedule.
        encoder_lr_factor: The encoder's learning rate is ``lr`` times this when its weights are pretrained.
    """

    optimizer: str
    lr: float
    weight_decay: float
    schedule: str | None
    warmup_epochs: int
    encoder_lr_factor: float


FAMILY_DEFAULTS: Mapping[str, TrainingDefaults] = MappingProxyType({
    "cnnkit": TrainingDefaults("adamw", 1e-2, 1e-4, "cosine", 0, 1.0),
    "cnnkit-series": TrainingDefaults("adamw", 1e-2, 1e-4, None, 0, 1.0),
    "attention-series": TrainingDefaults("adamw", 3e-3, 1e-4, None, 0, 1.0),
    "convolutional": TrainingDefaults("adamw", 1e-3, 1e-4, "cosine", 0, 0.1),
    "transformer": TrainingDefaults("adamw", 1e-4, 1e-2, "cosine", 1, 0.1),
})
"""Family name → :class:`TrainingDefaults` (read-only)."""


def training_defaults(spec: ModelSpec | Mapping[str, Any]) -> TrainingDefaults:
    """The :class:`TrainingDefaults` of the family of ``spec``'s network.

    Examples:
        >>> training_defaults({"library": "smp", "architecture": "Unet", "encoder": "resnet18"}).lr
        0.001
        >>> training_defaults({"library": "cnnkit", "architecture": "TinySegNet"}).lr
        0.01
    """
    return FAMILY_DEFAULTS[family_of(spec)]
