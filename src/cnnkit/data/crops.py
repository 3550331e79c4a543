"""Fixed-size training crops centred on rare-class pixels: more rare pixels per batch, no reweighting needed.

The "sample regions of interest" answer to class imbalance: cut small patches around pixels of the
under-represented classes (with a random offset), so that the network sees them often; train a fully
convolutional network on the patches and run it on whole images of any size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit._checks import is_int, ntuple
from cnnkit._random import EpochSeeded
from cnnkit.errors import ShapeError
from cnnkit.masking.batch import IGNORE_INDEX

__all__ = ["RareClassCrops"]


class RareClassCrops(EpochSeeded, Dataset):
    """Crops of fixed size, each centred (with jitter) on a pixel of a chosen class with a given probability.

    For crop ``index`` of image ``index // num_crops``:

    1. draw a class ``c`` with probability ``class_ratios[c]`` (with the remaining probability
       ``1 − Σ class_ratios``, no class: step 3);
    2. if the label map has pixels of ``c``, pick one uniformly, shift it by an offset drawn uniformly from
       ``[−jitter, jitter]`` per axis, and take the window ``crop_size`` whose centre
       (``start = centre − crop_size // 2``) is that point;
    3. otherwise (no class drawn, or ``c`` absent from this image) take a window at a uniformly random
       location;
    4. shift the window inside the image (clamping). Because ``jitter <= (crop_size − 1) // 2``, the chosen
       pixel always lies inside the crop.

    An image smaller than the crop along some axis is first padded at the end of that axis: the image with
    0, the label map with −100 (:data:`~cnnkit.masking.IGNORE_INDEX`), so the padding is ignored by the
    losses and metrics of cnnkit and by ``F.cross_entropy``.

    Randomness: a seed is drawn once from ``generator`` at construction; crop ``index`` of epoch ``e``
    depends only on (seed, e, index), so it is reproducible, identical in every ``DataLoader`` worker and
    process, and independent of the order of access. Call :meth:`set_epoch` to get new crops each epoch.

    Args:
        dataset: Indexable data set (``len`` and ``[i]``) of pairs ``(image (C, *spatial), label (*spatial))``
            with integer labels; *spatial is 1-D, 2-D (H, W) or 3-D.
        crop_size: Crop size, an integer or one per spatial axis.
        class_ratios: ``{class: probability}``: the share of crops centred on that class; probabilities in
            [0, 1] summing to at most 1.
        jitter: Maximal offset of the crop centre from the chosen pixel, an integer or one per axis, at most
            ``(crop_size − 1) // 2``. Default: ``crop_size // 4`` (capped at that bound).
        num_crops: Crops per image per epoch; ``len(self) = num_crops · len(dataset)``.
        generator: ``torch.Generator`` the seed is drawn from (default: the global generator).

    Shape:
        - item: ``(image (C, *crop_size), label (*crop_size))``

    Examples:
        >>> label = torch.zeros(32, 32, dtype=torch.long)
        >>> label[20, 5] = 1                                         # one rare pixel
        >>> crops = RareClassCrops([(torch.randn(3, 32, 32), label)], crop_size=8, class_ratios={1: 1.0},
        ...                        num_crops=4, generator=torch.Generator().manual_seed(0))
        >>> image, target = crops[0]
        >>> image.shape, target.shape, len(crops)
        (torch.Size([3, 8, 8]), torch.Size([8, 8]), 4)
        >>> all(bool((crops[i][1] == 1).any()) for i in range(len(crops)))   # every crop holds it
        True
        >>> crops
        RareClassCrops(crop_size=8, class_ratios={1: 1.0}, jitter=2, num_crops=4)
    """

    def __init__(
        self,
        dataset,
        crop_size: int | Sequence[int],
        class_ratios: Mapping[int, float],
        jitter: int | Sequence[int] | None = None,
        num_crops: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ShapeError(
                f"dataset must support len() and indexing. Received {type(dataset).__name__}."
            )
        self.dataset = dataset
        self.crop_size = crop_size
        rank = 1 if is_int(crop_size) else len(tuple(crop_size)) if isinstance(crop_size, Sequence) else 0
        if rank not in (1, 2, 3):
            raise ShapeError(
                "crop_size must be an integer >= 1 or a tuple of 1 to 3 integers >= 1. "
                f"Received crop_size={crop_size!r}."
            )
        ntuple(crop_size, rank, "crop_size")  # type and sign
        if not isinstance(class_ratios, Mapping):
            raise ShapeError(
                f"class_ratios must be a mapping {{class: probability}}. Received class_ratios={class_ratios!r}."
            )
        for c, p in class_ratios.items():
            if not is_int(c) or c < 0:
                raise ShapeError(
                    f"class_ratios keys must be class indices >= 0. Received class_ratios={class_ratios!r}."
                )
            if not isinstance(p, Real) or isinstance(p, bool) or not 0 <= p <= 1:
                raise ShapeError(
                    f"class_ratios values must be probabilities in [0, 1]. Received class_ratios={class_ratios!r}."
                )
        if sum(class_ratios.values()) > 1 + 1e-9:
            raise ShapeError(
                f"class_ratios must sum to at most 1 (the rest are random crops). "
                f"Received class_ratios={class_ratios!r} summing to {sum(class_ratios.values()):g}."
            )
        self.class_ratios = {int(c): float(p) for c, p in class_ratios.items()}
        self.jitter = jitter
        self._jitters(rank)  # checks type, sign and bound
        if not is_int(num_crops) or num_crops < 1:
            raise ShapeError(f"num_crops must be an integer >= 1. Received num_crops={num_crops!r}.")
        self.num_crops = int(num_crops)
        self._draw_seed(generator)

    def __len__(self) -> int:
        return len(self.dataset) * self.num_crops

    def _jitters(self, rank: int) -> tuple[int, ...]:
        crop = ntuple(self.crop_size, rank, "crop_size")
        bound = tuple((k - 1) // 2 for k in crop)
        if self.jitter is None:
            return tuple(min(k // 4, b) for k, b in zip(crop, bound))
        jitter = ntuple(self.jitter, rank, "jitter", minimum=0)
        if any(j > b for j, b in zip(jitter, bound)):
            raise ShapeError(
                f"jitter must be at most (crop_size - 1) // 2 = {bound if rank > 1 else bound[0]} per axis, so "
                f"that the chosen pixel stays inside the crop. Received jitter={self.jitter!r}, "
                f"crop_size={self.crop_size!r}."
            )
        return jitter

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))

    def window(self, label: Tensor, index: int) -> tuple[tuple[int, ...], int | None]:
        """Start of crop ``index``'s window in ``label`` (already at least ``crop_size``) and the class it
        was centred on (None for a random location)."""
        rank = label.dim()
        crop = ntuple(self.crop_size, rank, "crop_size")
        jitter = self._jitters(rank)
        g = self._generator(index)
        u = float(torch.rand((), generator=g, dtype=torch.float64))
        chosen = None
        for c, p in self.class_ratios.items():
            if u < p:
                chosen = c
                break
            u -= p
        highest = [s - k for s, k in zip(label.shape, crop)]
        if chosen is not None:
            positions = (label == chosen).nonzero()
            if len(positions) == 0:
                chosen = None
        if chosen is None:
            start = [int(torch.randint(0, h + 1, (), generator=g)) for h in highest]
            return tuple(start), None
        pixel = positions[int(torch.randint(0, len(positions), (), generator=g))].tolist()
        start = []
        for p, k, j, h in zip(pixel, crop, jitter, highest):
            offset = int(torch.randint(-j, j + 1, (), generator=g))
            start.append(min(max(p + offset - k // 2, 0), h))
        return tuple(start), chosen

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not is_int(index) or not -len(self) <= index < len(self):
            raise IndexError(f"index must be an integer in [0, {len(self)}). Received index={index!r}.")
        index = int(index) % len(self)
        item = self.dataset[index // self.num_crops]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ShapeError(
                f"dataset items must be (image, label) pairs. Received {type(item).__name__} at "
                f"dataset[{index // self.num_crops}]."
            )
        image, label = item[0], item[1]
        if not isinstance(image, Tensor) or not isinstance(label, Tensor) or label.dim() not in (1, 2, 3):
            raise ShapeError(
                "dataset items must be tensors (image (C, *spatial), label (*spatial)) with 1 to 3 spatial axes. "
                f"Received shapes {tuple(getattr(image, 'shape', ()))} and {tuple(getattr(label, 'shape', ()))}."
            )
        if image.dim() != label.dim() + 1 or tuple(image.shape[1:]) != tuple(label.shape):
            raise ShapeError(
                f"image (C, *spatial) and label (*spatial) must share the spatial size. Received image "
                f"{tuple(image.shape)} and label {tuple(label.shape)} at dataset[{index // self.num_crops}]."
            )
        if label.is_floating_point() or label.is_complex():
            raise ShapeError(f"label must hold integer classes. Received dtype {label.dtype}.")
        if not is_int(self.crop_size) and len(tuple(self.crop_size)) != label.dim():
            raise ShapeError(
                f"crop_size must have one entry per spatial axis of the label maps. Received crop_size="
                f"{self.crop_size!r} and a label of shape {tuple(label.shape)} at dataset[{index // self.num_crops}]."
            )
        crop = ntuple(self.crop_size, label.dim(), "crop_size")
        short = [max(k - s, 0) for k, s in zip(crop, label.shape)]
        if any(short):
            pad = [v for amount in reversed(short) for v in (0, amount)]  # F.pad: last axis first
            image = F.pad(image, pad, value=0.0)
            label = F.pad(label, pad, value=IGNORE_INDEX)
        start, _ = self.window(label, index)
        region = tuple(slice(s, s + k) for s, k in zip(start, crop))
        return image[(slice(None), *region)].clone(), label[region].clone()

    def __repr__(self) -> str:
        rank = 1 if is_int(self.crop_size) else len(tuple(self.crop_size))
        jitter = self._jitters(rank)
        jitter_text = jitter[0] if is_int(self.crop_size) and len(set(jitter)) == 1 else jitter
        return (
            f"{type(self).__name__}(crop_size={self.crop_size!r}, class_ratios={self.class_ratios!r}, "
            f"jitter={jitter_text!r}, num_crops={self.num_crops})"
        )

