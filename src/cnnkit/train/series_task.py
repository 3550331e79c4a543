"""A Lightning task for per-pixel classes from image time series (:class:`~cnnkit.models.SeriesSegNet`).

Batches are ``((x, valid), labels)`` or ``((x, valid), labels, pixel_weight)``, as
:func:`cnnkit.data.collate_series` pads them: ``x`` (N, T, C, H, W), ``valid`` (N, T, H, W) bool (False
under clouds and in the padding), ``labels`` (N, H, W) with −100 where there is no label (and in the
padding), ``pixel_weight`` (N, H, W) ≥ 0. The images may carry the acquisition days third, ``(x, valid, days)``
with ``days`` (N, T) (``collate_series(...).days``). The model is called as ``model(x, valid)`` or
``model(x, valid, days)``; the loss is
:class:`~cnnkit.losses.PixelCrossEntropy` with the class weights, −100 left out and the pixel weights
applied. Logged keys are those of :class:`~cnnkit.train.SegmentationTask`.
"""

from __future__ import annotations

from torch import Tensor

from cnnkit._tensors import argmax
from cnnkit.errors import ShapeError
from cnnkit.train.task import SegmentationTask

__all__ = ["SeriesSegmentationTask"]


class SeriesSegmentationTask(SegmentationTask):
    """:class:`~cnnkit.train.SegmentationTask` for models called as ``model(x, valid)`` on padded series.

    Args: those of :class:`~cnnkit.train.SegmentationTask` (``masked_input`` is not used: the model masks
    the padding itself, through ``valid``).

    Shape:
        - images: a pair ``(x (N, T, C, H, W), valid (N, T, H, W) bool)``, or a triple with ``days (N, T)``
          third (for networks that use the acquisition dates, :class:`~cnnkit.models.utae.UTAE`)
        - targets: (N, H, W) integer labels, −100 ignored
        - pixel_weight (optional third batch item): (N, H, W), ≥ 0

    Examples:
        >>> import torch
        >>> from cnnkit.models import SeriesSegNet
        >>> task = SeriesSegmentationTask(SeriesSegNet(2, 3, width=4, hidden=4), num_classes=3)
        >>> x, valid = torch.randn(2, 5, 2, 8, 8), torch.rand(2, 5, 8, 8) > 0.3
        >>> task((x, valid)).shape
        torch.Size([2, 3, 8, 8])
        >>> from cnnkit.models.utae import UTAE
        >>> task = SeriesSegmentationTask(UTAE(2, 3, encoder_widths=(4, 4), num_heads=2), num_classes=3)
        >>> task((x, valid, torch.tensor([[5, 30, 61, 90, 122]] * 2))).shape
        torch.Size([2, 3, 8, 8])
    """

    def forward(self, images) -> Tensor:
        if isinstance(images, (tuple, list)) and len(images) in (2, 3):
            return self.model(*images)
        if isinstance(images, Tensor):
            return self.model(images)
        raise ShapeError("SeriesSegmentationTask expects images as a pair (x (N, T, C, H, W), valid (N, T, H, W)) "
                         "or a triple (x, valid, days (N, T)), as collate_series pads them. Received "
                         f"{type(images).__name__}" + (f" of {len(images)}" if isinstance(images, (tuple, list))
                                                        else "") + ".")

    def _step(self, batch):
        images, targets = self._split(batch)
        weight = batch[2] if len(batch) > 2 else None
        if weight is not None and (not isinstance(weight, Tensor) or weight.shape != targets.shape):
            got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
            raise ShapeError(f"pixel_weight must be a tensor of the labels' shape {tuple(targets.shape)}. "
                             f"Received {got}.")
        logits = self(images)
        loss, logged, n = self._loss(logits, targets, weight)  # over the global batch, as for single images
        return loss, logged, logits, n

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Predicted labels (N, H, W)."""
        images = batch[0] if isinstance(batch, (tuple, list)) and not isinstance(batch[0], Tensor) else batch
        return argmax(self(images), 1)
