"""Writing Cloud-Optimized GeoTIFFs window by window.

A COG keeps its overviews and all its directories before the image data, so it cannot be written tile by tile in
its final order. :class:`CogWriter` therefore writes the windows as they come into a tiled, uncompressed GeoTIFF
beside the target (a hidden temporary name), and :meth:`CogWriter.close` has GDAL's COG driver turn it into the
final file — tiled, deflate-compressed with a predictor, internal overviews — under another temporary name that is
then renamed into place: a file under the final name is always complete.

What a GIS needs to show the file as it is travels in it: CRS and transform, the nodata value, a colour table,
band descriptions, a scale per band for quantised values (a stored ``v`` means ``v * scale``) and free-form
metadata (class names).

Examples:
    >>> import numpy as np, rasterio, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.tif")
    >>> with CogWriter(path, (30, 20), "uint8", nodata=255, colormap={0: (0, 0, 255), 1: (0, 255, 0)},
    ...                tags={"class_names": '["water", "field"]'}) as out:
    ...     out[0:30, 0:10] = 0
    ...     out[0:30, 10:20] = 1
    >>> with rasterio.open(path) as ds:
    ...     ds.read(1)[0, 8:12].tolist(), ds.nodata, ds.colormap(1)[1], ds.tags()["class_names"]
    ([0, 0, 1, 1], 255.0, (0, 255, 0, 255), '["water", "field"]')
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.rasters.boundary import raster_errors
from cnnkit.rasters.georeference import Georeference
from cnnkit.rasters.plausibility import tiff_blocks

__all__ = ["CogWriter", "write_cog"]

RESAMPLINGS = ("nearest", "average", "mode")
DTYPES = ("uint8", "uint16", "int16", "int32", "float16", "float32")


def _span(index: slice, size: int) -> tuple[int, int]:
    start, stop, step = index.indices(size)
    if step != 1:
        raise ValueError(f"windows must be contiguous (step 1). Received {index}.")
    return start, max(start, stop)


class CogWriter:
    """A Cloud-Optimized GeoTIFF of ``shape`` filled window by window: ``out[rows, cols] = values``.

    Args:
        path: The final file (written on :meth:`close`, renamed into place when complete).
        shape: ``(H, W)`` for one band or ``(H, W, K)`` for ``K`` bands; windows are given in the same layout.
        dtype: One of ``uint8``, ``uint16``, ``int16``, ``int32``, ``float16`` (stored as half floats), ``float32``.
        georeference: CRS and transform (from the input), or ``None``.
        nodata: This file's own no-data value, or ``None``.
        colormap: ``{value: (r, g, b)}`` written as the colour table (single-band ``uint8``/``uint16`` only).
        tags: Dataset metadata, ``{name: text}``.
        descriptions: One description per band (its name in a GIS).
        scale: Values are stored quantised: ``round(value / scale)`` clipped to the dtype, and ``scale`` recorded as
            each band's scale (integer dtypes only).
        resampling: How the overviews are computed: ``nearest`` (labels), ``average`` or ``mode``.
        block: Side of the file's internal tiles (at least 128, as GDAL's COG driver asks).

    Raises:
        ShapeError: an unknown dtype or resampling, a bad shape, a scale on a float dtype.
        CnnkitError: GDAL or the file system fails (naming the file).
    """

    def __init__(self, path: str | os.PathLike, shape: Sequence[int], dtype: str, *,
                 georeference: Georeference | None = None, nodata: float | None = None,
                 colormap: Mapping[int, Sequence[int]] | None = None, tags: Mapping[str, Any] | None = None,
                 descriptions: Sequence[str] | None = None, scale: float | None = None, resampling: str = "nearest",
                 block: int = 512):
        import rasterio

        self.path = Path(path)
        self.shape = tuple(int(v) for v in shape)
        self.dtype = str(np.dtype(dtype))
        if self.dtype not in DTYPES:
            raise ShapeError(f"Unknown COG dtype {self.dtype!r}. Expected one of {DTYPES}.")
        if resampling not in RESAMPLINGS:
            raise ShapeError(f"Unknown overview resampling {resampling!r}. Expected one of {RESAMPLINGS}.")
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise ShapeError(f"shape must be (H, W) or (H, W, K) of positive sizes. Received shape={self.shape}.")
        if scale is not None and not np.issubdtype(np.dtype(self.dtype), np.integer):
            raise ShapeError(f"scale quantises into an integer dtype. Received scale={scale}, dtype={self.dtype!r}.")
        self.scale, self.resampling, self.block = scale, resampling, check_int(block, "block", minimum=128)
        self.count = self.shape[2] if len(self.shape) == 3 else 1
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial.tif")
        self._remove(self._partial)  # a leftover of a killed run with this pid, or a planted link
        store = "float32" if self.dtype == "float16" else self.dtype
        profile = dict(driver="GTiff", width=self.shape[1], height=self.shape[0], count=self.count, dtype=store,
                       nodata=nodata, tiled=True, blockxsize=self.block, blockysize=self.block, BIGTIFF="IF_SAFER",
                       SPARSE_OK=False, interleave="pixel" if self.count > 1 else "band",
                       **(georeference.profile() if georeference is not None else {}))
        with raster_errors(self.path, "write"):
            self._dataset = rasterio.open(self._partial, "w", **profile)
            if colormap is not None:
                self._dataset.write_colormap(1, {int(k): (*map(int, v[:3]), int(v[3]) if len(v) > 3 else 255)
                                                 for k, v in colormap.items()})
            if tags:
                self._dataset.update_tags(**{str(k): str(v) for k, v in tags.items()})
            if descriptions is not None:
                for band, text in enumerate(descriptions, start=1):
                    self._dataset.set_band_description(band, str(text))
            if scale is not None:
                self._dataset.scales = (float(scale),) * self.count
                self._dataset.offsets = (0.0,) * self.count

    def _prepare(self, value: np.ndarray, rows: int, cols: int) -> np.ndarray:
        value = np.asarray(value)
        expected = (rows, cols, self.count) if len(self.shape) == 3 else (rows, cols)
        value = np.broadcast_to(value, expected)
        if self.scale is not None and not np.issubdtype(value.dtype, np.integer):
            info = np.iinfo(np.dtype(self.dtype))
            value = np.clip(np.rint(value.astype(np.float32) * np.float32(1 / self.scale)), info.min, info.max)
        if self.dtype == "float16":  # rounded to nearest here: GDAL's half-float packing truncates
            value = value.astype(np.float16)
        value = value.astype(self._dataset.dtypes[0], copy=False)
        return value.transpose(2, 0, 1) if value.ndim == 3 else value[None]

    def __setitem__(self, key, value) -> None:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if len(key) > 0 else slice(None)
        cols = key[1] if len(key) > 1 else slice(None)
        if len(key) > 2 and key[2] != slice(None):
            raise ShapeError(f"Windows of a COG take every band. Received the band index {key[2]!r}.")
        (r0, r1), (c0, c1) = _span(rows, self.shape[0]), _span(cols, self.shape[1])
        if r1 <= r0 or c1 <= c0:
            return
        from rasterio.windows import Window

        data = self._prepare(value, r1 - r0, c1 - c0)
        with raster_errors(self.path, "write"):
            self._dataset.write(np.ascontiguousarray(data), window=Window(c0, r0, c1 - c0, r1 - r0))

    def close(self) -> Path:
        """Turn what was written into the final COG (overviews, compression) and rename it into place."""
        import rasterio.shutil

        if self._dataset is None:
            return self.path
        finished = self.path.with_name(f".{self.path.name}.{os.getpid()}.cog.tif")
        options = dict(COMPRESS="DEFLATE", PREDICTOR="YES", BLOCKSIZE=self.block, OVERVIEWS="AUTO",
                       RESAMPLING=self.resampling.upper(), BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")
        if self.dtype == "float16":
            options["NBITS"] = 16
        try:
            with raster_errors(self.path, "write the Cloud-Optimized GeoTIFF"):
                dataset, self._dataset = self._dataset, None
                dataset.close()
                self._check_complete()
                self._remove(finished)
                rasterio.shutil.copy(self._partial, finished, driver="COG", **options)
                with rasterio.open(finished) as written:  # GDAL reports a failed last write only on stderr
                    tiff_blocks(written, finished)
                os.replace(finished, self.path)
        finally:
            self._remove(self._partial, finished)
        return self.path

    def _check_complete(self) -> None:
        """Refuse a partial file shorter than its blocks: GDAL's last writes, at close, fail silently on a full disk."""
        rows, cols = -(-self.shape[0] // self.block), -(-self.shape[1] // self.block)
        itemsize = 4 if self.dtype == "float16" else np.dtype(self.dtype).itemsize
        needed = rows * cols * self.block * self.block * self.count * itemsize
        size = self._partial.stat().st_size
        if size < needed:
            raise OSError(errno.EFBIG, f"its temporary file holds {size:,} of the {needed:,} bytes written to it")

    def abort(self) -> None:
        """Drop what was written: no file appears under the final name."""
        dataset, self._dataset = self._dataset, None
        if dataset is not None:
            with contextlib.suppress(Exception):  # a full disk fails the last flush too; the file goes anyway
                dataset.close()
        self._remove(self._partial)

    @staticmethod
    def _remove(*paths: Path) -> None:
        for path in paths:
            for leftover in (path, path.with_name(path.name + ".aux.xml")):
                leftover.unlink(missing_ok=True)

    def flush(self) -> None:
        """Nothing to do: windows go to the file as they are written; :meth:`close` finishes it."""

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"CogWriter({str(self.path)!r}, shape={self.shape}, dtype={self.dtype!r})"


def write_cog(path: str | os.PathLike, array: np.ndarray, dtype: str | None = None, **options: Any) -> Path:
    """Write a whole ``(H, W)`` or ``(H, W, K)`` array as a COG (``options`` as for :class:`CogWriter`).

    Examples:
        >>> import numpy as np, rasterio, tempfile, os
        >>> path = write_cog(os.path.join(tempfile.mkdtemp(), "p.tif"), np.full((8, 9, 2), 0.5), "uint8",
        ...                  scale=1 / 255)
        >>> with rasterio.open(path) as ds:
        ...     int(ds.read(1)[0, 0]), ds.scales
        (128, (0.00392156862745098, 0.00392156862745098))
    """
    array = np.asarray(array)
    with CogWriter(path, array.shape, dtype or str(array.dtype), **options) as out:
        out[:, :] = array
    return Path(path)
