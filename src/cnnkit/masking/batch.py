"""Padded batches that remember each sample's true extent.

:func:`pad_batch` places differently sized samples at the top-left corner of one zero canvas; the
returned :class:`PaddedBatch` keeps the per-sample sizes so that :func:`cnnkit.masked` can run any CNN on
it with the numbers each image would give alone, and so that losses and metrics can ignore the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

from cnnkit._checks import ntuple
from cnnkit.errors import ShapeError

__all__ = ["IGNORE_INDEX", "PaddedBatch", "collate_padded", "extent_mask", "pad_batch"]


def extent_mask(sizes: Tensor, canvas: Sequence[int]) -> Tensor:
    """Boolean mask (N, 1, *canvas): True inside each sample's extent ``sizes[n]`` (top-left anchored).

    Examples:
        >>> extent_mask(torch.tensor([[2, 3], [1, 1]]), (2, 4)).int()[:, 0]
        tensor([[[1, 1, 1, 0],
                 [1, 1, 1, 0]],
        <BLANKLINE>
                [[1, 0, 0, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    n, d = sizes.shape
    if d != len(canvas):
        raise ShapeError(f"sizes has {d} spatial dimensions but the canvas {tuple(canvas)} has {len(canvas)}.")
    mask = torch.ones((n, 1, *canvas), dtype=torch.bool, device=sizes.device)
    for axis, extent in enumerate(canvas):
        shape = [1] * (len(canvas) + 2)
        shape[axis + 2] = extent
        positions = torch.arange(extent, device=sizes.device).view(shape)
        mask = mask & (positions < sizes[:, axis].view(-1, *([1] * (len(canvas) + 1))))
    return mask


@dataclass
class PaddedBatch:
    """A batch of differently sized samples on one canvas.

    Attributes:
        data: (N, C, *canvas) tensor; sample ``n`` occupies ``data[n, :, :sizes[n, 0], :sizes[n, 1]]`` and
            everything else is zero.
        sizes: (N, D) integer tensor of each sample's spatial size (D = 1, 2 or 3).

    Examples:
        >>> b = pad_batch([torch.ones(1, 2, 3), torch.ones(1, 3, 1)])
        >>> b.data.shape, b.sizes.tolist()
        (torch.Size([2, 1, 3, 3]), [[2, 3], [3, 1]])
        >>> [x.shape for x in b.unpad()]
        [torch.Size([1, 2, 3]), torch.Size([1, 3, 1])]
        >>> b.padding_fraction()
        0.5
    """

    data: Tensor
    sizes: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.data, Tensor) or self.data.dim() < 3:
            raise ShapeError(
                f"data must be a tensor (N, C, *spatial). Received "
                f"{type(self.data).__name__ if not isinstance(self.data, Tensor) else tuple(self.data.shape)}."
            )
        if not isinstance(self.sizes, Tensor) or self.sizes.is_floating_point() or self.sizes.is_complex() \
                or self.sizes.dtype == torch.bool:
            got = self.sizes.dtype if isinstance(self.sizes, Tensor) else type(self.sizes).__name__
            raise ShapeError(f"sizes must be an integer tensor (N, D). Received {got}.")
        if self.sizes.dim() != 2 or self.sizes.shape[0] != self.data.shape[0]:
            raise ShapeError(
                f"sizes must have shape (N, D) with N = data.shape[0] = {self.data.shape[0]}. "
                f"Received sizes.shape={tuple(self.sizes.shape)}."
            )
        if self.data.dim() != self.sizes.shape[1] + 2:
            raise ShapeError(
                f"data must be (N, C, *spatial) with {self.sizes.shape[1]} spatial dimensions. "
                f"Received data.shape={tuple(self.data.shape)}."
            )
        canvas = torch.tensor(self.data.shape[2:], device=self.sizes.device)
        outside = (self.sizes < 0) | (self.sizes > canvas)
        if bool(outside.any()):  # one host sync per batch
            row = int(outside.any(dim=1).nonzero()[0])
            raise ShapeError(
                f"sizes must lie in [0, canvas] = [0, {tuple(self.data.shape[2:])}] (each sample's extent on the "
                f"canvas). Received sizes[{row}]={self.sizes[row].tolist()}."
            )

    @property
    def canvas(self) -> tuple[int, ...]:
        """Spatial size of the shared canvas."""
        return tuple(self.data.shape[2:])

    def mask(self) -> Tensor:
        """(N, 1, *canvas) bool tensor, True at each sample's valid positions."""
        return extent_mask(self.sizes, self.canvas)

    def unpad(self) -> list[Tensor]:
        """The samples cut back to their own sizes (views of ``data``)."""
        out = []
        for sample, size in zip(self.data, self.sizes.tolist()):
            out.append(sample[(slice(None), *(slice(0, s) for s in size))])
        return out

    def padding_fraction(self) -> float:
        """Share of canvas positions that are padding (0 = no waste)."""
        valid = self.sizes.prod(dim=1).sum().item()
        return 1.0 - valid / (self.data.shape[0] * math.prod(self.canvas))

    def to(self, *args, **kwargs) -> PaddedBatch:
        """Move/cast ``data`` like ``Tensor.to``; ``sizes`` follows the device only."""
        data = self.data.to(*args, **kwargs)
        return PaddedBatch(data, self.sizes.to(data.device))

    def __len__(self) -> int:
        return self.data.shape[0]


def pad_batch(
    images: Sequence[Tensor], multiple_of: int | Sequence[int] = 1, value: float = 0.0
) -> PaddedBatch:
    """Pad differently sized samples (C, *spatial) into one :class:`PaddedBatch`, each at the top-left.

    Args:
        images: Tensors with the same number of channels, dtype and rank (1, 2 or 3 spatial dimensions).
        multiple_of: Round the canvas up to a multiple of this (e.g. a network's total stride).
        value: Fill value of the padding (keep 0 for :func:`cnnkit.masked`); it must be a number the
            images' dtype holds exactly (``value=0.5`` for integer images is an error, not 0).

    Examples:
        >>> pad_batch([torch.ones(3, 5, 7), torch.ones(3, 6, 2)], multiple_of=4).data.shape
        torch.Size([2, 3, 8, 8])
    """
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise ShapeError(f"images must be a sequence of tensors (C, *spatial). Received {type(images).__name__}.")
    if len(images) == 0:
        raise ShapeError("images must contain at least one tensor. Received an empty sequence.")
    first = images[0]
    if not isinstance(first, Tensor) or first.dim() not in (2, 3, 4):
        raise ShapeError(
            "each image must be a tensor (C, *spatial) with 1 to 3 spatial dimensions. "
            f"Received images[0] of shape {tuple(getattr(first, 'shape', ()))}."
        )
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != first.dim() or img.shape[0] != first.shape[0]:
            raise ShapeError(
                f"all images must have the same rank and channel count as images[0] {tuple(first.shape)}. "
                f"Received images[{i}] of shape {tuple(getattr(img, 'shape', ()))}."
            )
        if img.dtype != first.dtype or img.device != first.device:
            raise ShapeError(f"all images must share dtype and device. images[0] is {first.dtype} on "
                             f"{first.device}; images[{i}] is {img.dtype} on {img.device}.")
        if any(s == 0 for s in img.shape[1:]):
            raise ShapeError(f"images must not be empty. Received images[{i}] of shape {tuple(img.shape)}.")
    d = first.dim() - 1
    multiples = ntuple(multiple_of, d, "multiple_of")
    _check_fill(value, first.dtype, "value")
    sizes = torch.tensor([list(img.shape[1:]) for img in images], dtype=torch.long)
    canvas = [math.ceil(int(m) / k) * k for m, k in zip(sizes.max(dim=0).values.tolist(), multiples)]
    data = first.new_full((len(images), first.shape[0], *canvas), value)
    for n, img in enumerate(images):
        data[(n, slice(None), *(slice(0, s) for s in img.shape[1:]))] = img
    return PaddedBatch(data, sizes.to(first.device))


def _check_fill(value, dtype: torch.dtype, name: str) -> None:
    """``value`` must be a number that ``dtype`` holds exactly (0.5 in an int tensor became 0 silently)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, Real) or (isinstance(value, bool) and dtype != torch.bool):
        raise ShapeError(f"{name} must be a real number. Received {name}={value!r}.")
    if dtype.is_floating_point or dtype.is_complex:
        return
    info = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    if not (isinstance(value, Integral) or (math.isfinite(value) and float(value).is_integer())) \
            or not info[0] <= value <= info[1]:
        raise ShapeError(
            f"{name} must be a value that the images' dtype {dtype} holds exactly (an integer in "
            f"[{info[0]}, {info[1]}]). Received {name}={value!r}."
        )


IGNORE_INDEX = -100  # the default ignore_index of torch.nn.functional.cross_entropy


def collate_padded(samples: Sequence, label_pad_value: int = IGNORE_INDEX) -> PaddedBatch | tuple:
    """``DataLoader`` collate function: pads images into a :class:`PaddedBatch`, and label maps alike.

    Each sample is either an image tensor (C, *spatial) or a tuple ``(image, target, ...)``. A target
    tensor whose trailing dimensions equal the image's spatial size is a *map* and is padded to the
    canvas as a plain tensor: integer maps (*spatial) with ``label_pad_value`` (default -100, which
    ``F.cross_entropy`` ignores), float maps such as one-hot (K, *spatial) with 0 (an all-zero one-hot
    vector means "no label"), bool maps with ``False``. The maps of one column must share dtype and
    leading shape (a float map is never cast into a long canvas). Other targets go through
    ``torch.utils.data.default_collate``.

    Examples:
        >>> batch, labels = collate_padded([(torch.ones(3, 4, 5), 1), (torch.ones(3, 2, 2), 0)])
        >>> batch.data.shape, labels
        (torch.Size([2, 3, 4, 5]), tensor([1, 0]))
        >>> _, maps = collate_padded([(torch.ones(1, 1, 2), torch.tensor([[1, 2]])),
        ...                           (torch.ones(1, 2, 1), torch.tensor([[3], [4]]))])
        >>> maps
        tensor([[[   1,    2],
                 [-100, -100]],
        <BLANKLINE>
                [[   3, -100],
                 [   4, -100]]])
    """
    from torch.utils.data import default_collate

    if not isinstance(samples, Sequence) or len(samples) == 0:
        raise ShapeError(f"samples must be a non-empty sequence of samples. Received {samples!r}.")
    if isinstance(samples[0], Tensor):
        return pad_batch(list(samples))
    columns = list(zip(*samples))
    images = pad_batch(list(columns[0]))
    d = images.sizes.shape[1]
    out: list = [images]
    for column in columns[1:]:
        is_map = all(
            isinstance(t, Tensor) and t.dim() >= d and tuple(t.shape[t.dim() - d:]) == tuple(img.shape[1:])
            for t, img in zip(column, columns[0])
        )
        if not is_map:
            out.append(default_collate(list(column)))
            continue
        first = column[0]
        for n, t in enumerate(column):
            if t.dtype != first.dtype or t.shape[: t.dim() - d] != first.shape[: first.dim() - d]:
                raise ShapeError(  # a float map written into a long canvas was truncated
                    f"The maps of one target column must share dtype and leading shape. Received sample 0's "
                    f"{first.dtype} map of shape {tuple(first.shape)} and sample {n}'s {t.dtype} map of shape "
                    f"{tuple(t.shape)}."
                )
        fill = 0 if first.is_floating_point() or first.dtype == torch.bool else label_pad_value
        _check_fill(fill, first.dtype, "label_pad_value")
        lead = tuple(column[0].shape[: column[0].dim() - d])
        maps = column[0].new_full((len(column), *lead, *images.canvas), fill)
        for n, t in enumerate(column):
            maps[(n, *(slice(None),) * len(lead), *(slice(0, s) for s in t.shape[t.dim() - d:]))] = t
        out.append(maps)
    return tuple(out)
