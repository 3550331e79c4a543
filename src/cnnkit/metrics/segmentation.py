"""Segmentation metrics: a confusion matrix over counted pixels, per-class IoU and mean IoU.

:class:`SegmentationMetrics` is a :class:`torchmetrics.Metric` that accumulates one (C, C) confusion
matrix (rows: true class, columns: predicted class) over batches, and sums it across processes under
DDP. The functional :func:`confusion_matrix`, :func:`iou` and :func:`mean_iou` hold the math.

Which pixels count is decided as for the losses (:mod:`cnnkit.losses.pixel`): a pixel is left out when its
label is ``ignore_index`` or −100, when its one-hot target vector is all zero, or when it lies in the
padding of a :class:`~cnnkit.PaddedBatch` of predictions.

NaN and inf in float ``preds`` at a counted pixel are an error (a :class:`~cnnkit.ShapeError` naming
``preds`` and the number of such pixels): the arg-max of a NaN vector is class 0, so an all-NaN network
would get a plausible IoU. As for the losses, a counted pixel is refused when its scores hold a NaN, a
+inf or only −inf; −inf at some classes is allowed. Left-out pixels may hold anything.

Absent classes: the IoU of a class that appears neither in the targets nor in the predictions of the
counted pixels is ``0/0`` and reported as NaN; :func:`mean_iou` averages the other classes (a class that
is predicted but never true has IoU 0 and does count).
"""

from __future__ import annotations

from numbers import Integral

import torch
from torch import Tensor
from torchmetrics import Metric

from cnnkit._tensors import argmax
from cnnkit.errors import ShapeError
from cnnkit.losses.targets import check_finite_at, check_ignore_index, resolve_target, shape_text
from cnnkit.masking.batch import PaddedBatch

__all__ = ["SegmentationMetrics", "confusion_matrix", "iou", "mean_iou"]


def _check_num_classes(num_classes) -> int:
    if not isinstance(num_classes, Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ShapeError(f"num_classes must be an integer >= 1. Received num_classes={num_classes!r}.")
    return int(num_classes)


def confusion_matrix(
    preds: Tensor | PaddedBatch, target: Tensor, num_classes: int, ignore_index: int | None = None
) -> Tensor:
    """Confusion matrix (C, C) of counted pixels: entry ``[i, j]`` counts pixels of true class i predicted as j.

    Args:
        preds: Logits or probabilities (N, C, *spatial) (the arg-max over C is the prediction; NaN or inf
            at a counted pixel is an error), integer
            labels (N, *spatial), or a :class:`~cnnkit.PaddedBatch` of either (its padding is left out).
        target: Integer labels (N, *spatial) or one-hot (N, C, *spatial) (all-zero vector: no label).
        num_classes: Number of classes C.
        ignore_index: A target label value to leave out, besides −100 which is always left out.

    Shape:
        - preds: (N, C, *spatial) floats or (N, *spatial) integers; target: (N, *spatial) or (N, C, *spatial)
        - output: (C, C) int64

    Examples:
        >>> confusion_matrix(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, -100]]), 3)
        tensor([[1, 0, 0],
                [0, 1, 0],
                [0, 1, 0]])
    """
    num_classes = _check_num_classes(num_classes)
    ignore_index = check_ignore_index(ignore_index)
    pad_mask = None
    if isinstance(preds, PaddedBatch):
        pad_mask = preds.mask()[:, 0]
        preds = preds.data
    if not isinstance(preds, Tensor):
        raise ShapeError(f"preds must be a tensor or a PaddedBatch. Received {type(preds).__name__}.")
    if preds.is_floating_point():
        if preds.dim() < 2 or preds.shape[1] != num_classes:
            raise ShapeError(
                f"preds must be scores (N, C, *spatial) with C = num_classes = {num_classes}, or integer labels "
                f"(N, *spatial). Received floating preds of shape {shape_text(preds.shape)}."
            )
        shape = tuple(preds.shape)
        labels_pred = argmax(preds, 1)
    else:
        if preds.dtype == torch.bool or preds.is_complex() or preds.dim() < 1:
            raise ShapeError(
                f"preds must be scores (N, C, *spatial) or integer labels (N, *spatial). "
                f"Received preds of dtype {preds.dtype} and shape {shape_text(preds.shape)}."
            )
        shape = (preds.shape[0], num_classes, *preds.shape[1:])
        labels_pred = preds
    resolved = resolve_target(target, shape, ignore_index, pad_mask)
    if preds.is_floating_point():
        check_finite_at(preds, resolved.valid, "preds")
    true = resolved.labels if resolved.probs is None else argmax(resolved.probs, 1)
    valid = resolved.valid
    pred = labels_pred[valid].long()
    if pred.numel() and (bool((pred < 0).any()) or bool((pred >= num_classes).any())):
        bad = int(pred[(pred < 0) | (pred >= num_classes)][0])
        raise ShapeError(
            f"preds labels must lie in [0, {num_classes}) (num_classes={num_classes}) at counted pixels. "
            f"Received a value {bad}."
        )
    bins = true[valid] * num_classes + pred
    return torch.bincount(bins, minlength=num_classes * num_classes).view(num_classes, num_classes)


def iou(confmat: Tensor) -> Tensor:
    """Per-class intersection over union ``TP / (TP + FP + FN)`` of a confusion matrix; NaN where 0/0.

    Examples:
        >>> iou(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]]))
        tensor([1.0000, 0.5000, 0.0000])
        >>> iou(torch.tensor([[2, 0], [0, 0]]))         # class 1 never true nor predicted
        tensor([1., nan])
    """
    if not isinstance(confmat, Tensor) or confmat.dim() != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ShapeError(
            f"confmat must be a square (C, C) tensor. Received {shape_text(getattr(confmat, 'shape', ()))}."
        )
    confmat = confmat.to(torch.float64)
    tp = confmat.diagonal()
    union = confmat.sum(dim=0) + confmat.sum(dim=1) - tp
    out = torch.where(union > 0, tp / torch.where(union > 0, union, torch.ones_like(union)), torch.nan)
    return out.to(torch.get_default_dtype())


def mean_iou(confmat: Tensor) -> Tensor:
    """Mean of :func:`iou` over classes whose IoU is defined (NaN only if none is).

    Examples:
        >>> mean_iou(torch.tensor([[2, 0], [0, 0]]))
        tensor(1.)
    """
    return iou(confmat).nanmean()


class SegmentationMetrics(Metric):
    """Confusion matrix, per-class IoU, mean IoU and pixel accuracy, accumulated over batches.

    ``update(preds, target)`` takes what :func:`confusion_matrix` takes; ``compute()`` returns a dict:

    * ``"confusion_matrix"``: (C, C) int64, rows true class, columns predicted class;
    * ``"iou"``: (C,) per-class IoU, NaN for a class neither true nor predicted on any counted pixel;
    * ``"mean_iou"``: mean of the defined IoUs;
    * ``"pixel_accuracy"``: share of counted pixels predicted right (NaN before any counted pixel).

    Under DDP the confusion matrices of all processes are summed (torchmetrics' ``dist_reduce_fx="sum"``).

    Args:
        num_classes: Number of classes C.
        ignore_index: A target label value to leave out, besides −100 which is always left out.
        **kwargs: Passed to :class:`torchmetrics.Metric` (e.g. ``sync_on_compute``).

    Examples:
        >>> metric = SegmentationMetrics(num_classes=3, ignore_index=255)
        >>> metric.update(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[0, 1, 2, 255]]))
        >>> metric.update(torch.tensor([[1, 1]]), torch.tensor([[1, 0]]))
        >>> result = metric.compute()
        >>> result["iou"], result["mean_iou"], result["pixel_accuracy"]
        (tensor([0.5000, 0.5000, 0.0000]), tensor(0.3333), tensor(0.6000))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = check_ignore_index(ignore_index)
        self.add_state(
            "confmat", default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, preds: Tensor | PaddedBatch, target: Tensor) -> None:
        """Add the confusion matrix of one batch."""
        self.confmat += confusion_matrix(preds, target, self.num_classes, self.ignore_index).to(self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """The metrics of everything seen since the last ``reset()``."""
        total = self.confmat.sum()
        accuracy = self.confmat.diagonal().sum().to(torch.get_default_dtype()) / total if total > 0 else None
        return {
            "confusion_matrix": self.confmat.clone(),
            "iou": iou(self.confmat),
            "mean_iou": mean_iou(self.confmat),
            "pixel_accuracy": accuracy if accuracy is not None else torch.tensor(torch.nan),
        }

    def extra_repr(self) -> str:
        extra = f", ignore_index={self.ignore_index}" if self.ignore_index is not None else ""
        return f"num_classes={self.num_classes}{extra}"
