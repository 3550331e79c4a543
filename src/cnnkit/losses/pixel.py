"""Pixel-wise losses for segmentation: cross-entropy, focal and soft Dice, functional and Module forms.

Every loss takes logits (N, C, *spatial) — *spatial is (L,), (H, W) or (T, H, W) — or a
:class:`~cnnkit.PaddedBatch` of logits (as :func:`cnnkit.masked` returns), and a target that is either

* integer labels (N, *spatial): a pixel is left out when its label is ``ignore_index`` or
  :data:`~cnnkit.masking.IGNORE_INDEX` (−100, the value :func:`~cnnkit.collate_padded` pads label maps
  with, and ``F.cross_entropy``'s default), so −100 is *always* ignored, whatever ``ignore_index`` is;
* one-hot or probabilities (N, C, *spatial): a pixel whose vector is all zero has no label and is left out.

Pixels in the padding of a ``PaddedBatch`` are left out as well. Left-out pixels contribute nothing:
changing their logits changes neither the loss nor any gradient (their logits are *selected* away —
replaced by zeros with ``torch.where``, never multiplied — before the softmax, so even ``inf``/``nan``
there is harmless).

NaN and inf at *counted* pixels are an error (a :class:`~cnnkit.ShapeError` naming ``logits``, the number
of such pixels and the first one), not a silent NaN loss: a network that produces them has diverged or
read NaN input. Precisely, a counted pixel is refused when its logits hold a NaN, a +inf, or only −inf
(no finite maximum: its softmax is NaN); −inf at some classes is allowed (probability 0). The check is
one reduction over the logits per call.

Weights. ``class_weight`` (C,) weights each pixel by its class (for probability targets by
``Σ_c class_weight[c]·target[c]``); ``sample_weight`` broadcasts to (N, *spatial) with the same number
of dimensions — one weight per pixel (N, H, W), per timestep (N, T, 1, 1), per sample (N, 1, 1), or
a product of those. A pixel's weight is ``w = class_weight[y]·sample_weight``.

Reduction. ``"mean"`` is the weighted mean PyTorch's weighted cross-entropy defines,
``Σ w·loss / Σ w`` over counted pixels; a batch without any counted pixel (or with Σ w = 0) gives 0
with a zero gradient, not NaN. ``"sum"`` is ``Σ w·loss``; ``"none"`` returns the map ``w·loss``
(N, *spatial) with zeros at left-out pixels. :meth:`PixelCrossEntropy.weighted_sum` and
:meth:`FocalLoss.weighted_sum` give both sums of the mean, ``(Σ w·loss, Σ w)``, for a mean over pixels that
several calls (several processes) see.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_bool
from cnnkit.losses.targets import (
    Target,
    check_class_weight,
    check_finite_at,
    check_ignore_index,
    check_nonnegative_number,
    check_reduction,
    check_sample_weight,
    pixel_weight,
    resolve_target,
    split_logits,
    weighted_reduce,
)
from cnnkit.masking.batch import PaddedBatch

__all__ = [
    "DiceLoss",
    "FocalLoss",
    "PixelCrossEntropy",
    "dice_loss",
    "focal_loss",
    "pixel_cross_entropy",
]


def _prepare(logits, target, class_weight, ignore_index, sample_weight):
    """Checked tensors: masked logits, resolved target, class weight and sample weight."""
    data, pad_mask = split_logits(logits)
    ignore_index = check_ignore_index(ignore_index)
    resolved = resolve_target(target, data.shape, ignore_index, pad_mask)
    weight = check_class_weight(class_weight, data.shape[1])
    sample_weight = check_sample_weight(sample_weight, (data.shape[0], *data.shape[2:]))
    check_finite_at(data, resolved.valid, "logits")
    # Left-out pixels get zero logits: their values (even inf/nan) reach neither the loss nor the gradient.
    data = torch.where(resolved.valid.unsqueeze(1), data, torch.zeros((), dtype=data.dtype, device=data.device))
    return data, resolved, weight, sample_weight


def _focal_map(
    log_probs: Tensor, target: Target, class_weight: Tensor | None, sample_weight: Tensor | None, gamma: float
) -> tuple[Tensor, Tensor]:
    """Per-pixel weighted loss ``w·ℓ`` and pixel weight ``w`` (gamma = 0: cross-entropy)."""
    dtype = log_probs.dtype
    if gamma != 0.0:
        # (1 - p)^gamma; the clamp keeps the gradient finite for gamma < 1 where p rounds to 1.
        focus = (-torch.expm1(log_probs)).clamp_min(torch.finfo(dtype).eps).pow(gamma)
        terms = -focus * log_probs
    else:
        terms = -log_probs
    if target.probs is not None:
        probs = target.probs.to(dtype)
        if class_weight is not None:
            probs = probs * class_weight.to(dtype).view((1, -1) + (1,) * (probs.dim() - 2))
        loss = (probs * terms).sum(dim=1)
    else:
        loss = terms.gather(1, target.labels.unsqueeze(1)).squeeze(1)
        if class_weight is not None:
            loss = loss * class_weight.to(dtype)[target.labels]
    if sample_weight is not None:
        loss = loss * sample_weight.to(dtype)
    weight = pixel_weight(target, class_weight, sample_weight, dtype)
    zero = torch.zeros((), dtype=dtype, device=loss.device)
    return torch.where(target.valid, loss, zero), weight


def _weighted_sums(logits, target, class_weight, ignore_index, sample_weight, gamma: float) -> tuple[Tensor, Tensor]:
    """``(Σ w·ℓ, Σ w)`` of the focal loss (cross-entropy for ``gamma = 0``): the two sums of its ``"mean"``."""
    data, resolved, weight, sample_weight = _prepare(logits, target, class_weight, ignore_index, sample_weight)
    loss, pixel_w = _focal_map(F.log_softmax(data, dim=1), resolved, weight, sample_weight, gamma)
    return loss.sum(), pixel_w.sum()


def pixel_cross_entropy(
    logits: Tensor | PaddedBatch,
    target: Tensor,
    class_weight: Tensor | None = None,
    ignore_index: int | None = None,
    sample_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Class- and sample-weighted cross-entropy of every pixel, over counted pixels only.

    With integer targets, no sample weight and at least one counted pixel, this equals
    ``F.cross_entropy(logits, target, weight=class_weight, ignore_index=ignore_index)``. It differs where
    PyTorch has no answer or none at all: −100 is ignored even when ``ignore_index`` is another value, an
    all-ignored batch gives 0 instead of NaN, one-hot targets may have all-zero "no label" pixels, and
    ``sample_weight`` adds per-pixel / per-timestep weights. For probability targets the pixel loss is
    ``−Σ_c class_weight[c]·target[c]·log softmax(logits)[c]`` and the mean divides by
    ``Σ_c class_weight[c]·target[c]`` summed over pixels (for one-hot targets: the integer case; PyTorch
    divides probability-target losses by the number of pixels instead).

    Args:
        logits: Unnormalised scores (N, C, *spatial), or a :class:`~cnnkit.PaddedBatch` of them whose
            padding is left out.
        target: Integer labels (N, *spatial) or one-hot / probabilities (N, C, *spatial).
        class_weight: Weight of each class (C,), finite and >= 0, e.g. from
            :func:`~cnnkit.losses.class_weights`. Default: all ones.
        ignore_index: A label value to leave out, besides −100 which is always left out.
        sample_weight: Non-negative weights with the same number of dimensions as (N, *spatial), each
            axis of size 1 or equal: per pixel (N, H, W), per timestep (N, T, 1, 1), per sample (N, 1, 1).
        reduction: ``"mean"`` (weighted mean, see the module), ``"sum"`` or ``"none"``.

    Shape:
        - logits: (N, C, *spatial)
        - target: (N, *spatial) integers or (N, C, *spatial) floats
        - output: scalar, or (N, *spatial) for ``reduction="none"``

    Examples:
        >>> logits = torch.zeros(1, 3, 2, 2)               # uniform over 3 classes: log 3 per pixel
        >>> target = torch.tensor([[[0, 1], [2, -100]]])   # -100: not labelled
        >>> pixel_cross_entropy(logits, target)
        tensor(1.0986)
        >>> pixel_cross_entropy(logits, target, class_weight=[1.0, 2.0, 0.5], reduction="none")
        tensor([[[1.0986, 2.1972],
                 [0.5493, 0.0000]]])

    References:
        Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
    """
    reduction = check_reduction(reduction)
    data, resolved, weight, sample_weight = _prepare(logits, target, class_weight, ignore_index, sample_weight)
    loss, pixel_w = _focal_map(F.log_softmax(data, dim=1), resolved, weight, sample_weight, 0.0)
    return weighted_reduce(loss, pixel_w, reduction)


def focal_loss(
    logits: Tensor | PaddedBatch,
    target: Tensor,
    gamma: float = 2.0,
    class_weight: Tensor | None = None,
    ignore_index: int | None = None,
    sample_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Softmax focal loss ``−α_y·(1 − p_y)^γ·log p_y`` of every pixel, over counted pixels only.

    ``class_weight`` plays the role of the α of Lin et al. (per class); targets, weights, ignored pixels
    and the reduction are those of :func:`pixel_cross_entropy`, which this equals for ``gamma=0``. The
    mean is the weighted mean ``Σ w·FL / Σ w`` over counted pixels (Lin et al. normalise by the number
    of positive anchors, which has no counterpart in dense segmentation). For probability targets the
    pixel loss is ``−Σ_c α_c·target[c]·(1 − p_c)^γ·log p_c``.

    Args:
        logits: Unnormalised scores (N, C, *spatial) or a :class:`~cnnkit.PaddedBatch` of them.
        target: Integer labels (N, *spatial) or one-hot / probabilities (N, C, *spatial).
        gamma: Focusing parameter γ >= 0; 0 gives cross-entropy, 2 is the paper's choice.
        class_weight: α per class (C,), finite and >= 0. Default: all ones.
        ignore_index: A label value to leave out, besides −100 which is always left out.
        sample_weight: As in :func:`pixel_cross_entropy`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        As :func:`pixel_cross_entropy`.

    Examples:
        >>> logits = torch.tensor([[[2.0], [0.0]]])        # (N=1, C=2, L=1): p_0 = 0.8808
        >>> focal_loss(logits, torch.tensor([[0]]), gamma=2.0)
        tensor(0.0018)
        >>> focal_loss(logits, torch.tensor([[0]]), gamma=0.0)   # cross-entropy
        tensor(0.1269)

    References:
        Lin, Goyal, Girshick, He & Dollár, "Focal Loss for Dense Object Detection", ICCV 2017.
    """
    reduction = check_reduction(reduction)
    gamma = check_nonnegative_number(gamma, "gamma")
    data, resolved, weight, sample_weight = _prepare(logits, target, class_weight, ignore_index, sample_weight)
    loss, pixel_w = _focal_map(F.log_softmax(data, dim=1), resolved, weight, sample_weight, gamma)
    return weighted_reduce(loss, pixel_w, reduction)


def dice_loss(
    logits: Tensor | PaddedBatch,
    target: Tensor,
    class_weight: Tensor | None = None,
    ignore_index: int | None = None,
    sample_weight: Tensor | None = None,
    smooth: float = 1.0,
    per_sample: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Soft Dice loss ``1 − D_c`` per class, with ``p = softmax(logits)``, over counted pixels only.

    For each class c (and each sample when ``per_sample=True``), with pixel weight ``s_i``
    (``sample_weight``, 1 by default; 0 at left-out pixels) and one-hot target ``t``::

        D_c = (2·Σ_i s_i·p_ic·t_ic + smooth) / (Σ_i s_i·p_ic + Σ_i s_i·t_ic + smooth)

    A class with no target and no predicted mass has ``D_c = 1`` (loss 0), also for ``smooth=0``. The
    ``"mean"`` reduction is ``Σ_c w_c·(1 − D_c) / Σ_c w_c`` with ``w = class_weight`` (all ones by default;
    give the background weight 0 to leave it out), averaged over samples when ``per_sample=True``.

    Args:
        logits: Unnormalised scores (N, C, *spatial) or a :class:`~cnnkit.PaddedBatch` of them.
        target: Integer labels (N, *spatial) or one-hot / probabilities (N, C, *spatial).
        class_weight: Weight of each class's Dice term (C,), finite and >= 0. Default: all ones.
        ignore_index: A label value to leave out, besides −100 which is always left out.
        sample_weight: Pixel weights as in :func:`pixel_cross_entropy`, applied inside the sums.
        smooth: Added to numerator and denominator (>= 0); keeps empty classes stable.
        per_sample: Dice of each sample separately (Milletari et al.'s per-volume Dice) instead of over
            the whole batch.
        reduction: ``"mean"``, ``"sum"`` (of the weighted per-class terms) or ``"none"``: the per-class
            losses ``1 − D_c``, (C,) or (N, C) with ``per_sample``, unweighted.

    Shape:
        - logits: (N, C, *spatial); target: (N, *spatial) or (N, C, *spatial)
        - output: scalar, or (C,) / (N, C) for ``reduction="none"``

    Examples:
        >>> logits = torch.tensor([[[9.0, 9.0, -9.0, -9.0], [-9.0, -9.0, 9.0, 9.0]]])   # (1, 2, 4)
        >>> dice_loss(logits, torch.tensor([[0, 0, 1, 1]]), smooth=0.0)             # right, and sure
        tensor(0.)
        >>> dice_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 0, 1, 1]]), smooth=0.0)   # p = 0.5: D = 0.5
        tensor(0.5000)
        >>> dice_loss(logits, torch.tensor([[0, 0, 0, 1]]), smooth=0.0, reduction="none")
        tensor([0.2000, 0.3333])

    References:
        Milletari, Navab & Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
        Segmentation", 3DV 2016.
    """
    reduction = check_reduction(reduction)
    smooth = check_nonnegative_number(smooth, "smooth")
    per_sample = check_bool(per_sample, "per_sample")
    data, resolved, weight, sample_weight = _prepare(logits, target, class_weight, ignore_index, sample_weight)
    dtype = data.dtype
    num_classes = data.shape[1]
    pixel_w = resolved.valid.to(dtype)
    if sample_weight is not None:
        pixel_w = pixel_w * sample_weight.to(dtype)
    pixel_w = pixel_w.unsqueeze(1)
    probs = F.softmax(data, dim=1) * pixel_w
    hot = resolved.one_hot(num_classes, dtype) * pixel_w
    dims = tuple(range(2, data.dim())) if per_sample else (0, *range(2, data.dim()))
    intersection = (probs * hot).sum(dim=dims)
    denominator = probs.sum(dim=dims) + hot.sum(dim=dims)
    empty = denominator + smooth == 0
    safe = torch.where(empty, torch.ones_like(denominator), denominator + smooth)
    dice = torch.where(empty, torch.ones_like(denominator), (2 * intersection + smooth) / safe)
    per_class = 1 - dice
    if reduction == "none":
        return per_class
    w = torch.ones(num_classes, dtype=dtype, device=data.device) if weight is None else weight.to(dtype)
    w = w.expand_as(per_class)
    return weighted_reduce(per_class * w, w, reduction)


# --- modules -------------------------------------------------------------------------------------------


class _PixelLoss(nn.Module):
    """Shared constructor checks; ``class_weight`` is a non-persistent buffer (it follows ``.to``)."""

    class_weight: Tensor | None

    def __init__(self, class_weight=None, ignore_index: int | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("class_weight", check_class_weight(class_weight), persistent=False)
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)

    def _repr_items(self) -> list[str]:
        items = []
        if self.class_weight is not None:
            items.append(f"class_weight={[round(v, 4) for v in self.class_weight.tolist()]}")
        if self.ignore_index is not None:
            items.append(f"ignore_index={self.ignore_index}")
        if self.reduction != "mean":
            items.append(f"reduction={self.reduction!r}")
        return items

    def extra_repr(self) -> str:
        return ", ".join(self._repr_items())


class PixelCrossEntropy(_PixelLoss):
    """Module form of :func:`pixel_cross_entropy` (see there for the arguments and the math).

    ``forward(logits, target, sample_weight=None)``.

    Examples:
        >>> loss = PixelCrossEntropy(class_weight=[1.0, 4.0], ignore_index=255)
        >>> loss
        PixelCrossEntropy(class_weight=[1.0, 4.0], ignore_index=255)
        >>> loss(torch.zeros(2, 2, 3, 3), torch.randint(0, 2, (2, 3, 3)))
        tensor(0.6931)
        >>> loss.weighted_sum(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]]))   # (Σ w·ℓ, Σ w) = (5·log 2, 5)
        (tensor(3.4657), tensor(5.))
    """

    def forward(self, logits: Tensor | PaddedBatch, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return pixel_cross_entropy(logits, target, self.class_weight, self.ignore_index, sample_weight, self.reduction)

    def weighted_sum(
        self, logits: Tensor | PaddedBatch, target: Tensor, sample_weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(Σ w·ℓ, Σ w)`` over counted pixels: the numerator and the denominator of the ``"mean"``.

        For a mean over more pixels than one call sees: the global batch of a distributed run, whose weight sum
        :class:`~cnnkit.train.SegmentationTask` adds up over the processes. ``self.reduction`` is not used. The
        weight sum has no gradient (it depends on the targets and weights only).
        """
        return _weighted_sums(logits, target, self.class_weight, self.ignore_index, sample_weight, 0.0)


class FocalLoss(_PixelLoss):
    """Module form of :func:`focal_loss` (see there for the arguments and the math).

    Examples:
        >>> FocalLoss(gamma=2.0, class_weight=[0.25, 0.75])
        FocalLoss(gamma=2.0, class_weight=[0.25, 0.75])
    """

    def __init__(
        self, gamma: float = 2.0, class_weight=None, ignore_index: int | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__(class_weight, ignore_index, reduction)
        self.gamma = check_nonnegative_number(gamma, "gamma")

    def forward(self, logits: Tensor | PaddedBatch, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return focal_loss(
            logits, target, self.gamma, self.class_weight, self.ignore_index, sample_weight, self.reduction
        )

    def weighted_sum(
        self, logits: Tensor | PaddedBatch, target: Tensor, sample_weight: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(Σ w·FL, Σ w)`` over counted pixels, as :meth:`PixelCrossEntropy.weighted_sum`."""
        return _weighted_sums(logits, target, self.class_weight, self.ignore_index, sample_weight, self.gamma)

    def extra_repr(self) -> str:
        return ", ".join([f"gamma={self.gamma}", *self._repr_items()])


class DiceLoss(_PixelLoss):
    """Module form of :func:`dice_loss` (see there for the arguments and the math).

    Examples:
        >>> DiceLoss(class_weight=[0.0, 1.0, 1.0], per_sample=True)
        DiceLoss(class_weight=[0.0, 1.0, 1.0], per_sample=True)
    """

    def __init__(
        self,
        class_weight=None,
        ignore_index: int | None = None,
        smooth: float = 1.0,
        per_sample: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__(class_weight, ignore_index, reduction)
        self.smooth = check_nonnegative_number(smooth, "smooth")
        self.per_sample = check_bool(per_sample, "per_sample")

    def forward(self, logits: Tensor | PaddedBatch, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return dice_loss(
            logits,
            target,
            self.class_weight,
            self.ignore_index,
            sample_weight,
            self.smooth,
            self.per_sample,
            self.reduction,
        )

    def extra_repr(self) -> str:
        items = self._repr_items()
        if self.smooth != 1.0:
            items.append(f"smooth={self.smooth}")
        if self.per_sample:
            items.append("per_sample=True")
        return ", ".join(items)
