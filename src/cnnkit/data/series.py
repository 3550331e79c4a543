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

Scenes may differ in T and in size. A pixel holds no data on a date where any of its bands is NaN or ±inf,
equals ``nodata``, or its mask (when given) is 0. Items are ``(series (T, C, H, W) float32, valid (T, H, W)
bool, label (H, W) int64)`` with −100 where there is no label; the series keeps NaN where it had NaN (the
model selects it away, see :class:`~cnnkit.models.SeriesSegNet`). :func:`collate_series` pads a list of
items at the end in time and at the bottom and right in space (``valid = False`` and label −100 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.masking.batch import IGNORE_INDEX

__all__ = ["SeriesFolder", "collate_series"]

_IMAGES = (".png", ".tif", ".tiff")


def _read(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return np.array(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise CnnkitError(f"Could not read {path}: {err}.") from err
    raise UnsupportedError(f"Unsupported file {path} (expected .tif, .tiff, .png or .npy).")


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


class SeriesFolder(Dataset):
    """Time series of images and their label maps, read from ``root/series`` and ``root/labels`` by name.

    Args:
        root: The data folder (see the module documentation for the layout).
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        ignore_index: The value of a label image meaning "no label" (e.g. 255), returned as −100.

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

    def __init__(self, root: str | Path, *, nodata: float | None = None, ignore_index: int | None = None) -> None:
        self.root = Path(root)
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
            if entry.name.startswith("."):
                continue
            stem = entry.name if entry.is_dir() else entry.stem
            if stem not in labels:
                raise CnnkitError(f"No label for the series {entry}: expected labels/{stem}.(png|tif|npy).")
            mask = next((p for p in (self.root / "masks").glob(f"{stem}.*")), None) \
                if (self.root / "masks").is_dir() else None
            self.samples.append((entry, labels[stem], mask))
        if not self.samples:
            raise CnnkitError(f"No series found in {str(self.root / 'series')!r}.")

    def __len__(self) -> int:
        return len(self.samples)

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

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        entry, label_path, mask_path = self.samples[index]
        label = self._label(label_path)
        size = label.shape
        if entry.is_dir():
            dates = sorted(p for p in entry.iterdir() if p.suffix.lower() in _IMAGES and not p.name.startswith("."))
            if not dates:
                raise CnnkitError(f"The series folder {entry} holds no image.")
            frames = [_frame(_read(p), size, p) for p in dates]
            if len({f.shape[0] for f in frames}) != 1:
                raise ShapeError(f"The dates of {entry} differ in their number of bands: "
                                 f"{[f.shape[0] for f in frames]}.")
            stack = np.stack(frames)
        else:
            stack = _read(entry)
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
        valid = torch.isfinite(series).all(dim=1)
        if self.nodata is not None:
            valid &= ~(series == self.nodata).any(dim=1)
        if mask_path is not None:
            mask = _read(mask_path)
            if mask.shape != (series.shape[0], *size):
                raise ShapeError(f"{mask_path}: the mask must be T × H × W = {(series.shape[0], *size)}. Received "
                                 f"shape {mask.shape}.")
            valid &= torch.from_numpy(mask != 0)
        return series, valid, torch.from_numpy(label)


def collate_series(samples: Sequence[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Pad ``(series, valid, label)`` items into ``(x (N, T, C, H, W), valid (N, T, H, W), labels (N, H, W))``.

    Dates are padded at the end and pixels at the bottom and right, with ``valid = False``, zero input and
    label −100; invalid inputs (NaN under clouds) are set to 0 (they are never read: see
    :class:`~cnnkit.models.SeriesSegNet`).

    Examples:
        >>> a = (torch.ones(3, 2, 4, 5), torch.ones(3, 4, 5, dtype=torch.bool), torch.zeros(4, 5, dtype=torch.long))
        >>> b = (torch.ones(5, 2, 6, 3), torch.ones(5, 6, 3, dtype=torch.bool), torch.ones(6, 3, dtype=torch.long))
        >>> x, valid, labels = collate_series([a, b])
        >>> x.shape, valid[0].sum().item(), labels[0, 5, 0].item()
        (torch.Size([2, 5, 2, 6, 5]), 60, -100)
    """
    if not samples:
        raise ShapeError("collate_series needs at least one sample. Received an empty list.")
    channels = samples[0][0].shape[1]
    for i, (series, valid, label) in enumerate(samples):
        if series.dim() != 4 or series.shape[1] != channels or valid.shape != (series.shape[0], *series.shape[2:]) \
                or label.shape != series.shape[2:]:
            raise ShapeError(f"samples[{i}] must be (series (T, {channels}, H, W), valid (T, H, W), label (H, W)). "
                             f"Received {tuple(series.shape)}, {tuple(valid.shape)}, {tuple(label.shape)}.")
    steps = max(s.shape[0] for s, _, _ in samples)
    height = max(s.shape[2] for s, _, _ in samples)
    width = max(s.shape[3] for s, _, _ in samples)
    x = torch.zeros(len(samples), steps, channels, height, width)
    mask = torch.zeros(len(samples), steps, height, width, dtype=torch.bool)
    labels = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=torch.long)
    for n, (series, valid, label) in enumerate(samples):
        t, _, h, w = series.shape
        x[n, :t, :, :h, :w] = torch.where(valid[:, None], series, torch.zeros(()))
        mask[n, :t, :h, :w] = valid
        labels[n, :h, :w] = label
    return x, mask, labels
