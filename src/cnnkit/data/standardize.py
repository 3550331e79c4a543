"""Images as a network wants them: bands scaled to unit variance, missing pixels marked, sizes rounded up.

Real scenes come with raw counts (0–255, 0–65535, reflectance), with pixels that hold no data (NaN in
float TIFFs, or a "nodata" value such as 0 or −9999) and with sizes a network's strides do not divide.
:class:`Standardized` wraps a data set of ``(image, label)`` pairs and returns, per item:

1. a **validity band** ``v`` (1 = data, 0 = missing): a pixel is missing where *any* band is NaN or ±inf or
   equals ``nodata``;
2. the **bands** as ``(x − mean) / std`` per band, and 0 where the pixel is missing;
3. the image ``cat([bands, v])``: ``C + 1`` channels, the validity band last;
4. the **label** with −100 (not counted by the losses and metrics) where the pixel is missing;
5. both **padded** at the bottom and right to a multiple of ``multiple_of`` with missing pixels (validity 0,
   label −100), so that a network with total stride ``multiple_of`` sees whole cells. Under
   :func:`cnnkit.masked` these are ordinary invalid pixels: they never count in the loss or the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.masking.sampler import spatial_sizes

__all__ = ["Standardized", "band_statistics", "missing_pixels"]


def missing_pixels(image: Tensor, nodata: float | None = None) -> Tensor:
    """(H, W) bool: True where any band of a ``(C, H, W)`` image is NaN, ±inf or ``nodata``."""
    bad = ~torch.isfinite(image)
    if nodata is not None:
        bad |= image == nodata
    return bad.any(dim=0)


def band_statistics(dataset, nodata: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-band mean and standard deviation over the pixels that hold data, in float64.

    Args:
        dataset: ``(image (C, H, W), label)`` pairs, all with the same C.
        nodata: A band value that means "no data" (besides NaN and ±inf).

    Returns:
        ``(mean, std)``, each ``(C,)`` float64; a band with zero spread gets std 1.

    Examples:
        >>> image = torch.tensor([[[1.0, 3.0], [float("nan"), 5.0]]])
        >>> band_statistics([(image, torch.zeros(2, 2))])
        (tensor([3.], dtype=torch.float64), tensor([1.6330], dtype=torch.float64))
    """
    total = square = count = None
    for image, _ in dataset:
        image = torch.as_tensor(image).to(torch.float64)
        if image.ndim != 3:
            raise ShapeError(f"dataset images must be (C, H, W). Received an image of shape {tuple(image.shape)}.")
        valid = ~missing_pixels(image, nodata)
        values = image[:, valid]
        if total is None:
            total, square, count = values.new_zeros(len(image)), values.new_zeros(len(image)), 0
        elif len(image) != len(total):
            raise ShapeError(f"dataset images must all have {len(total)} bands. Received one with {len(image)}.")
        total += values.sum(1)
        square += (values * values).sum(1)
        count += values.shape[1]
    if total is None or count == 0:
        raise ShapeError("dataset has no pixel with data in every band: band statistics are undefined.")
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _band_vector(value, name: str) -> Tensor:
    """``value`` (one number per band) as a finite 1-D float64 tensor, or one clear error."""
    try:
        vector = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ShapeError(f"{name} must be a sequence or 1-D tensor of numbers, one per band. "
                         f"Received {name}={value!r}.") from None
    if vector.dim() > 1 or vector.numel() == 0 or not bool(torch.isfinite(vector).all()):
        raise ShapeError(f"{name} must hold one finite number per band. Received {name}={value!r}.")
    return vector.flatten()


class Standardized(Dataset):
    """``(image, label)`` pairs with standardised bands, a validity band, −100 labels where data is missing.

    See the module docstring for the five steps.

    Args:
        dataset: ``(image (C, H, W), label (H, W))`` pairs, e.g. a :class:`~cnnkit.data.SegmentationFolder`.
        mean, std: Per-band statistics, sequences or tensors of length C. Default: estimated from
            ``dataset`` (:func:`band_statistics`). Give a held-out split its training split's values.
        nodata: A band value meaning "no data" (besides NaN and ±inf), e.g. 0 or −9999.
        multiple_of: Round height and width up to a multiple of this (e.g. 4 for a network with two
            stride-2 stages).

    Attributes:
        mean, std: The statistics used, ``(C,)`` float64.
        sizes: ``[(H, W), …]`` after rounding up, for :class:`~cnnkit.masking.BucketBatchSampler`.
        in_channels: ``C + 1``, the channels of every returned image.

    Examples:
        >>> image = torch.tensor([[[0.0, 2.0, 4.0]]])             # one band, 1 × 3, the first pixel nodata
        >>> data = Standardized([(image, torch.tensor([[1, 1, 0]]))], nodata=0.0, multiple_of=2)
        >>> x, y = data[0]
        >>> x[0]                                                     # (x - 3) / 1, 0 where missing, padded
        tensor([[ 0., -1.,  1.,  0.],
                [ 0.,  0.,  0.,  0.]])
        >>> x[1]                                                     # the validity band
        tensor([[0., 1., 1., 0.],
                [0., 0., 0., 0.]])
        >>> y
        tensor([[-100,    1,    0, -100],
                [-100, -100, -100, -100]])
    """

    def __init__(
        self,
        dataset,
        mean: Sequence[float] | Tensor | None = None,
        std: Sequence[float] | Tensor | None = None,
        nodata: float | None = None,
        multiple_of: int = 1,
    ) -> None:
        check_int(multiple_of, "multiple_of")
        if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))):
            raise ShapeError(f"nodata must be a number or None. Received nodata={nodata!r}.")
        if (mean is None) != (std is None):
            raise ShapeError("mean and std must be given together (or both left out to estimate them). "
                             f"Received mean={mean!r}, std={std!r}.")
        if mean is None:
            mean, std = band_statistics(dataset, nodata)
        self.mean, self.std = _band_vector(mean, "mean"), _band_vector(std, "std")
        if len(self.mean) != len(self.std) or not bool((self.std > 0).all()):
            raise ShapeError(f"std must be positive and as long as mean. Received mean={self.mean.tolist()}, "
                             f"std={self.std.tolist()}.")
        self.dataset, self.nodata, self.multiple_of = dataset, nodata, multiple_of
        self.in_channels = len(self.mean) + 1
        self._shift, self._scale = self.mean.float()[:, None, None], self.std.float()[:, None, None]
        self.sizes = [tuple(math.ceil(v / multiple_of) * multiple_of for v in s) for s in spatial_sizes(dataset)]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.dataset[index]
        image, label = torch.as_tensor(image), torch.as_tensor(label).long()
        if image.ndim != 3 or len(image) != len(self.mean) or image.shape[1:] != label.shape:
            raise ShapeError(
                f"item {index}: expected an image ({len(self.mean)}, H, W) and a label (H, W) of the same size. "
                f"Received image {tuple(image.shape)} and label {tuple(label.shape)}."
            )
        missing = missing_pixels(image, self.nodata)
        bands = (image.float() - self._shift) / self._scale
        bands = bands.masked_fill(missing, 0.0)
        out = torch.cat([bands, (~missing).float()[None]])
        label = label.masked_fill(missing, IGNORE_INDEX)
        height, width = label.shape
        canvas = [math.ceil(v / self.multiple_of) * self.multiple_of for v in (height, width)]
        if canvas != [height, width]:
            padded = out.new_zeros(len(out), *canvas)
            padded[:, :height, :width] = out
            labels = label.new_full(canvas, IGNORE_INDEX)
            labels[:height, :width] = label
            out, label = padded, labels
        return out, label

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.dataset).__name__}, bands={len(self.mean)}, nodata={self.nodata!r}, "
                f"multiple_of={self.multiple_of})  # {len(self)} samples")
