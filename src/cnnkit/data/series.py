"""Image time series from a folder: scenes of T dates × C bands with clouds, and per-pixel labels.

Layout::

    root/
      series/  field_01.tif            a T × C × H × W or T × H × W × C TIFF stack
               field_02/               or a folder of per-date images (PNG / TIFF), in name order
                 2024-04-02.tif  2024-05-11.tif  ...
      labels/  field_01.png            an H × W label image (``ignore_index`` = no label) ...
               field_02.npy            ... or a one-hot H × W × K (or K × H × W) array: an all-zero pixel has
                                       no label (the seed question's format)
      masks/   field_01.npy            optional: T × H × W per-date validity (non-zero = valid)
      weights/ field_01.npy            optional: H × W per-pixel loss weights (≥ 0); then one per series

Scenes may differ in T and in size. A pixel holds no data on a date where any of its bands is NaN or ±inf,
equals ``nodata``, or its mask (when given) is 0. Items are ``(series (T, C, H, W) float32, valid (T, H, W)
bool, label (H, W) int64)`` — and ``weight (H, W) float32`` fourth when ``weights/`` exists — with −100 where
there is no label; the series keeps NaN where it had NaN (the
model selects it away, see :class:`~cnnkit.models.SeriesSegNet`). :func:`collate_series` pads a list of
items at the end in time and at the bottom and right in space (``valid = False`` and label −100 there).

**Acquisition dates** (:mod:`cnnkit.data.dates`): from a ``dates.json`` beside the series, the per-date files'
names (``YYYYMMDD`` or ``YYYY-MM-DD``), or a TIFF stack's band descriptions (read through :mod:`cnnkit.rasters`);
without any, the order of the files is the time axis (:attr:`SeriesFolder.time_axis` says which). Items are
:class:`SeriesItem` tuples — the same elements, plus the days ``(T,)`` as their ``days`` attribute — and
:func:`collate_series` returns the padded days ``(N, T)`` as its result's ``days``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit.data.crops import RareClassCrops
from cnnkit.data.dates import SeriesDates, dates_from_descriptions, dates_from_tags, series_dates
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.rasters.plausibility import check_png
from cnnkit.rasters.reading import PageStack, read_stack

__all__ = ["SeriesBatch", "SeriesCrops", "SeriesFolder", "SeriesItem", "SeriesWindows", "StandardizedSeries",
           "collate_series", "open_series", "read_series", "series_band_statistics"]


class SeriesItem(tuple):
    """A series item ``(series, valid, label[, weight])`` — a plain tuple of those elements — with the series'
    acquisition days ``(T,)`` int64 as the attribute ``days`` (``None``: unknown, read as ``0 … T−1``).

    Examples:
        >>> item = SeriesItem((torch.zeros(2, 1, 3, 3), torch.ones(2, 3, 3, dtype=torch.bool), torch.zeros(3, 3)),
        ...                   days=torch.tensor([92, 131]))
        >>> series, valid, label = item
        >>> len(item), item.days.tolist()
        (3, [92, 131])
    """

    days: Tensor | None

    def __new__(cls, elements, days: Tensor | None = None):
        item = super().__new__(cls, elements)
        item.days = days
        return item

    def __reduce__(self):
        return SeriesItem, (tuple(self), self.days)


class SeriesBatch(tuple):
    """What :func:`collate_series` returns: ``(x, valid, labels[, weight])``, with the padded days ``(N, T)``
    int64 as the attribute ``days`` (0 at padded dates; ``0 … T−1`` for items without days)."""

    days: Tensor

    def __new__(cls, elements, days: Tensor):
        batch = super().__new__(cls, elements)
        batch.days = days
        return batch

    def __reduce__(self):
        return SeriesBatch, (tuple(self), self.days)


_IMAGES = (".png", ".tif", ".tiff")
_TIFFS = (".tif", ".tiff")


def _read_stack(path: Path, band_count: int | None) -> tuple[np.ndarray, dict[str, tuple[date, ...] | None]]:
    """A stack file as an array and the dates it carries (``{"descriptions": …, "tags": …}``, ``None`` where a
    source has none). A TIFF is read through :func:`cnnkit.rasters.read_stack` (GDAL, every page once, declared
    nodata as NaN): ``(T, C, H, W)`` by its band descriptions' dates when they hold them, else shaped as written
    (``tifffile``'s recorded shape), else its bands in order as dates of ``band_count`` bands (a GeoTIFF of T·C
    bands), or of as many bands as its tags' dates say."""
    if path.suffix.lower() not in _TIFFS:
        return _read(path), {}
    stack = read_stack(path)
    described = dates_from_descriptions(stack.descriptions, band_count, str(path))
    if described is not None:
        series = stack.by_band()
        return series.reshape(len(described), -1, *series.shape[1:]), {"descriptions": described}
    tagged = dates_from_tags(stack.tags, str(path))
    total = stack.pages * stack.bands
    steps = total // band_count if band_count and total % band_count == 0 else (
        len(tagged) if tagged and total % len(tagged) == 0 else None)
    if stack.recorded or steps is None:
        return stack.array, {"tags": tagged}
    series = stack.by_band()
    return series.reshape(steps, -1, *series.shape[1:]), {"tags": tagged}


def _read(path: Path, *, values: bool = False) -> np.ndarray:
    """A file's array: a TIFF (every page) through :func:`cnnkit.rasters.read_stack` — as stored, or with
    ``values`` as float32 with declared nodata as NaN —, a ``.npy``, a PNG with Pillow (its header checked first)."""
    suffix = path.suffix.lower()
    if suffix in _TIFFS:
        return read_stack(path, raw=not values).array
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".png":
            from PIL import Image

            check_png(path)
            with Image.open(path) as image:
                return np.array(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise CnnkitError(f"Could not read {path}: {err}.") from err
    raise UnsupportedError(f"Unsupported file {path} (expected .tif, .tiff, .png or .npy).")


def _valid(series: Tensor, nodata: float | None) -> Tensor:
    """``(T, H, W)``: where every band of a date is finite and none equals ``nodata``, computed date by date
    (``torch.isfinite`` of the whole series made temporaries of its size: a 320 MiB series peaked 567 MiB above
    itself)."""
    valid = torch.empty((series.shape[0], *series.shape[2:]), dtype=torch.bool)
    for t in range(series.shape[0]):
        torch.all(torch.isfinite(series[t]), dim=0, out=valid[t])
        if nodata is not None:
            valid[t] &= ~(series[t] == nodata).any(dim=0)
    return valid


def _frame(array: np.ndarray, size: tuple[int, int], path: Path) -> np.ndarray:
    """One date as (C, H, W)."""
    if array.ndim == 2 and array.shape == size:
        return array[None]
    if array.ndim == 3 and array.shape[:2] == size:
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[1:] == size:
        return array
    raise ShapeError(f"{path}: a date must be (H, W), (H, W, C) or (C, H, W) with the label's size {size}. "
                     f"Received shape {array.shape}.")


def read_series(path: str | Path, *, band_count: int | None = None, nodata: float | None = None,
                mask: str | Path | None = None, with_dates: bool = False):
    """One series without its label, as ``cnnkit predict`` reads it: ``(series (T, C, H, W) float32, valid (T, H, W))``
    — and its :class:`~cnnkit.data.dates.SeriesDates` third with ``with_dates=True``.

    Args:
        path: A T × C × H × W or T × H × W × C TIFF stack (or ``.npy``), or a folder of per-date images in name
            order.
        band_count: Bands per date (the run's); it tells the two stack layouts apart. Without it a stack is read
            as T × C × H × W.
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        mask: A T × H × W validity file (non-zero = valid), as in a data folder's ``masks/``.
        with_dates: Also return the series' dates (:func:`cnnkit.data.dates.series_dates`).

    Raises:
        ShapeError: the stack does not hold ``band_count`` bands per date in either layout, a folder's dates
            have bands but no ``band_count`` says which axis holds them, the mask does not fit, or the dates
            cannot be parsed, repeat or go backwards.
    """
    path = Path(path)
    files: list[Path] = []
    carried: dict[str, tuple[date, ...] | None] = {}
    if path.is_dir():
        dates = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGES and not p.name.startswith("."))
        if not dates:
            raise CnnkitError(f"The series folder {path} holds no image.")
        first = _read(dates[0], values=True)
        if first.ndim == 3 and band_count is None:
            raise ShapeError(f"{dates[0]}: a date of shape {first.shape} may be H × W × C or C × H × W; give "
                             "band_count (the bands per date) to tell them apart.")
        size = first.shape[:2] if first.ndim == 2 or first.shape[-1] == band_count else first.shape[1:]
        stack = np.stack([_frame(first if p == dates[0] else _read(p, values=True), tuple(size), p) for p in dates])
        files = dates
    else:
        stack, carried = _read_stack(path, band_count)
    if not path.is_dir() and not carried.get("descriptions"):
        if stack.ndim == 3:
            stack = stack[:, None]
        if stack.ndim != 4:
            raise ShapeError(f"{path}: a series stack must be T × C × H × W or T × H × W × C. Received shape "
                             f"{stack.shape}.")
        if band_count is not None and stack.shape[1] != band_count:
            if stack.shape[-1] != band_count:
                raise ShapeError(f"{path}: the run was trained on {band_count} bands per date; the stack {stack.shape} "
                                 "has that many neither on axis 1 (T × C × H × W) nor last (T × H × W × C).")
            stack = np.moveaxis(stack, -1, 1)
    if band_count is not None and stack.shape[1] != band_count:
        raise ShapeError(f"{path}: the run was trained on {band_count} bands per date. Received {stack.shape[1]}.")
    if stack.shape[0] == 0:
        raise ShapeError(f"{path}: a series needs at least one date. Received shape {stack.shape}.")
    series = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    valid = _valid(series, nodata)
    if mask is not None:
        valid &= _mask(Path(mask), tuple(valid.shape), path)
    if not with_dates:
        return series, valid
    return series, valid, series_dates(path, series.shape[0], files=files, **carried)


class SeriesWindows:
    """One series on disk read window by window, equal to the same window of :func:`read_series`'s whole read.

    Made by :func:`open_series`. Each window of each TIFF page is decoded from the blocks it touches
    (:class:`cnnkit.rasters.reading.PageStack`), so a tile and its halo of every date cost memory, never the whole
    series;
    validity is computed per window exactly as the whole read computes it per pixel (NaN or ±inf in a band, a band
    equal to ``nodata``, the mask 0) — nothing in it needs a whole page. The mask file, when given, is read whole
    (``T × H × W``, one byte a pixel-date: a quarter of one float32 band of the series).

    Attributes:
        path: The series (stack file or per-date folder).
        steps, bands, height, width: ``T``, ``C``, ``H``, ``W``.
        dates: Its :class:`~cnnkit.data.dates.SeriesDates`, found as :func:`read_series` finds them.
    """

    def __init__(self, path: Path, stacks: list[PageStack], steps: int, bands: int, dates: SeriesDates,
                 nodata: float | None, mask: Tensor | None) -> None:
        self.path, self._stacks, self.steps, self.bands, self.dates = path, stacks, steps, bands, dates
        self.height, self.width = stacks[0].height, stacks[0].width
        self._nodata, self._mask = nodata, mask

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.steps, self.bands, self.height, self.width

    def read(self, rows: slice = slice(None), cols: slice = slice(None)) -> tuple[Tensor, Tensor]:
        """The window ``[rows, cols]`` (cut at the edges): ``(series (T, C, h, w) float32, valid (T, h, w) bool)``."""
        parts = []
        for stack in self._stacks:
            storage = stack.read(rows, cols)
            if stack.interleaved:  # (P, h, w, B): the bands of each page, in order
                storage = storage.transpose(0, 3, 1, 2)
            parts.append(storage.reshape(-1, *storage.shape[-2:]))
        flat = parts[0] if len(parts) == 1 else np.concatenate(parts)
        series = torch.from_numpy(np.ascontiguousarray(flat.reshape(self.steps, self.bands, *flat.shape[-2:])))
        del parts, flat
        valid = _valid(series, self._nodata)
        if self._mask is not None:
            valid &= self._mask[:, rows, cols]
        return series, valid

    def close(self) -> None:
        for stack in self._stacks:
            stack.close()

    def __enter__(self) -> SeriesWindows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_series(path: str | Path, *, band_count: int | None = None, nodata: float | None = None,
                mask: str | Path | None = None) -> SeriesWindows | None:
    """A series for reading window by window (:class:`SeriesWindows`), or ``None`` where it is read whole only.

    Windows are read from a TIFF stack whose pages' rows and columns are the series' (every layout
    :func:`read_series` reads, unless the writer recorded a shape that runs along the pages otherwise), and from a
    folder of per-date TIFFs of ``band_count`` bands each, all of one size. ``.npy`` stacks, PNG dates and layouts
    :func:`read_series` would refuse give ``None``: read those whole (where it raises the error that names the
    problem). The dates and the mask are checked as :func:`read_series` checks them.

    Args:
        path, band_count, nodata, mask: As :func:`read_series` takes them.

    Examples:
        >>> import tempfile, tifffile
        >>> path = Path(tempfile.mkdtemp()) / "s.tif"
        >>> tifffile.imwrite(path, np.random.rand(3, 2, 9, 11).astype("float32"), photometric="minisblack")
        >>> with open_series(path, band_count=2) as series:
        ...     x, valid = series.read(slice(2, 5), slice(8, None))
        >>> series.shape, tuple(x.shape), bool(torch.equal(x, read_series(path, band_count=2)[0][..., 2:5, 8:]))
        ((3, 2, 9, 11), (3, 2, 3, 3), True)
    """
    path = Path(path)
    stacks: list[PageStack] = []
    with contextlib.ExitStack() as opened:  # the pages closed again unless the series is returned
        opened.callback(lambda: [stack.close() for stack in stacks])
        layout = _window_layout(path, band_count, stacks)
        if layout is None:
            return None
        steps, bands, files, carried = layout
        dates = series_dates(path, steps, files=files, **carried)
        given = None
        if mask is not None:
            given = _mask(Path(mask), (steps, stacks[0].height, stacks[0].width), path)
        windows = SeriesWindows(path, stacks, steps, bands, dates, nodata, given)
        opened.pop_all()
        return windows


def _window_layout(path: Path, band_count: int | None, stacks: list[PageStack]):
    """``(T, C, files, carried dates)`` of a series :func:`read_series` would read with its pages' rows and columns
    as the series', the pages opened into ``stacks``; ``None`` for any other."""
    if path.is_dir():
        dates = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGES and not p.name.startswith("."))
        if not dates or band_count is None or any(p.suffix.lower() not in _TIFFS for p in dates):
            return None
        for file in dates:
            stack = PageStack(file)
            stacks.append(stack)
            if (stack.height, stack.width) != (stacks[0].height, stacks[0].width) or band_count in (
                    stack.height, stack.width) or stack.pages * stack.bands != band_count or not _frame_layout(stack):
                return None
        return len(dates), band_count, dates, {}
    if path.suffix.lower() not in _TIFFS:
        return None
    stack = PageStack(path)
    stacks.append(stack)
    total = stack.pages * stack.bands
    described = dates_from_descriptions(stack.descriptions, band_count, str(path))
    if described is not None:  # by band, a date per group of bands
        if total % len(described) or (band_count is not None and total // len(described) != band_count):
            return None
        return len(described), total // len(described), [], {"descriptions": described}
    tagged = dates_from_tags(stack.tags, str(path))
    carried = {"tags": tagged}
    steps = total // band_count if band_count and total % band_count == 0 else (
        len(tagged) if tagged and total % len(tagged) == 0 else None)
    if stack.recorded is None and steps is not None:  # by band, as many dates as the bands say
        return (steps, total // steps, [], carried) if band_count in (None, total // steps) else None
    if not stack.spatial() or band_count in (stack.height, stack.width):
        return None
    shape = stack.recorded or stack.geometry_shape
    if stack.interleaved and stack.recorded is not None:  # (T, H, W, C), read as T × C × H × W
        return (shape[0], shape[-1], [], carried) if len(shape) == 4 and band_count == shape[-1] else None
    lead = shape[:-2]
    if len(lead) == 1 and band_count in (None, 1):
        return lead[0], 1, [], carried
    if len(lead) == 2 and band_count in (None, lead[1]):
        return lead[0], lead[1], [], carried
    return None


def _frame_layout(stack: PageStack) -> bool:
    """Whether a per-date file reads (:func:`_frame`) as its pages' bands in order over its pages' rows and columns."""
    if not stack.spatial():
        return False
    shape = stack.recorded or stack.geometry_shape
    if stack.interleaved and stack.recorded is not None:
        return len(shape) == 3  # (H, W, C)
    return len(shape) in (2, 3)  # (H, W) or (C, H, W)


def _mask(path: Path, shape: tuple[int, ...], series: Path) -> Tensor:
    """A T × H × W validity file as bool; an error naming it when its dates or size differ from the series'."""
    given = _read(path)
    if given.ndim == 3 and given.shape[0] != shape[0]:
        raise ShapeError(f"{path}: the mask has {given.shape[0]} dates, the series {series} has {shape[0]}. "
                         f"Expected T × H × W = {shape}.")
    if given.shape != shape:
        raise ShapeError(f"{path}: the mask must be T × H × W = {shape}. Received shape {given.shape}.")
    return torch.from_numpy(given != 0)


class SeriesFolder(Dataset):
    """Time series of images and their label maps, read from ``root/series`` and ``root/labels`` by name.

    Args:
        root: The data folder (see the module documentation for the layout).
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        ignore_index: The value of a label image meaning "no label" (e.g. 255), returned as −100.
        reference: The day 0 of the items' ``days`` (default: January 1 of each series' first year; see
            :meth:`cnnkit.data.dates.SeriesDates.days`).

    Items are :class:`SeriesItem`; :meth:`dates` gives a series' dates and their source, :attr:`time_axis` what
    the time axis is for the whole folder.

    Examples:
        >>> import tempfile, tifffile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "series").mkdir(); (root / "labels").mkdir()
        >>> stack = np.ones((5, 2, 4, 6), np.float32); stack[1, :, 0, 0] = np.nan
        >>> tifffile.imwrite(root / "series" / "a.tif", stack)
        >>> onehot = np.zeros((4, 6, 3), np.uint8); onehot[..., 1] = 1; onehot[0, :] = 0
        >>> np.save(root / "labels" / "a.npy", onehot)
        >>> series, valid, label = SeriesFolder(root)[0]
        >>> series.shape, int((~valid).sum()), label[0].tolist(), label[1, 0].item()
        (torch.Size([5, 2, 4, 6]), 1, [-100, -100, -100, -100, -100, -100], 1)
    """

    def __init__(self, root: str | Path, *, nodata: float | None = None, ignore_index: int | None = None,
                 reference: date | None = None) -> None:
        self.root = Path(root)
        self.reference = reference
        self._dates: dict[int, SeriesDates] = {}
        for name in ("series", "labels"):
            if not (self.root / name).is_dir():
                raise CnnkitError(f"{name} folder does not exist. Received: {str(self.root / name)!r}")
        if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))):
            raise ShapeError(f"nodata must be a number or None. Received nodata={nodata!r}.")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ShapeError(f"ignore_index must be an integer or None. Received ignore_index={ignore_index!r}.")
        self.nodata, self.ignore_index = nodata, ignore_index
        labels = {p.stem: p for p in sorted((self.root / "labels").iterdir()) if not p.name.startswith(".")}
        self.samples: list[tuple[Path, Path, Path | None]] = []
        for entry in sorted((self.root / "series").iterdir()):
            if entry.name.startswith(".") or entry.name == "dates.json":
                continue
            stem = entry.name if entry.is_dir() else entry.stem
            if stem not in labels:
                raise CnnkitError(f"No label for the series {entry}: expected labels/{stem}.(png|tif|npy).")
            mask = next((p for p in (self.root / "masks").glob(f"{stem}.*")), None) \
                if (self.root / "masks").is_dir() else None
            self.samples.append((entry, labels[stem], mask))
        if not self.samples:
            raise CnnkitError(f"No series found in {str(self.root / 'series')!r}.")
        self.weights: list[Path] | None = None
        if (self.root / "weights").is_dir():
            found = {p.stem: p for p in (self.root / "weights").glob("*.npy")}
            missing = [e.name for e, _, _ in self.samples if (e.name if e.is_dir() else e.stem) not in found]
            if missing:
                raise CnnkitError(f"{str(self.root / 'weights')!r} exists, so every series needs a weight map: none "
                                  f"for {', '.join(missing[:5])}" + (" …" if len(missing) > 5 else "") + ".")
            self.weights = [found[e.name if e.is_dir() else e.stem] for e, _, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def dates(self, index: int) -> SeriesDates:
        """The dates of series ``index`` and where they came from (reads the series once)."""
        if index not in self._dates:
            self[index]
        return self._dates[index]

    @property
    def time_axis(self) -> str:
        """What the time axis is, in words, for the whole folder (reads every series once): e.g.
        ``"acquisition dates (from file names)"``, or ``"the order of the files (no acquisition dates found)"``."""
        axes = sorted({self.dates(i).time_axis for i in range(len(self))})
        if len(axes) == 1:
            return axes[0]
        counts = {axis: sum(self.dates(i).time_axis == axis for i in range(len(self))) for axis in axes}
        return "; ".join(f"{axis} for {count} series" for axis, count in counts.items())

    def _label(self, path: Path) -> np.ndarray:
        array = _read(path)
        if path.suffix.lower() == ".npy":
            if array.ndim != 3:
                raise ShapeError(f"{path}: a one-hot label must be (H, W, K) or (K, H, W). Received shape "
                                 f"{array.shape}.")
            # one-hot: K is the smaller of the first and last axes
            onehot = array if array.shape[-1] <= array.shape[0] else np.moveaxis(array, 0, -1)
            labelled = onehot.sum(-1) > 0
            if np.any(onehot.sum(-1) > 1):
                raise ShapeError(f"{path}: a one-hot label must have at most one 1 per pixel.")
            label = np.where(labelled, onehot.argmax(-1), IGNORE_INDEX).astype(np.int64)
        else:
            if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
                raise UnsupportedError(f"{path}: a label image must hold one integer per pixel (H, W). Received "
                                       f"shape {array.shape}, dtype {array.dtype}.")
            label = array.astype(np.int64)
            if self.ignore_index is not None:
                label[array == self.ignore_index] = IGNORE_INDEX
        return label

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        entry, label_path, mask_path = self.samples[index]
        label = self._label(label_path)
        size = label.shape
        files: list[Path] = []
        carried: dict[str, tuple[date, ...] | None] = {}
        if not entry.is_dir():
            stack, carried = _read_stack(entry, None)
        if carried.get("descriptions"):
            if stack.shape[2:] != size:
                raise ShapeError(f"{entry}: the stack {stack.shape} does not hold frames of the label's size {size}.")
        elif entry.is_dir():
            dates = sorted(p for p in entry.iterdir() if p.suffix.lower() in _IMAGES and not p.name.startswith("."))
            if not dates:
                raise CnnkitError(f"The series folder {entry} holds no image.")
            frames = [_frame(_read(p, values=True), size, p) for p in dates]
            if len({f.shape[0] for f in frames}) != 1:
                raise ShapeError(f"The dates of {entry} differ in their number of bands: "
                                 f"{[f.shape[0] for f in frames]}.")
            stack = np.stack(frames)
            files = dates
        else:
            if stack.ndim == 3:  # (T, H, W): one band
                stack = stack[:, None]
            if stack.ndim != 4:
                raise ShapeError(f"{entry}: a series stack must be T × C × H × W or T × H × W × C. Received shape "
                                 f"{stack.shape}.")
            if stack.shape[2:] == size:
                pass
            elif stack.shape[1:3] == size:
                stack = np.moveaxis(stack, -1, 1)
            else:
                raise ShapeError(f"{entry}: the stack {stack.shape} does not hold frames of the label's size {size}.")
        if stack.shape[1] == 0 or stack.shape[0] == 0:
            raise ShapeError(f"{entry}: a series needs at least one date and one band. Received shape {stack.shape}.")
        series = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
        valid = _valid(series, self.nodata)
        if mask_path is not None:
            valid &= _mask(mask_path, (series.shape[0], *size), entry)
        if index not in self._dates:
            self._dates[index] = series_dates(entry, series.shape[0], files=files, **carried)
        days = self._dates[index].days(self.reference)
        if self.weights is None:
            return SeriesItem((series, valid, torch.from_numpy(label)), days=days)
        weight = _read(self.weights[index])
        if weight.shape != size or not np.all(np.isfinite(weight)) or np.any(weight < 0):
            raise ShapeError(f"{self.weights[index]}: a weight map must be H × W = {size} of finite values ≥ 0. "
                             f"Received shape {weight.shape}.")
        return SeriesItem((series, valid, torch.from_numpy(label), torch.from_numpy(weight.astype(np.float32))),
                          days=days)


def collate_series(samples: Sequence[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Pad ``(series, valid, label)`` items into ``(x (N, T, C, H, W), valid (N, T, H, W), labels (N, H, W))``.

    Dates are padded at the end and pixels at the bottom and right, with ``valid = False``, zero input and
    label −100; invalid inputs (NaN under clouds) are set to 0 (they are never read: see
    :class:`~cnnkit.models.SeriesSegNet`). Items may carry a fourth element, a per-pixel loss weight
    ``(H, W)``: it is padded with 0 and returned fourth. The result is a :class:`SeriesBatch`: its ``days``
    ``(N, T)`` are the items' ``days`` (:class:`SeriesItem`; ``0 … T−1`` for an item without), 0 where padded.

    Examples:
        >>> a = (torch.ones(3, 2, 4, 5), torch.ones(3, 4, 5, dtype=torch.bool), torch.zeros(4, 5, dtype=torch.long))
        >>> b = (torch.ones(5, 2, 6, 3), torch.ones(5, 6, 3, dtype=torch.bool), torch.ones(6, 3, dtype=torch.long))
        >>> x, valid, labels = collate_series([a, b])
        >>> x.shape, valid[0].sum().item(), labels[0, 5, 0].item()
        (torch.Size([2, 5, 2, 6, 5]), 60, -100)
        >>> collate_series([SeriesItem(a, days=torch.tensor([10, 40, 90])), b]).days.tolist()
        [[10, 40, 90, 0, 0], [0, 1, 2, 3, 4]]
    """
    if not samples:
        raise ShapeError("collate_series needs at least one sample. Received an empty list.")
    channels = samples[0][0].shape[1]
    weighted = len(samples[0]) == 4
    for i, item in enumerate(samples):
        if len(item) != (4 if weighted else 3):
            raise ShapeError(f"samples[{i}] must be (series, valid, label{', weight' if weighted else ''}) like "
                             f"samples[0]. Received {len(item)} elements.")
        series, valid, label = item[:3]
        if series.dim() != 4 or series.shape[1] != channels or valid.shape != (series.shape[0], *series.shape[2:]) \
                or label.shape != series.shape[2:] or (weighted and tuple(item[3].shape) != tuple(label.shape)):
            raise ShapeError(f"samples[{i}] must be (series (T, {channels}, H, W), valid (T, H, W), label (H, W)"
                             f"{', weight (H, W)' if weighted else ''}). Received "
                             + ", ".join(str(tuple(v.shape)) for v in item) + ".")
    steps = max(item[0].shape[0] for item in samples)
    height = max(item[0].shape[2] for item in samples)
    width = max(item[0].shape[3] for item in samples)
    x = torch.zeros(len(samples), steps, channels, height, width)
    mask = torch.zeros(len(samples), steps, height, width, dtype=torch.bool)
    labels = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros(len(samples), height, width) if weighted else None
    days = torch.zeros(len(samples), steps, dtype=torch.int64)
    for n, item in enumerate(samples):
        series, valid, label = item[:3]
        t, _, h, w = series.shape
        given = getattr(item, "days", None)
        if given is not None and tuple(given.shape) != (t,):
            raise ShapeError(f"samples[{n}].days must be ({t},), one day per date. Received {tuple(given.shape)}.")
        days[n, :t] = torch.arange(t) if given is None else given
        x[n, :t, :, :h, :w] = torch.where(valid[:, None], series, torch.zeros(()))
        mask[n, :t, :h, :w] = valid
        labels[n, :h, :w] = label
        if weighted:
            weights[n, :h, :w] = torch.as_tensor(item[3], dtype=torch.float32)
    return SeriesBatch((x, mask, labels, weights) if weighted else (x, mask, labels), days)


def series_band_statistics(dataset) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of every band over the valid pixels of all dates of all items of ``dataset``
    (float64 sums; a constant band gets std 1).

    Examples:
        >>> s = torch.tensor([1.0, 3.0, float("nan")]).reshape(3, 1, 1, 1)
        >>> series_band_statistics([(s, torch.isfinite(s)[:, 0], torch.zeros(1, 1))])
        (tensor([2.]), tensor([1.]))
    """
    total = square = count = None
    for item in dataset:
        series, valid = torch.as_tensor(item[0]).double(), torch.as_tensor(item[1]).bool()
        values = torch.where(valid[:, None], series, torch.zeros((), dtype=torch.float64))
        if total is None:
            total = torch.zeros(series.shape[1], dtype=torch.float64)
            square, count = torch.zeros_like(total), 0
        total += values.sum(dim=(0, 2, 3))
        square += (values * values).sum(dim=(0, 2, 3))
        count += int(valid.sum())
    if total is None or count == 0:
        raise ShapeError("series_band_statistics needs at least one valid pixel. Received none.")
    mean = total / count
    std = (square / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.float(), std.float()


class StandardizedSeries(Dataset):
    """Items of ``dataset`` with every band standardised, ``(series − mean) / std``, and 0 where not valid.

    ``sizes`` lists ``(T, H, W)`` of every item (for :class:`~cnnkit.masking.BucketBatchSampler`: similar
    lengths and sizes meet in a batch).

    Args:
        dataset: Items ``(series (T, C, H, W), valid (T, H, W), label (H, W)[, weight (H, W)])``.
        mean, std: Per band (C,); default :func:`series_band_statistics` of ``dataset``.
    """

    def __init__(self, dataset, mean: Tensor | None = None, std: Tensor | None = None) -> None:
        self.dataset = dataset
        if mean is None or std is None:
            mean, std = series_band_statistics(dataset)
        self.mean, self.std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        self.sizes = []
        for i in range(len(dataset)):
            item = dataset[i]
            self.sizes.append((int(item[0].shape[0]), *(int(v) for v in item[0].shape[2:])))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        series, valid = torch.as_tensor(item[0], dtype=torch.float32), torch.as_tensor(item[1]).bool()
        if series.shape[1] != len(self.mean):
            raise ShapeError(f"item {index} has {series.shape[1]} bands; the statistics have {len(self.mean)}.")
        scaled = (series - self.mean[:, None, None]) / self.std[:, None, None]
        scaled = torch.where(valid[:, None], scaled, torch.zeros(()))
        return SeriesItem((scaled, valid, *item[2:]), days=getattr(item, "days", None))


class SeriesCrops(Dataset):
    """Crops in space of series items, all dates kept, centred on rare-class pixels with given probabilities.

    The crop positions are those of :class:`~cnnkit.data.RareClassCrops` (same seed, epoch and jitter
    rules) applied to each series seen as one image: its dates, validity and weights stacked as bands.
    A series smaller than the crop is padded at the bottom and right with ``valid = False`` and −100.

    Args:
        dataset: Items ``(series (T, C, H, W), valid (T, H, W), label (H, W)[, weight (H, W)])``; T may differ.
        crop_size: Side of the square crops.
        class_ratios: ``{class: probability}`` of crops centred on that class (the rest: anywhere).
        num_crops: Crops per series per epoch.
        generator: Seed source (see :class:`~cnnkit.data.RareClassCrops`).

    Examples:
        >>> label = torch.zeros(20, 20, dtype=torch.long); label[15, 3] = 1
        >>> item = (torch.randn(4, 2, 20, 20), torch.ones(4, 20, 20, dtype=torch.bool), label)
        >>> crops = SeriesCrops([item], 8, {1: 1.0}, generator=torch.Generator().manual_seed(0))
        >>> series, valid, target = crops[0]
        >>> series.shape, valid.shape, bool((target == 1).any())
        (torch.Size([4, 2, 8, 8]), torch.Size([4, 8, 8]), True)
    """

    def __init__(self, dataset, crop_size: int, class_ratios=None, num_crops: int = 1,
                 generator: torch.Generator | None = None) -> None:
        self.dataset = dataset
        first = dataset[0]
        self._bands, self._weighted = int(first[0].shape[1]), len(first) > 3
        self._steps, self._days = [], []
        for i in range(len(dataset)):
            item = dataset[i]
            self._steps.append(int(item[0].shape[0]))
            self._days.append(getattr(item, "days", None))
        self._crops = RareClassCrops(_Flattened(dataset), crop_size=crop_size, class_ratios=class_ratios or {},
                                     num_crops=num_crops, generator=generator)
        self.crop_size, self.num_crops = crop_size, num_crops
        self.sizes = [(self._steps[i // num_crops], crop_size, crop_size) for i in range(len(self._crops))]

    def set_epoch(self, epoch: int) -> None:
        """New crop positions for epoch ``epoch``."""
        self._crops.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._crops)

    def __getitem__(self, index: int):
        flat, label = self._crops[index]
        steps = self._steps[index // self.num_crops]
        bands, size = self._bands, flat.shape[1:]
        series = flat[: steps * bands].reshape(steps, bands, *size)
        valid = flat[steps * bands : steps * (bands + 1)] > 0.5
        days = self._days[index // self.num_crops]
        return SeriesItem((series, valid, label, flat[-1]) if self._weighted else (series, valid, label), days=days)


CACHE_BYTES = 256 * 2**20
""":class:`SeriesCrops` keeps the stacked series in memory up to this many bytes (the rest is read again for every
crop): reading and stacking a whole series for each crop cost about 12 % of a demo training step."""


class _Flattened(Dataset):
    """Series items as images: the T·C bands, then the T validity masks, then the weight (if any); kept in memory
    up to :data:`CACHE_BYTES`."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index in self._cache:
            return self._cache[index]
        flat = self._flatten(index)
        size = flat[0].numel() * flat[0].element_size()
        if self._cached_bytes + size <= CACHE_BYTES:
            self._cache[index] = flat
            self._cached_bytes += size
        return flat

    def _flatten(self, index: int):
        item = self.dataset[index]
        series, valid, label = item[:3]
        t, c, h, w = series.shape
        parts = [torch.where(valid[:, None], series, torch.zeros(())).reshape(t * c, h, w), valid.float()]
        if len(item) > 3:
            parts.append(torch.as_tensor(item[3], dtype=torch.float32)[None])
        return torch.cat(parts), label
