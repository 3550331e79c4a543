"""Which pixels count: the target handling and argument checks that the pixel-wise losses, the segmentation
metrics and the training task share (public to them, not re-exported by :mod:`cnnkit.losses`).

One place decides which pixels are *counted*: a pixel is left out when its integer label equals
``ignore_index`` or :data:`~cnnkit.masking.IGNORE_INDEX` (−100, what :func:`~cnnkit.collate_padded` pads
label maps with), when its one-hot / probability vector is all zero, or when it lies in the padding of a
:class:`~cnnkit.PaddedBatch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

from cnnkit._checks import check_choice
from cnnkit.errors import ShapeError
from cnnkit.masking.batch import IGNORE_INDEX, PaddedBatch

__all__ = [
    "REDUCTIONS",
    "Target",
    "check_class_weight",
    "check_finite_at",
    "check_ignore_index",
    "check_reduction",
    "check_sample_weight",
    "resolve_target",
    "shape_text",
    "split_logits",
    "weighted_reduce",
]

REDUCTIONS = ("mean", "sum", "none")


def shape_text(shape: Sequence[int]) -> str:
    """A shape as error messages print it: ``(2, 3)``."""
    return str(tuple(int(s) for s in shape))


def check_finite_at(scores: Tensor, valid: Tensor, name: str) -> None:
    """Refuse a score vector without a finite maximum at a counted pixel, naming ``name`` and the count.

    ``scores`` is (N, C, *spatial), ``valid`` (N, *spatial). A pixel is refused when its vector holds a
    NaN, a +inf, or only −inf: its softmax is NaN and its arg-max meaningless. −inf at some classes is
    fine (probability 0). Left-out pixels (ignored labels, padding) may hold anything: they are
    selected away, never read. One reduction over ``scores`` and one host sync per call.

    Examples:
        >>> scores = torch.tensor([[[0.0, float("nan")], [1.0, 2.0]]])   # (N=1, C=2, L=2)
        >>> check_finite_at(scores, torch.tensor([[True, False]]), "logits")   # the NaN pixel is not counted
        >>> check_finite_at(scores, torch.tensor([[True, True]]), "logits")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: logits must be finite at counted pixels ... Received 1 counted pixel(s) of \
logits (shape (1, 2, 2)) with NaN, +inf or only −inf, the first at (n, *spatial)=(0, 1).
    """
    bad = valid & ~torch.isfinite(scores.amax(dim=1))  # amax propagates NaN
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ShapeError(
            f"{name} must be finite at counted pixels (NaN, +inf or all −inf there has no class and no loss; "
            f"any value at an ignored or padded pixel is fine). Received {count} counted pixel(s) of {name} "
            f"(shape {shape_text(scores.shape)}) with NaN, +inf or only −inf, the first at (n, *spatial)={first}."
        )


def check_reduction(reduction: str) -> str:
    return check_choice(reduction, REDUCTIONS, "reduction")


def check_ignore_index(ignore_index) -> int | None:
    if ignore_index is None:
        return None
    if not isinstance(ignore_index, Integral) or isinstance(ignore_index, bool):
        raise ShapeError(f"ignore_index must be an integer or None. Received ignore_index={ignore_index!r}.")
    return int(ignore_index)


def check_nonnegative_number(value, name: str) -> float:
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ShapeError(f"{name} must be a finite number >= 0. Received {name}={value!r}.")
    return float(value)


def check_class_weight(class_weight, num_classes: int | None = None) -> Tensor | None:
    """Return ``class_weight`` as a 1-D float tensor (finite, >= 0), checking its length if known."""
    if class_weight is None:
        return None
    if isinstance(class_weight, Tensor):
        weight = class_weight.detach()
        if not weight.is_floating_point():
            weight = weight.to(torch.get_default_dtype())
    else:
        try:
            weight = torch.as_tensor(class_weight, dtype=torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise ShapeError(
                f"class_weight must be a 1-D sequence or tensor of numbers. Received class_weight={class_weight!r}."
            ) from None
    if weight.dim() != 1 or weight.numel() == 0:
        raise ShapeError(
            "class_weight must be a 1-D sequence or tensor with one entry per class. "
            f"Received class_weight of shape {shape_text(weight.shape)}."
        )
    if num_classes is not None and weight.numel() != num_classes:
        raise ShapeError(
            f"class_weight must have one entry per class (C = {num_classes}). "
            f"Received {weight.numel()} entries: class_weight={weight.tolist()}."
        )
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ShapeError(f"class_weight must be finite and >= 0. Received class_weight={weight.tolist()}.")
    return weight


def split_logits(logits, name: str = "logits") -> tuple[Tensor, Tensor | None]:
    """``(tensor, padding mask (N, *spatial) or None)`` of a logits tensor or :class:`PaddedBatch`."""
    if isinstance(logits, PaddedBatch):
        return logits.data, logits.mask()[:, 0]
    if not isinstance(logits, Tensor):
        raise ShapeError(
            f"{name} must be a tensor (N, C, *spatial) or a PaddedBatch. Received {type(logits).__name__}."
        )
    if logits.dim() < 2 or not logits.is_floating_point():
        raise ShapeError(
            f"{name} must be a floating tensor (N, C, *spatial). "
            f"Received {name} of shape {shape_text(logits.shape)} and dtype {logits.dtype}."
        )
    return logits, None


@dataclass
class Target:
    """A target brought to one form: labels or probabilities, plus the counted-pixel mask."""

    labels: Tensor | None  # (N, *spatial) int64, 0 at left-out pixels (integer targets)
    probs: Tensor | None  # (N, C, *spatial), 0 at left-out pixels (one-hot / probability targets)
    valid: Tensor  # (N, *spatial) bool, True at counted pixels

    def one_hot(self, num_classes: int, dtype: torch.dtype) -> Tensor:
        """(N, C, *spatial) one-hot or probability map, zero at left-out pixels."""
        if self.probs is not None:
            return self.probs.to(dtype)
        hot = torch.nn.functional.one_hot(self.labels, num_classes).to(dtype)
        hot = hot.movedim(-1, 1)
        return hot * self.valid.unsqueeze(1).to(dtype)


def resolve_target(
    target: Tensor, shape: Sequence[int], ignore_index: int | None, pad_mask: Tensor | None, name: str = "target"
) -> Target:
    """Check ``target`` against logits of ``shape`` (N, C, *spatial) and find the counted pixels."""
    n, c, *spatial = (int(s) for s in shape)
    label_shape = (n, *spatial)
    prob_shape = (n, c, *spatial)
    if not isinstance(target, Tensor):
        raise ShapeError(f"{name} must be a tensor. Received {type(target).__name__}.")
    if target.dtype == torch.bool:
        target = target.to(torch.get_default_dtype())
    if target.is_floating_point():
        if tuple(target.shape) != prob_shape:
            raise ShapeError(_target_shape_message(name, label_shape, prob_shape, target))
        if not bool(torch.isfinite(target).all()) or bool((target < 0).any()):
            bad = target[~torch.isfinite(target) | (target < 0)][0].item()
            raise ShapeError(
                f"{name} probabilities must be finite and >= 0 (an all-zero vector means 'no label'). "
                f"Received a value {bad}."
            )
        valid = target.sum(dim=1) > 0
        if pad_mask is not None:
            valid = valid & pad_mask
        probs = torch.where(valid.unsqueeze(1), target, torch.zeros((), dtype=target.dtype, device=target.device))
        return Target(labels=None, probs=probs, valid=valid)
    if target.is_complex():
        raise ShapeError(f"{name} must be an integer or floating tensor. Received dtype {target.dtype}.")
    if tuple(target.shape) != label_shape:
        raise ShapeError(_target_shape_message(name, label_shape, prob_shape, target))
    valid = target != IGNORE_INDEX
    if ignore_index is not None:
        valid = valid & (target != ignore_index)
    bad = valid & ((target < 0) | (target >= c))
    if bool(bad.any()):
        value = int(target[bad][0])
        ignored = f"ignore_index={ignore_index} or " if ignore_index is not None else ""
        raise ShapeError(
            f"{name} values must be class indices in [0, {c}) (C = {c} from logits), {ignored}"
            f"{IGNORE_INDEX} (always ignored). Received a value {value}."
        )
    if pad_mask is not None:
        valid = valid & pad_mask
    labels = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device)).long()
    return Target(labels=labels, probs=None, valid=valid)


def _target_shape_message(name: str, label_shape, prob_shape, target: Tensor) -> str:
    return (
        f"{name} must be integer labels {shape_text(label_shape)} = (N, *spatial) or one-hot/probabilities "
        f"{shape_text(prob_shape)} = (N, C, *spatial), matching logits. "
        f"Received {name} of shape {shape_text(target.shape)} and dtype {target.dtype}."
    )


def check_sample_weight(sample_weight, label_shape: Sequence[int]) -> Tensor | None:
    """Check that ``sample_weight`` has as many dims as (N, *spatial), each of size 1 or equal; >= 0."""
    if sample_weight is None:
        return None
    label_shape = tuple(int(s) for s in label_shape)
    if not isinstance(sample_weight, Tensor):
        raise ShapeError(f"sample_weight must be a tensor or None. Received {type(sample_weight).__name__}.")
    shape = tuple(sample_weight.shape)
    if len(shape) != len(label_shape) or any(s not in (1, t) for s, t in zip(shape, label_shape)):
        raise ShapeError(
            f"sample_weight must broadcast to (N, *spatial) = {shape_text(label_shape)} with the same number of "
            f"dimensions, each of size 1 or equal (e.g. (N, T, 1, 1) for one weight per timestep). "
            f"Received sample_weight of shape {shape_text(shape)}."
        )
    if not bool(torch.isfinite(sample_weight).all()) or bool((sample_weight < 0).any()):
        bad = sample_weight[~torch.isfinite(sample_weight) | (sample_weight < 0)][0].item()
        raise ShapeError(f"sample_weight must be finite and >= 0. Received a value {bad}.")
    return sample_weight


def pixel_weight(
    target: Target, class_weight: Tensor | None, sample_weight: Tensor | None, dtype: torch.dtype
) -> Tensor:
    """(N, *spatial) weight of every pixel: class weight × sample weight, 0 at left-out pixels."""
    if class_weight is None:
        weight = target.probs.to(dtype).sum(dim=1) if target.probs is not None else target.valid.to(dtype)
    elif target.probs is not None:
        view = (1, -1) + (1,) * (target.probs.dim() - 2)
        weight = (target.probs.to(dtype) * class_weight.to(dtype).view(view)).sum(dim=1)
    else:
        weight = class_weight.to(dtype)[target.labels] * target.valid.to(dtype)
    if sample_weight is not None:
        weight = weight * sample_weight.to(dtype)
    return weight


def weighted_reduce(loss: Tensor, weight: Tensor, reduction: str) -> Tensor:
    """Reduce a per-pixel weighted loss map: ``"mean"`` is Σ loss / Σ weight, and 0 when Σ weight = 0."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    denominator = weight.sum()
    positive = denominator > 0
    return torch.where(positive, total / torch.where(positive, denominator, torch.ones_like(denominator)), 0.0)
