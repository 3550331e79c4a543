"""The files a prediction becomes: label map, overlay with legend, probabilities, confidence.

Per input ``STEM``, in the output folder:

* ``STEM_labels.png`` — the label map as a palette PNG: pixel value = class index, shown in the class
  colours; pixels without data hold ``ignore_value`` (255 by default), shown in :data:`~cnnkit.render.NODATA_COLOR`
  (white) as in every other picture (black, :data:`~cnnkit.render.UNLABELLED_COLOR`, means "unlabelled");
* ``STEM_labels.tif`` (``tiff=True``) — the same values as a Cloud-Optimized GeoTIFF on the input's CRS and
  transform: the palette as its colour table, ``ignore_value`` as its nodata, the class names in its metadata
  (:func:`label_cog`);
* ``STEM_overlay.png`` — the image (a band composite) beside the opaque label map, with the legend below,
  so every colour in the picture is a colour of the legend; scenes over 1024 pixels a side are drawn
  at a reduced scale (the file name says so: ``STEM_overlay_1to4.png``);
* ``STEM_probabilities.tif`` (``probabilities=True``) — ``(H, W, K)`` softmax as a COG, one band per class
  (:func:`score_cog`): ``uint8`` quantised (``round(p · 255)``, the band scale 1/255 recorded) by default, float16
  on request;
* ``STEM_confidence.tif`` (``confidence=True``) — the probability of the winning class, stored the same way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.rasters import CogWriter, Georeference
from cnnkit.rasters.boundary import disk_full
from cnnkit.render.labels import DEFAULT_PALETTE, NODATA_COLOR, colorize, image_to_rgb, legend

__all__ = ["PROBABILITY_DTYPES", "Fanout", "PalettePngWriter", "Subsampled", "label_cog", "palette_png", "save_png",
           "score_cog", "side_by_side"]


def _palette(num_classes: int, palette) -> np.ndarray:
    if palette is not None:
        return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return np.asarray([DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)] for k in range(num_classes)], dtype=np.uint8)


def palette_png(path: str | Path, labels: np.ndarray, num_classes: int, palette=None,
                ignore_value: int = 255) -> Path:
    """Write ``labels`` (H, W) as an 8-bit palette PNG: values are class indices, colours the class colours, and
    ``ignore_value`` (no data) :data:`~cnnkit.render.NODATA_COLOR`.

    Examples:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> path = palette_png(os.path.join(tempfile.mkdtemp(), "l.png"), np.array([[0, 1, 255]]), 2,
        ...                    [(0, 0, 255), (0, 200, 0)])
        >>> colours = Image.open(path).getpalette()
        >>> colours[:6], colours[3 * 255:3 * 256]  # the classes; no data white, as in every picture
        ([0, 0, 255, 0, 200, 0], [255, 255, 255])
    """
    from PIL import Image

    colours = _png_colours(path, num_classes, palette, ignore_value)
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(colours.flatten().tolist())
    save_png(image, path)
    return Path(path)


def save_png(image, path: str | Path) -> Path:
    """Save a Pillow image as PNG under a hidden name, then rename it to ``path``: a file under ``path`` is complete,
    and a symlink there is replaced, never written through. On an error nothing is left behind."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    try:
        partial.unlink(missing_ok=True)
        image.save(partial, format="PNG", optimize=False)
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        what = "the disk is full (or a file size limit was reached)" if disk_full(err) else (err.strerror or err)
        raise CnnkitError(f"Could not write {path}: {what}. The partial file was removed.") from err
    return path


def _png_colours(path, num_classes: int, palette, ignore_value: int) -> np.ndarray:
    if num_classes > 255 or not 0 <= ignore_value <= 255:
        raise CnnkitError(f"A PNG label map holds values 0–255: {num_classes} classes and ignore value {ignore_value} "
                          f"do not fit ({path}). Ask for a TIFF label map instead (--tiff).")
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:num_classes] = _palette(num_classes, palette)[:num_classes]
    if ignore_value >= num_classes:  # no data: the one no-data colour of every picture, never a class's
        colours[ignore_value] = NODATA_COLOR
    return colours


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


class PalettePngWriter:
    """The label map as an 8-bit palette PNG (as :func:`palette_png` writes it), filled window by window and
    encoded strip by strip, so a scene's labels are never held whole: a band of rows is compressed and written as
    soon as every column of it has arrived (tiles come row by row), and dropped.

    The file is written under a hidden name and renamed into place by :meth:`close` (a file under the final name is
    complete); :meth:`abort` (or leaving a ``with`` block on an error) removes it.

    Args:
        path: The PNG.
        shape: ``(H, W)``.
        num_classes, palette, ignore_value: As for :func:`palette_png`.

    Raises:
        CnnkitError: more than 255 classes or an ignore value outside 0–255 (a PNG cannot hold them), a window that
            straddles a band of rows already begun, rows missing at :meth:`close`, or the file cannot be written.

    Examples:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> path = os.path.join(tempfile.mkdtemp(), "x_labels.png")
        >>> with PalettePngWriter(path, (4, 6), 2, [(0, 0, 255), (0, 200, 0)]) as out:
        ...     out[0:2, 3:6] = 1
        ...     out[0:2, 0:3] = 0
        ...     out[2:4, 0:6] = np.array([[0, 1, 255, 1, 0, 1]] * 2)
        >>> picture = Image.open(path)
        >>> np.array(picture)[[0, 3]].tolist(), picture.getpalette()[3:6], picture.getpalette()[765:768]
        ([[0, 0, 0, 1, 1, 1], [0, 1, 255, 1, 0, 1]], [0, 200, 0], [255, 255, 255])
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, shape: tuple[int, int], num_classes: int, palette=None,
                 ignore_value: int = 255):
        self.path = Path(path)
        self.height, self.width = (int(v) for v in shape)
        colours = _png_colours(self.path, num_classes, palette, ignore_value)
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial.png")
        self._pending: dict[tuple[int, int], list] = {}  # (r0, r1) → [rows with a filter byte each, pixels filled]
        self._next = 0  # rows written to the file so far
        self._zip = zlib.compressobj(6)
        try:
            self._partial.unlink(missing_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            self._file = os.fdopen(os.open(self._partial, flags, 0o666), "wb")  # the umask applies
            self._file.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height,
                                                                                   8, 3, 0, 0, 0))
                             + _chunk(b"PLTE", colours.tobytes()))
        except OSError as err:
            self.abort()
            raise self._error(err) from err

    def _error(self, err: OSError) -> CnnkitError:
        what = "the disk is full (or a file size limit was reached)" if disk_full(err) else (err.strerror or err)
        return CnnkitError(f"Could not write {self.path}: {what}. The partial file was removed.")

    def __setitem__(self, key, value) -> None:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        if r1 <= r0 or c1 <= c0:
            return
        band = self._pending.get((r0, r1))
        if band is None:
            if r0 < self._next or any(a < r1 and r0 < b for a, b in self._pending):
                raise CnnkitError(f"{self.path}: the window of rows {r0}:{r1} straddles rows already begun; windows "
                                  "must come in bands of whole rows.")
            band = self._pending[(r0, r1)] = [np.zeros((r1 - r0, self.width + 1), np.uint8), 0]
        band[0][:, 1 + c0:1 + c1] = np.broadcast_to(np.asarray(value), (r1 - r0, c1 - c0))
        band[1] += (r1 - r0) * (c1 - c0)
        while self._pending:
            first = min(self._pending)
            rows_done, filled = self._pending[first]
            if first[0] != self._next or filled < rows_done.shape[0] * self.width:
                break
            self._emit(self._zip.compress(rows_done.tobytes()))  # filter byte 0 (none) before each row
            del self._pending[first]
            self._next = first[1]

    def _emit(self, data: bytes) -> None:
        if data:
            try:
                self._file.write(_chunk(b"IDAT", data))
            except OSError as err:
                self.abort()
                raise self._error(err) from err

    def close(self) -> Path:
        """Finish the file and rename it into place; every row must have been written."""
        if self._file is None:
            return self.path
        if self._next != self.height:
            self.abort()
            raise CnnkitError(f"{self.path}: only rows 0:{self._next} of {self.height} were written.")
        try:
            self._emit(self._zip.flush())
            self._file.write(_chunk(b"IEND", b""))
            self._file.close()
            self._file = None
            os.replace(self._partial, self.path)
        except OSError as err:
            self.abort()
            raise self._error(err) from err
        return self.path

    def abort(self) -> None:
        """Drop what was written: no file appears under the final name."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of close() too
                self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> PalettePngWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class Subsampled:
    """Every ``step``-th pixel of every ``step``-th row of a map filled window by window (on the map's own grid:
    ``array[i, j]`` is pixel ``(i·step, j·step)``), for a preview of a scene never held whole.

    Examples:
        >>> small = Subsampled((5, 7), 2, np.uint8)
        >>> small[0:3, 0:4] = np.arange(12).reshape(3, 4)
        >>> small[3:5, 0:7] = 9
        >>> small.array.tolist()[:2], small.array.shape
        ([[0, 2, 0, 0], [8, 10, 0, 0]], (3, 4))
    """

    def __init__(self, shape: tuple[int, int], step: int, dtype):
        self.step, self.dtype = int(step), np.dtype(dtype)
        self.array = np.zeros([math.ceil(int(v) / self.step) for v in shape], self.dtype)

    def __setitem__(self, key, value) -> None:
        rows, cols = key
        step = self.step
        r, c = -(-rows.start // step) * step, -(-cols.start // step) * step
        value = np.broadcast_to(np.asarray(value), (rows.stop - rows.start, cols.stop - cols.start))
        part = value[r - rows.start::step, c - cols.start::step]
        self.array[r // step:r // step + part.shape[0], c // step:c // step + part.shape[1]] = part


class Fanout:
    """Window writes passed on to several targets (arrays or window writers; ``None`` skipped); its ``dtype`` is the
    first target's."""

    def __init__(self, *targets):
        self.targets = [t for t in targets if t is not None]
        self.dtype = self.targets[0].dtype

    def __setitem__(self, key, value) -> None:
        for target in self.targets:
            target[key] = value


PROBABILITY_DTYPES = ("uint8", "float16")
"""How probabilities and confidence are stored: quantised to 1/255, or as half floats."""


def label_cog(path: str | Path, shape: tuple[int, int], class_names: Sequence[str], palette=None,
              ignore_value: int = 255, georeference: Georeference | None = None) -> CogWriter:
    """A label-map COG to fill window by window: class indices, the palette as its colour table (the no-data label
    transparent), ``ignore_value`` as its nodata, the class names in its metadata (``class_names``, JSON).

    ``uint8`` when the classes and ``ignore_value`` fit in 0–255 (with the colour table), ``int16`` otherwise.

    Examples:
        >>> import json, tempfile, os, numpy as np, rasterio
        >>> path = os.path.join(tempfile.mkdtemp(), "x_labels.tif")
        >>> with label_cog(path, (4, 6), ["water", "field"], [(0, 0, 255), (0, 200, 0)]) as out:
        ...     out[:, :] = np.array([[0, 1, 255, 1, 0, 1]] * 4)
        >>> with rasterio.open(path) as ds:
        ...     ds.nodata, ds.colormap(1)[1], ds.colormap(1)[255], json.loads(ds.tags()["class_names"])
        (255.0, (0, 200, 0, 255), (0, 0, 0, 0), ['water', 'field'])
    """
    num_classes = len(class_names)
    small = num_classes <= 255 and 0 <= ignore_value <= 255
    colours = _palette(num_classes, palette)
    colormap = None
    if small:
        colormap = {k: tuple(int(c) for c in colours[k]) for k in range(num_classes)}
        colormap[int(ignore_value)] = (0, 0, 0, 0)
    tags = {"class_names": json.dumps(list(class_names)), "ignore_value": int(ignore_value),
            "content": "class index per pixel; ignore_value where the input has no data"}
    return CogWriter(path, shape, "uint8" if small else "int16", georeference=georeference, nodata=ignore_value,
                     colormap=colormap, tags=tags, descriptions=["class"], resampling="nearest")


def score_cog(path: str | Path, shape: tuple[int, ...], kind: str, class_names: Sequence[str], dtype: str = "uint8",
              georeference: Georeference | None = None) -> CogWriter:
    """A probability (``(H, W, K)``, one band per class) or confidence (``(H, W)``) COG to fill window by window.

    Args:
        path, shape: The file and its ``(H, W, K)`` or ``(H, W)`` shape.
        kind: ``"probabilities"`` or ``"confidence"`` (its band descriptions and metadata).
        class_names: The band names of the probabilities.
        dtype: ``"uint8"`` — quantised, a stored ``v`` meaning ``v / 255`` (the band scale records 1/255) — or
            ``"float16"``.
        georeference: The input's CRS and transform.

    No data pixels hold 0 (also a real probability): these files declare no nodata.

    Examples:
        >>> import tempfile, os, numpy as np, rasterio
        >>> path = os.path.join(tempfile.mkdtemp(), "x_confidence.tif")
        >>> with score_cog(path, (2, 3), "confidence", ["a", "b"]) as out:
        ...     out[:, :] = np.array([[0.5, 1.0, 0.0]] * 2)
        >>> with rasterio.open(path) as ds:
        ...     ds.read(1)[0].tolist(), ds.scales, ds.tags()["probability_scale"]
        ([128, 255, 0], (0.00392156862745098,), '1/255')
    """
    if dtype not in PROBABILITY_DTYPES:
        raise ShapeError(f"Unknown probability dtype {dtype!r}. Expected one of {PROBABILITY_DTYPES}.")
    if kind not in ("probabilities", "confidence"):
        raise ShapeError(f"Unknown score kind {kind!r}. Expected one of ('probabilities', 'confidence').")
    descriptions = list(class_names) if kind == "probabilities" else ["confidence"]
    tags = {"content": "softmax probability of each class" if kind == "probabilities"
            else "probability of the winning class"}
    if dtype == "uint8":
        tags.update(probability_scale="1/255", quantisation="stored value v means probability v / 255 (rounded)")
    return CogWriter(path, shape, dtype, georeference=georeference, tags=tags, descriptions=descriptions,
                     scale=1 / 255 if dtype == "uint8" else None, resampling="average")


def side_by_side(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], palette=None,
                 ignore_value: int = 255, bands: Sequence[int] | None = None, step: int = 1) -> np.ndarray:
    """The image's RGB composite and the opaque label map side by side, the legend below (``uint8`` RGB).

    Pixels labelled ``ignore_value`` (no data) are :data:`~cnnkit.render.NODATA_COLOR` in the label map, as in every
    picture of cnnkit, and the legend's "no data" row shows that colour. ``step`` > 1 draws every ``step``-th pixel
    (a preview of a large scene).
    """
    from PIL import Image

    image = np.asarray(image)[:, ::step, ::step]
    labels = np.asarray(labels)[::step, ::step]
    if bands is None and image.shape[0] == 2:
        bands = (0,)  # two bands: the first in grey
    rgb = image_to_rgb(image, bands, normalize="percentile")
    mask = colorize(labels.astype(np.int64), _palette(len(class_names), palette), ignore_index=ignore_value,
                    ignore_color=NODATA_COLOR)  # a prediction's ignore value means "no data"
    key = legend(list(class_names), _palette(len(class_names), palette), nodata_name="no data")
    gap = 8
    height, width = rgb.shape[:2]
    canvas = np.full((height + gap + key.shape[0], max(2 * width + gap, key.shape[1]), 3), 255, dtype=np.uint8)
    canvas[:height, :width] = rgb
    canvas[:height, width + gap:2 * width + gap] = mask
    canvas[height + gap:height + gap + key.shape[0], :key.shape[1]] = key
    return np.asarray(Image.fromarray(canvas))
