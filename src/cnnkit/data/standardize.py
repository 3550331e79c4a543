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

The statistics are computed in **one streaming pass** (:class:`StatisticsPass`, :func:`data_statistics`): one item
is decoded at a time, and only sums are kept, so a data set larger than memory costs the memory of one item. Each
item's float64 band sums are added *exactly* (Shewchuk's partials, as ``math.fsum``), so the result does not depend
on the order of the items or on how the pass is split at item boundaries (chunks, workers, ranks merged with
:meth:`StatisticsPass.merge`). Within one item the sums are float64 sums of its pixels: exact for integer-valued
bands while they stay below 2**53 (uint8 counts always; uint16 squares near 65,535 beyond about two million pixels of
one item are rounded), rounded in float64 otherwise — there the item's own sum is torch's, the same for the same
item on the same build and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.losses import class_weights
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.masking.sampler import spatial_sizes

__all__ = ["DataStatistics", "Standardized", "StatisticsPass", "band_statistics", "data_statistics", "missing_pixels"]


def missing_pixels(image: Tensor, nodata: float | None = None) -> Tensor:
    """(H, W) bool: True where any band of a ``(C, H, W)`` image is NaN, ±inf or ``nodata``."""
    bad = ~torch.isfinite(image)
    if nodata is not None:
        bad |= image == nodata
    return bad.any(dim=0)


def _add_exact(partials: list[float], value: float) -> None:
    """Add ``value`` to the exact sum held as non-overlapping ``partials`` (Shewchuk; ``math.fsum(partials)``)."""
    i = 0
    for other in partials:
        if abs(value) < abs(other):
            value, other = other, value
        high = value + other
        low = other - (high - value)
        if low:
            partials[i] = low
            i += 1
        value = high
    partials[i:] = [value]


@dataclass(frozen=True)
class DataStatistics:
    """What one pass over ``(image, label)`` pairs found (:func:`data_statistics`).

    Attributes:
        mean, std: Per-band mean and standard deviation over the pixels with data, ``(C,)`` float64; a band with
            zero spread gets std 1.
        class_counts: Pixels of each class among the pixels with data, ``(num_classes,)`` int64 (``None`` without
            ``num_classes``).
        class_weight: :func:`cnnkit.losses.class_weights` of those labels (``None`` without ``weighting``).
        items, pixels: Items and pixels seen.
        missing: Pixels without data (NaN, ±inf or ``nodata`` in any band).
        unlabelled: Pixels with data whose label is −100.
        without_data: Indices of the items with no pixel of data at all.
    """

    mean: Tensor
    std: Tensor
    class_counts: Tensor | None
    class_weight: Tensor | None
    items: int
    pixels: int
    missing: int
    unlabelled: int
    without_data: tuple[int, ...]


def _definition(running: StatisticsPass) -> tuple:
    """What a pass counts: its classes and its missing pixels (a NaN ``nodata`` adds nothing to NaN's)."""
    nodata = running.nodata
    return running.num_classes, None if nodata is None or math.isnan(nodata) else float(nodata)


class StatisticsPass:
    """Band sums, class counts and no-data counts accumulated one item at a time (``update``), mergeable
    (``merge``), turned into :class:`DataStatistics` by ``compute``; nothing of an item is kept.

    Args:
        num_classes: Count the labels of each class (each label must be in ``[0, num_classes)`` or −100).
        nodata: A band value meaning "no data" (besides NaN and ±inf).

    Examples:
        >>> one = StatisticsPass(num_classes=2)
        >>> _ = one.update(torch.tensor([[[1.0, 3.0], [float("nan"), 5.0]]]), torch.tensor([[0, 1], [1, -100]]))
        >>> result = one.compute()
        >>> result.mean, result.class_counts.tolist(), result.missing, result.unlabelled
        (tensor([3.], dtype=torch.float64), [1, 1], 1, 1)
    """

    def __init__(self, num_classes: int | None = None, nodata: float | None = None) -> None:
        if num_classes is not None:
            check_int(num_classes, "num_classes")
        self.num_classes, self.nodata = num_classes, nodata
        self.bands: int | None = None
        self._sum: list[list[float]] = []
        self._square: list[list[float]] = []
        self.counted = 0  # pixels with data
        self.items = self.pixels = self.missing = self.unlabelled = 0
        self.class_counts = torch.zeros(num_classes or 0, dtype=torch.int64)
        self.without_data: list[int] = []
        self._numbered = False  # an update was given its item's index (kept as it is by merge)

    def update(self, image, label=None, index: int | None = None) -> Tensor | None:
        """Add one ``(C, H, W)`` image (and its ``(H, W)`` label map); ``index`` names the item in
        :attr:`DataStatistics.without_data` (default: the count of items so far in this pass). Give each item its
        index in the whole data set when chunks are merged in any order.

        Returns:
            The label map with −100 where the image has no data (as :class:`Standardized` returns it), or ``None``
            without a label.
        """
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ShapeError(f"dataset images must be (C, H, W). Received an image of shape {tuple(image.shape)}.")
        if self.bands is None:
            self.bands = len(image)
            self._sum, self._square = [[] for _ in range(self.bands)], [[] for _ in range(self.bands)]
        elif len(image) != self.bands:
            raise ShapeError(f"dataset images must all have {self.bands} bands. Received one with {len(image)}.")
        missing = missing_pixels(image, self.nodata)
        values = image[:, ~missing].to(torch.float64)
        for band, (total, square) in enumerate(zip(values.sum(1).tolist(), (values * values).sum(1).tolist())):
            _add_exact(self._sum[band], total)
            _add_exact(self._square[band], square)
        if index is not None:
            self._numbered = True
        if values.shape[1] == 0:
            self.without_data.append(self.items if index is None else index)
        self.items += 1
        self.counted += values.shape[1]
        self.pixels += missing.numel()
        self.missing += int(missing.sum())
        if label is None:
            return None
        label = torch.as_tensor(label)
        if label.shape != missing.shape or label.is_floating_point() or label.is_complex():
            raise ShapeError(f"dataset labels must be integer (H, W) maps of the image's size "
                             f"{tuple(missing.shape)}. Received {label.dtype} {tuple(label.shape)}.")
        label = label.long().masked_fill(missing, IGNORE_INDEX)
        counted = label[label != IGNORE_INDEX]
        if self.num_classes is not None:
            if counted.numel() and (counted.min() < 0 or counted.max() >= self.num_classes):
                bad = int(counted[(counted < 0) | (counted >= self.num_classes)][0])
                hint = (f" If {bad} marks pixels without a label, pass ignore_index={bad} (--ignore-index {bad})."
                        if bad >= self.num_classes else "")
                raise ShapeError(f"labels must be class indices in [0, {self.num_classes}) or -100 (num_classes="
                                 f"{self.num_classes}). Received a label {bad}.{hint}")
            self.class_counts += torch.bincount(counted, minlength=self.num_classes)
        self.unlabelled += int(missing.numel() - missing.sum()) - counted.numel()
        return label

    def merge(self, other: StatisticsPass) -> StatisticsPass:
        """Add ``other``'s sums and counts (another chunk of the same data set) to these; exact, so the order of
        the chunks does not matter. Items without data keep the indices ``update`` was given; a chunk counted
        without indices has its positions shifted past this pass's items (then the order of the merges numbers
        them). Returns ``self``."""
        if _definition(other) != _definition(self):
            raise ShapeError(f"only passes with the same num_classes and nodata merge. Received num_classes="
                             f"{other.num_classes}, nodata={other.nodata} into num_classes={self.num_classes}, "
                             f"nodata={self.nodata}.")
        if other.bands is not None:
            if self.bands is None:
                self.bands = other.bands
                self._sum, self._square = [[] for _ in range(self.bands)], [[] for _ in range(self.bands)]
            elif other.bands != self.bands:
                raise ShapeError(f"dataset images must all have {self.bands} bands. Received a chunk with "
                                 f"{other.bands}.")
            for mine, theirs in ((self._sum, other._sum), (self._square, other._square)):
                for band in range(self.bands):
                    for value in theirs[band]:
                        _add_exact(mine[band], value)
        self.without_data += [i if other._numbered else self.items + i for i in other.without_data]
        self._numbered |= other._numbered
        self.items += other.items
        self.counted += other.counted
        self.pixels += other.pixels
        self.missing += other.missing
        self.unlabelled += other.unlabelled
        self.class_counts += other.class_counts
        return self

    def compute(self, class_weight: Tensor | None = None) -> DataStatistics:
        """The statistics so far. Raises :class:`ShapeError` when no item has a pixel with data."""
        if self.bands is None or self.counted == 0:
            raise ShapeError("dataset has no pixel with data in every band: band statistics are undefined.")
        mean = torch.tensor([math.fsum(p) / self.counted for p in self._sum], dtype=torch.float64)
        square = torch.tensor([math.fsum(p) / self.counted for p in self._square], dtype=torch.float64)
        std = (square - mean * mean).clamp_min(0).sqrt()
        if not bool(torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ShapeError(f"band statistics are not finite (mean {mean.tolist()}, std {std.tolist()}): values "
                             "beyond float64's range; the data set holds a damaged file.")
        return DataStatistics(
            mean=mean, std=torch.where(std > 0, std, torch.ones_like(std)),
            class_counts=self.class_counts.clone() if self.num_classes is not None else None,
            class_weight=class_weight, items=self.items, pixels=self.pixels, missing=self.missing,
            unlabelled=self.unlabelled, without_data=tuple(sorted(self.without_data)),
        )


def _item_error(dataset, index: int, error: ShapeError) -> ShapeError:
    """``error`` naming the item among thousands: its index, and its files where the data set lists them
    (:attr:`~cnnkit.data.SegmentationFolder.samples`)."""
    samples = getattr(dataset, "samples", None)
    files = f" ({', '.join(map(str, samples[index]))})" if isinstance(samples, list) else ""
    return ShapeError(f"item {index}{files}: {error}")


def data_statistics(
    dataset: Iterable,
    num_classes: int | None = None,
    nodata: float | None = None,
    weighting: str | None = None,
) -> DataStatistics:
    """Band statistics, class counts, class weights and no-data counts of ``dataset`` in one streaming pass.

    Each item is decoded once (``for image, label in dataset``) and dropped: the memory is one item's, whatever
    the size of the data set. Labels are counted where the image has data (a pixel without data is −100, as
    :class:`Standardized` returns it).

    Args:
        dataset: ``(image (C, H, W), label (H, W))`` pairs, e.g. a :class:`~cnnkit.data.SegmentationFolder`.
        num_classes: Count each class's pixels (required for ``weighting``).
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        weighting: A ``method`` of :func:`cnnkit.losses.class_weights` (``"inverse_frequency"``, …): the class
            weights of those labels, computed in the same pass.

    Returns:
        :class:`DataStatistics`.

    Examples:
        >>> items = [(torch.tensor([[[0.0, 2.0]]]), torch.tensor([[0, 1]])),
        ...          (torch.tensor([[[4.0]]]), torch.tensor([[1]]))]
        >>> found = data_statistics(items, num_classes=2, weighting="inverse_frequency")
        >>> found.mean.item(), found.class_counts.tolist(), found.class_weight.tolist()
        (2.0, [1, 2], [1.5, 0.75])
    """
    if weighting is not None and num_classes is None:
        raise ShapeError(f"weighting needs num_classes. Received weighting={weighting!r}, num_classes=None.")
    running = StatisticsPass(num_classes, nodata)

    def labels():
        for index, item in enumerate(dataset):
            try:
                yield running.update(item[0], item[1], index)
            except ShapeError as error:
                raise _item_error(dataset, index, error) from None

    weight = None
    if weighting is not None:
        weight = class_weights(labels(), num_classes, weighting)
    else:
        for _ in labels():
            pass
    return running.compute(weight)


def band_statistics(dataset, nodata: float | None = None) -> tuple[Tensor, Tensor]:
    """Per-band mean and standard deviation over the pixels that hold data, in float64, in one streaming pass
    (:class:`StatisticsPass`: exact sums of each item's float64 sums).

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
    running = StatisticsPass(nodata=nodata)
    for index, item in enumerate(dataset):
        try:
            running.update(item[0], index=index)
        except ShapeError as error:
            raise _item_error(dataset, index, error) from None
    found = running.compute()
    return found.mean, found.std


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
