"""Class weights estimated from label maps, for class-weighted losses on imbalanced segmentation data.

:func:`class_weights` counts, in one pass and without holding the data set, the pixels of each class and
(for median-frequency balancing) the pixels of the images that contain each class; ignored pixels
(``ignore_index`` and −100) are not counted anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

import torch
from torch import Tensor

from cnnkit._checks import check_choice
from cnnkit.errors import ShapeError
from cnnkit.losses.targets import check_ignore_index, shape_text
from cnnkit.masking.batch import IGNORE_INDEX

__all__ = ["CLASS_WEIGHT_METHODS", "class_weights"]

CLASS_WEIGHT_METHODS = ("inverse_frequency", "median_frequency", "enet", "effective_number")


def class_weights(
    labels: Tensor | Iterable[Tensor],
    num_classes: int,
    method: str = "inverse_frequency",
    ignore_index: int | None = None,
    beta: float = 0.999,
) -> Tensor:
    """Per-class loss weights that make rare classes count, estimated from label maps.

    With ``n_c`` the number of counted pixels of class c, ``n = Σ_c n_c`` and ``C = num_classes``:

    * ``"inverse_frequency"``: ``w_c = n / (C·n_c)`` (balanced classes get 1; scikit-learn's "balanced").
    * ``"median_frequency"`` (SegNet): ``freq_c = n_c / (counted pixels of the images that contain c)``,
      ``w_c = median(freq) / freq_c``, the median over the classes present (for an even number of them,
      the mean of the two middle values).
    * ``"enet"``: ``w_c = 1 / ln(1.02 + n_c / n)``, bounded between about 1.4 and 50.5.
    * ``"effective_number"`` (Cui et al.): ``w_c ∝ (1 − β) / (1 − β^{n_c})``, scaled so that the
      weights sum to C.

    A class with no counted pixel gets weight **0** under every method (its weight is never used by a
    cross-entropy over the same data, and 0 keeps it out of weighted Dice means); the other classes'
    weights are computed as if it did not exist, except that C stays ``num_classes``. Data without any
    counted pixel is an error.

    Args:
        labels: Integer label maps: one tensor (N, *spatial) whose first dimension runs over images, or an
            iterable of label maps (*spatial), one image each (e.g. ``(y for _, y in dataset)``); an
            iterable is consumed once and only counts are kept. An item with a leading batch axis (a
            ``DataLoader`` batch) counts as one image: only ``"median_frequency"`` sees the difference.
        num_classes: Number of classes C; every counted label must lie in [0, C).
        method: One of ``"inverse_frequency"``, ``"median_frequency"``, ``"enet"``, ``"effective_number"``.
        ignore_index: A label value not to count, besides −100 which is never counted.
        beta: β in [0, 1) of ``"effective_number"`` (0.9, 0.99, 0.999, 0.9999 in the paper).

    Returns:
        A float32 tensor (C,) of finite, non-negative weights.

    Examples:
        >>> toy = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 2]])      # two images of 4 pixels
        >>> class_weights(toy, 3, "median_frequency")
        tensor([0.8000, 2.0000, 1.0000])
        >>> class_weights(toy, 3)                                  # inverse frequency
        tensor([0.5333, 2.6667, 1.3333])
        >>> class_weights(iter(toy), 3)                           # streamed, one image at a time
        tensor([0.5333, 2.6667, 1.3333])
        >>> class_weights(toy, 4, "enet")                          # class 3 never occurs: weight 0
        tensor([2.0091, 7.3853, 4.1838, 0.0000])

    References:
        Badrinarayanan, Kendall & Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
        Image Segmentation", TPAMI 2017 (median frequency balancing, after Eigen & Fergus 2015).
        Paszke, Chaurasia, Kim & Culurciello, "ENet: A Deep Neural Network Architecture for Real-Time
        Semantic Segmentation", arXiv:1606.02147, 2016.
        Cui, Jia, Lin, Song & Belongie, "Class-Balanced Loss Based on Effective Number of Samples",
        CVPR 2019.
    """
    if not isinstance(num_classes, Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ShapeError(f"num_classes must be an integer >= 1. Received num_classes={num_classes!r}.")
    num_classes = int(num_classes)
    method = check_choice(method, CLASS_WEIGHT_METHODS, "method")
    ignore_index = check_ignore_index(ignore_index)
    if not isinstance(beta, Real) or isinstance(beta, bool) or not 0 <= beta < 1:
        raise ShapeError(f"beta must be a number in [0, 1). Received beta={beta!r}.")

    counts = torch.zeros(num_classes, dtype=torch.float64)  # n_c
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)  # pixels of the images containing c
    if isinstance(labels, Tensor):
        if labels.dim() < 1:
            raise ShapeError(
                "labels must be a tensor (N, *spatial) or an iterable of label maps. Received a 0-d tensor."
            )
        _accumulate(labels, num_classes, ignore_index, counts, image_pixels, "labels")
    elif isinstance(labels, Iterable):
        for i, item in enumerate(labels):
            if not isinstance(item, Tensor):
                raise ShapeError(
                    f"labels must yield label-map tensors. Received {type(item).__name__} at labels[{i}] "
                    "(for (image, label) pairs pass (label for _, label in dataset))."
                )
            _accumulate(item.unsqueeze(0), num_classes, ignore_index, counts, image_pixels, f"labels[{i}]")
    else:
        raise ShapeError(
            f"labels must be a tensor (N, *spatial) or an iterable of label maps. Received {type(labels).__name__}."
        )

    total = counts.sum()
    if total == 0:
        raise ShapeError("labels contain no counted pixel (every pixel is ignored or the data is empty).")
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    if method == "inverse_frequency":
        weights[present] = total / (num_classes * counts[present])
    elif method == "median_frequency":
        freq = counts[present] / image_pixels[present]
        weights[present] = _median(freq) / freq
    elif method == "enet":
        weights[present] = 1.0 / torch.log(1.02 + counts[present] / total)
    else:  # effective_number
        # (1 - β) / (1 - β^n); for β = 0 every present class gets 1. log1p/expm1 keep β near 1 accurate.
        if beta == 0:
            raw = torch.ones_like(counts[present])
        else:
            raw = (1.0 - beta) / -torch.expm1(counts[present] * math.log(beta))
        weights[present] = raw * num_classes / raw.sum()
    return weights.to(torch.float32)


def _median(values: Tensor) -> Tensor:
    """Median with the mean of the two middle values for an even count (``torch.median`` takes the lower)."""
    ordered = values.sort().values
    k = ordered.numel()
    return ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2


def _accumulate(
    labels: Tensor, num_classes: int, ignore_index: int | None, counts: Tensor, image_pixels: Tensor, name: str
) -> None:
    """Add the per-class pixel counts of a batch of label maps (N, *spatial) to ``counts`` and ``image_pixels``."""
    if labels.is_floating_point() or labels.is_complex():
        raise ShapeError(
            f"{name} must hold integer class labels. Received dtype {labels.dtype} of shape {shape_text(labels.shape)}."
        )
    flat = labels.detach().reshape(labels.shape[0], -1).long().cpu()
    valid = flat != IGNORE_INDEX
    if ignore_index is not None:
        valid &= flat != ignore_index
    bad = valid & ((flat < 0) | (flat >= num_classes))
    if bool(bad.any()):
        ignored = f"ignore_index={ignore_index} or " if ignore_index is not None else ""
        raise ShapeError(
            f"{name} values must be class indices in [0, {num_classes}) (num_classes={num_classes}), {ignored}"
            f"{IGNORE_INDEX} (never counted). Received a value {int(flat[bad][0])}."
        )
    # Per-image histograms in one bincount: image i's class c lands in bin i·C + c; ignored pixels in the last.
    rows = torch.arange(flat.shape[0]).unsqueeze(1)
    bins = torch.where(valid, rows * num_classes + flat, flat.shape[0] * num_classes)
    per_image = torch.bincount(bins.flatten(), minlength=flat.shape[0] * num_classes + 1)
    per_image = per_image[:-1].view(flat.shape[0], num_classes).to(torch.float64)
    counts += per_image.sum(dim=0)
    image_pixels += ((per_image > 0) * per_image.sum(dim=1, keepdim=True)).sum(dim=0)
