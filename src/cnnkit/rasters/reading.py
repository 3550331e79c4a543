"""Reading rasters through GDAL (rasterio), one window at a time, decoding each of the file's blocks once.

Every raster GDAL opens — GeoTIFF and Cloud-Optimized GeoTIFF with any compression, striped or tiled, JPEG2000,
VRT mosaics, ENVI, netCDF — is read by :class:`Raster`:

* **Windows aligned to blocks.** A window (a tile and its halo) is assembled from the file's own blocks (its tiles,
  strips or codestream tiles), each read with a block-aligned GDAL window and kept in a small least-recently-used
  cache sized from the windows asked for, so tiles swept row by row decode every block once — the halo of the next
  row of tiles comes from the cache, not from a second decode. Memory holds a band of blocks, never the scene.
* **The file's own metadata.** CRS and transform (:class:`~cnnkit.rasters.Georeference`), nodata per band (those
  pixels read as NaN), scale and offset per band (applied), band descriptions and colour interpretation (band names
  and the red/green/blue bands of a composite).
* **TIFF page stacks.** A TIFF whose pages are single-band images of one size (what ``tifffile.imwrite`` makes of a
  ``(C, H, W)`` or ``(H, W, C)`` array without ``planarconfig``) is read page by page through GDAL; which axis holds
  the bands is decided as for any 3-D array (the expected band count, else the shorter of first and last axis).
* **Stacks of pages, whole** (:func:`read_stack`): every page of a TIFF — single-band or multi-band, pixel- or
  band-interleaved, any compression — decoded once through GDAL, each page held to the checks of a single image
  (:mod:`cnnkit.rasters.plausibility`), into one array: ``(T, C, H, W)`` for pages of ``C`` bands, or the shape its
  writer recorded (``tifffile``'s ``{"shape": [...]}`` image description), so a series stack reads as the array
  that was written. This is how :mod:`cnnkit.data.series` reads its stacks, labels and masks.

Examples:
    >>> import numpy as np, rasterio, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x.tif")
    >>> with rasterio.open(path, "w", driver="GTiff", width=40, height=30, count=2, dtype="uint16", nodata=0,
    ...                    tiled=True, blockxsize=16, blockysize=16) as dst:
    ...     dst.write(np.arange(2 * 30 * 40, dtype="uint16").reshape(2, 30, 40))
    >>> raster = Raster(path)
    >>> raster.shape, raster.block_shape
    ((2, 30, 40), (16, 16))
    >>> window = raster.read(slice(5, 20), slice(30, 45))  # cut at the right edge
    >>> window.shape, window.dtype, float(window[0, 0, 0])
    ((2, 15, 10), dtype('float32'), 230.0)
    >>> bool(np.isnan(raster.read(slice(0, 1), slice(0, 1))[0, 0, 0]))  # the declared nodata, 0
    True
    >>> raster.close()
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError, UnsupportedError
from cnnkit.rasters.boundary import raster_errors
from cnnkit.rasters.georeference import Georeference
from cnnkit.rasters.plausibility import (
    CHUNKED_DRIVERS,
    MAX_PAGES,
    check_chunks,
    check_declared,
    check_raw,
    check_stack,
    tiff_blocks,
    tiff_directories,
)
from cnnkit.rasters.vrt import check_vrt_sources, vrt_source_files

__all__ = ["RASTER_EXTENSIONS", "SCIENTIFIC_EXTENSIONS", "PageStack", "Raster", "Stack", "is_subdataset_name",
           "parse_subdataset", "read_georeference", "read_stack", "resolve_raster", "subdataset_stem"]

RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2", ".j2k", ".vrt", ".img", ".nc", ".h5", ".hdf", ".hdf5", ".he5")
"""File extensions read through GDAL (PNG and JPEG are read with Pillow)."""

MIN_CACHE = 16 * 2**20
MAX_CACHE = 512 * 2**20
"""Bounds of a raster's block cache in bytes: it holds the blocks a band of windows spans, within these."""

MAX_BLOCK = 64 * 2**20
"""A block larger than this (a whole-image "block" of an untiled format) is not cached: GDAL reads each window."""


def _span(index: slice, size: int) -> tuple[int, int]:
    start, stop, step = index.indices(size)
    if step != 1:
        raise ValueError(f"windows must be contiguous (step 1). Received {index}.")
    return start, max(start, stop)


class _Source:
    """One GDAL dataset read window by window through a cache of its decoded blocks.

    Reads are serialised by a lock (a GDAL dataset is not to be used by two threads at once); the dataset is opened
    on the first read and kept open until :meth:`close`, so its blocks can be reused.
    """

    def __init__(self, name: str, path: Path):
        import rasterio

        self.name, self.path = name, path
        with raster_errors(path, "open the raster"), rasterio.open(name) as ds:
            self.count, self.height, self.width = ds.count, ds.height, ds.width
            check_declared(path, ds.count, ds.height, ds.width)
            # GDAL's sparse blocks (no data stored): (band, block row, block col), band 0 = every band of the block
            self.sparse = tiff_blocks(ds, path, first_page=name == str(path)) if ds.driver == "GTiff" else frozenset()
            self.separate = ds.driver == "GTiff" and ds.count > 1 and ds.tags(ns="IMAGE_STRUCTURE").get(
                "INTERLEAVE", "PIXEL").upper() == "BAND"
            self.dtype = np.result_type(*[np.dtype(d) for d in ds.dtypes]) if ds.count else np.dtype("uint8")
            self.block_shape = tuple(int(v) for v in ds.block_shapes[0]) if ds.count else (1, 1)
            if ds.driver in CHUNKED_DRIVERS:
                check_chunks(path, ds.driver, self.block_shape, ds.count, self.dtype.itemsize)
            if ds.driver == "ENVI" and ds.count:  # raw pixels: the data file must hold what the header declares
                offset = ds.tags(ns="ENVI").get("header_offset", "0")
                check_raw(path, int(offset) if offset.strip().isdigit() else 0, ds.count, ds.height, ds.width,
                          max(np.dtype(d).itemsize for d in ds.dtypes))
            self.georeference = Georeference.of(ds)
            self.nodata = tuple(ds.nodatavals)
            self.scales, self.offsets = tuple(ds.scales), tuple(ds.offsets)
            self.descriptions = tuple(ds.descriptions)
            self.colorinterp = tuple(c.name for c in ds.colorinterp)
            self.driver = ds.driver
            self.subdatasets = tuple(ds.subdatasets)
            self.tags = dict(ds.tags())
        self._dataset = None
        self._lock = threading.Lock()
        # (block row, block column) → (first row kept, the block's rows from there down): see _trim
        self._blocks: OrderedDict[tuple[int, int], tuple[int, np.ndarray]] = OrderedDict()
        self._cached = 0
        self.budget = MIN_CACHE
        rows, cols = self.block_shape
        self.block_bytes = rows * cols * self.count * self.dtype.itemsize
        self.decoded = 0  # blocks decoded so far (a test reads it: each block once in a row-major sweep)

    def _open(self):
        import rasterio

        if self._dataset is None:
            with raster_errors(self.path, "open the raster"):
                self._dataset = rasterio.open(self.name)
        return self._dataset

    def close(self) -> None:
        with self._lock:
            if self._dataset is not None:
                self._dataset.close()
                self._dataset = None
            self._blocks.clear()
            self._cached = 0

    def _fit_budget(self, r0: int, r1: int) -> None:
        """Grow the cache to hold the rows of blocks a window this tall spans, plus one, across the width: a window
        on block boundaries with a halo spans the row above, its own and the row below; the next row of windows
        reuses the last two, so each block is decoded once."""
        rows = self.block_shape[0]
        band_rows = (math.ceil((r1 - r0) / rows) + 1) * rows
        needed = band_rows * self.width * self.count * self.dtype.itemsize
        self.budget = max(self.budget, min(MAX_CACHE, max(MIN_CACHE, needed)))

    def _block(self, i: int, j: int, first: int) -> tuple[int, np.ndarray]:
        """Block ``(i, j)`` from row ``first`` of the block on (at least): ``(its first row held, its rows)``."""
        from rasterio.windows import Window

        key = (i, j)
        cached = self._blocks.get(key)
        if cached is not None and cached[0] <= first:
            self._blocks.move_to_end(key)
            return cached
        if cached is not None:  # trimmed above a row asked for again (windows that went back up): decoded again
            self._cached -= self._blocks.pop(key)[1].nbytes
        rows, cols = self.block_shape
        window = Window(j * cols, i * rows, min(cols, self.width - j * cols), min(rows, self.height - i * rows))
        with raster_errors(self.path, "read"):
            block = self._open().read(window=window)
        self.decoded += 1
        self._blocks[key] = (0, block)
        self._cached += block.nbytes
        while self._cached > self.budget and len(self._blocks) > 1:
            _, (_, old) = self._blocks.popitem(last=False)
            self._cached -= old.nbytes
        return 0, block

    def _trim(self, top: int) -> None:
        """Drop the cached rows above ``top``, the first row of the window just read.

        Tiles swept row by row never read above the row of tiles being read: of the band of blocks a window with its
        halo spans, the rows above it are dead. With 256-px tiles in 512-px blocks, the cache then holds about one
        and a half rows of blocks instead of two (across a 10,980-px-wide uint16 × 4 scene, 69 MB instead of 90). A
        window that does go back up is still read right: its trimmed blocks are decoded again.
        """
        rows = self.block_shape[0]
        for key, (kept, block) in list(self._blocks.items()):
            y0 = key[0] * rows
            cut = top - (y0 + kept)
            if cut <= 0:
                continue
            self._cached -= block.nbytes
            if cut >= block.shape[1]:
                del self._blocks[key]
                continue
            block = block[:, cut:].copy()  # a copy: a view would keep the whole block alive
            self._blocks[key] = (kept + cut, block)
            self._cached += block.nbytes

    def sparse_mask(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray | None:
        """``(count, h, w)`` True where the window lies in a sparse block (no data stored); ``None`` if nowhere."""
        if not self.sparse or r1 <= r0 or c1 <= c0:
            return None
        rows, cols = self.block_shape
        mask = None
        for i in range(r0 // rows, (r1 - 1) // rows + 1):
            for j in range(c0 // cols, (c1 - 1) // cols + 1):
                for band in range(self.count if self.separate else 1):
                    if (band, i, j) not in self.sparse:
                        continue
                    if mask is None:
                        mask = np.zeros((self.count, r1 - r0, c1 - c0), dtype=bool)
                    y0, x0 = i * rows, j * cols
                    ys, ye, xs, xe = max(r0, y0), min(r1, y0 + rows), max(c0, x0), min(c1, x0 + cols)
                    bands = slice(band, band + 1) if self.separate else slice(None)
                    mask[bands, ys - r0:ye - r0, xs - c0:xe - c0] = True
        return mask

    def read_window(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1`` of every band (the whole bands when the window is), ``(count, h, w)``
        in the file's dtype, by one GDAL read that decodes each block the window touches once: the dataset opened
        for it and closed after it, nothing cached."""
        from rasterio.windows import Window

        with self._lock, raster_errors(self.path, "read"):
            try:
                return self._open().read(window=Window(c0, r0, c1 - c0, r1 - r0))
            finally:
                if self._dataset is not None:
                    self._dataset.close()
                    self._dataset = None

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1`` of every band, ``(count, h, w)`` in the file's dtype."""
        from rasterio.windows import Window

        with self._lock:
            if self.block_bytes > MAX_BLOCK:
                with raster_errors(self.path, "read"):
                    return self._open().read(window=Window(c0, r0, c1 - c0, r1 - r0))
            self._fit_budget(r0, r1)
            rows, cols = self.block_shape
            out = np.empty((self.count, r1 - r0, c1 - c0), dtype=self.dtype)
            for i in range(r0 // rows, (r1 - 1) // rows + 1 if r1 > r0 else 0):
                for j in range(c0 // cols, (c1 - 1) // cols + 1 if c1 > c0 else 0):
                    y0, x0 = i * rows, j * cols
                    ys, ye, xs, xe = max(r0, y0), min(r1, y0 + rows), max(c0, x0), min(c1, x0 + cols)
                    kept, block = self._block(i, j, ys - y0)
                    out[:, ys - r0:ye - r0, xs - c0:xe - c0] = block[:, ys - y0 - kept:ye - y0 - kept, xs - x0:xe - x0]
            if r1 > r0:
                self._trim(r0)
            return out


class _Page:
    """One page of a TIFF page stack: opened for each read and closed after it (a stack may have thousands of
    pages; none keeps a file handle open)."""

    def __init__(self, name: str, path: Path):
        self.name, self.path, self.decoded, self.checked = name, path, 0, False

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        import rasterio
        from rasterio.windows import Window

        with raster_errors(self.path, "read"), rasterio.open(self.name) as ds:
            if ds.count != 1:
                raise UnsupportedError(f"{self.path}: the page {self.name} has {ds.count} bands; a page stack is read "
                                       "only when every page is a single-band image of one size.")
            if not self.checked:
                if tiff_blocks(ds, self.path, first_page=False):
                    raise UnsupportedError(f"{self.path}: the page {self.name} has blocks without data (sparse); a "
                                           "page stack is read only when every page holds all its blocks.")
                self.checked = True
            self.decoded += 1
            return ds.read(window=Window(c0, r0, c1 - c0, r1 - r0), boundless=False)

    def close(self) -> None:
        """Nothing is kept open."""


class Raster:
    """A raster file opened for windowed reading through GDAL.

    Args:
        path: The file (any format GDAL reads: GeoTIFF/COG, JPEG2000, VRT, ENVI ``.img`` + ``.hdr``, netCDF, HDF5,
            …), or one raster of a netCDF/HDF file named as GDAL names it (``NETCDF:"f.nc":var``,
            ``HDF5:"f.h5"://group/data``; see :func:`resolve_raster`: a file holding one raster is read directly, one
            holding several is refused naming them). An untrusted file: its declared sizes are checked against its
            bytes before anything is decoded (:mod:`cnnkit.rasters.plausibility`); a GeoTIFF's sparse blocks read as
            no data.
        bands: The number of bands expected, if known: decides which axis of a TIFF page stack holds the bands.
        external_sources: Let a VRT read files outside its own folder. ``False`` refuses such a VRT (and GDAL's
            virtual file systems in it), so that a VRT from elsewhere cannot read your files
            (:func:`~cnnkit.rasters.vrt.check_vrt_sources`); ``cnnkit predict`` passes ``False`` unless asked.

    Attributes:
        path: The file.
        name: What GDAL opens: the file, or its subdataset (``NETCDF:"f.nc":var``).
        count, height, width: Bands and size in pixels (``shape`` is ``(count, height, width)``).
        dtype: The bands' common NumPy dtype as stored.
        georeference: CRS and transform (:class:`~cnnkit.rasters.Georeference`).
        nodata: The declared nodata value of each band (``None`` where a band declares none).
        descriptions: Each band's description (``None`` where it has none): its name, e.g. ``"red"`` or ``"B08"``.
        colorinterp: Each band's colour interpretation as GDAL names it (``"red"``, ``"gray"``, ``"undefined"``, …).
        scales, offsets: Each band's scale and offset (a stored value ``v`` means ``v * scale + offset``).
        block_shape: The file's block ``(rows, cols)``: windows are assembled from whole blocks.
        tags: The metadata of the file (its first page), GDAL's default domain: ``{"TIFFTAG_IMAGEDESCRIPTION": …,
            "AREA_OR_POINT": …}``; a TIFF's own tags are named ``TIFFTAG_*``.
        pages: How many pages (full-resolution images: GDAL's ``GTIFF_DIR`` subdatasets) a TIFF holds; 1 for other
            rasters. A stack of multi-band pages of one size is refused here (it is not one image) and read whole by
            :func:`read_stack`.

    Raises:
        CnnkitError: the file cannot be opened (GDAL's message and the file's name), declares more than it holds or
            than cnnkit reads, or is a VRT with sources outside its folder.
        UnsupportedError: complex bands, a page stack whose pages are not single-band images of one size, or a stack
            of multi-band pages (an image time series: :func:`read_stack` reads it).
    """

    def __init__(self, path: str | Path, bands: int | None = None, *, external_sources: bool = True):
        self.name, self.path = resolve_raster(path)
        if self.path.suffix.lower() == ".vrt":
            check_vrt_sources(self.path, allow_outside=external_sources)
            _check_vrt_tiffs(self.path)
        main = _Source(self.name, self.path)
        pages = _pages(main)
        self.tags, self.pages = main.tags, max(1, len(pages))
        self._pages: list[_Source | _Page] = []
        self._channels_last = False
        if main.driver == "GTiff" and pages and main.count == 1:
            # pages of one size: checked on the last page here, and on every page's own read
            last = _Source(pages[-1][1], self.path)
            if (last.count, last.height, last.width) == (1, main.height, main.width):
                self._pages = [main] + [_Page(name, self.path) for number, name in pages if number > 1]
        elif main.driver == "GTiff" and pages:
            last = _Source(pages[-1][1], self.path)
            if (last.count, last.height, last.width) == (main.count, main.height, main.width):
                raise UnsupportedError(f"{self.path} holds {len(pages)} pages of {main.count} bands of {main.height} × "
                                       f"{main.width}: a stack (an image time series?), not one image; reading its "
                                       "first page alone would leave the others out. Read it with "
                                       "cnnkit.rasters.read_stack (or as a series: cnnkit.data.SeriesFolder, a series "
                                       "run's cnnkit predict), or write one image a file.")
        if self._pages:
            depth, height, width = len(self._pages), main.height, main.width
            if bands is not None and bands in (depth, width):
                self._channels_last = width == bands
            else:
                self._channels_last = width <= depth
            self.count, self.height, self.width = (width, depth, height) if self._channels_last else (
                depth, height, width)
        else:
            self._pages = []
            self.count, self.height, self.width = main.count, main.height, main.width
        self._main = main
        if np.issubdtype(main.dtype, np.complexfloating) or not (
                np.issubdtype(main.dtype, np.integer) or np.issubdtype(main.dtype, np.floating)):
            raise UnsupportedError(f"{self.path} holds {main.dtype} values; expected integer or float bands.")
        self.dtype = main.dtype
        self.georeference = main.georeference
        self.block_shape = main.block_shape
        if self._pages and main.sparse:
            raise UnsupportedError(f"{self.path}: its first page has blocks without data (sparse); a page stack is "
                                   "read only when every page holds all its blocks.")
        if self._pages:
            self.nodata = (main.nodata[0],) * self.count
            self.scales, self.offsets = (main.scales[0],) * self.count, (main.offsets[0],) * self.count
            self.descriptions, self.colorinterp = (None,) * self.count, ("undefined",) * self.count
        else:
            self.nodata, self.scales, self.offsets = main.nodata, main.scales, main.offsets
            self.descriptions, self.colorinterp = main.descriptions, main.colorinterp

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.count, self.height, self.width

    @property
    def page_stack(self) -> bool:
        """Whether the file is a TIFF page stack (single-band pages of one size) rather than one multi-band image."""
        return bool(self._pages)

    @property
    def channels_last(self) -> bool:
        """For a page stack: whether its pages are rows of an ``(H, W, C)`` array (page ``k`` is row ``k``, a page's
        columns the bands) rather than the bands of a ``(C, H, W)`` one. Always ``False`` for other rasters."""
        return self._channels_last

    @property
    def blocks_decoded(self) -> int:
        """How many blocks were decoded so far (each block once when windows are swept row by row)."""
        return sum(s.decoded for s in self._pages or [self._main])

    def read_raw(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The window ``[rows, cols]`` as stored, ``(count, h, w)`` in :attr:`dtype` (cut at the edges)."""
        (r0, r1), (c0, c1) = _span(rows, self.height), _span(cols, self.width)
        if not self._pages:
            return self._main.read(r0, r1, c0, c1)
        if self._channels_last:  # page k is row k; a page's rows are columns, its columns the bands
            out = np.empty((self.count, r1 - r0, c1 - c0), dtype=self.dtype)
            for k in range(r0, r1):
                out[:, k - r0, :] = self._pages[k].read(c0, c1, 0, self.count)[0].T
            return out
        return np.concatenate([page.read(r0, r1, c0, c1) for page in self._pages])

    @property
    def has_sparse_blocks(self) -> bool:
        """Whether the file has blocks without stored data (GDAL's sparse GeoTIFF blocks): they read as no data."""
        return bool(self._main.sparse)

    def sparse_mask(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray | None:
        """``(count, h, w)`` True where the window ``[rows, cols]`` lies in a block without stored data (which
        :meth:`read_raw` returns as GDAL fills it: the nodata value or 0); ``None`` where there is none."""
        if self._pages:
            return None
        (r0, r1), (c0, c1) = _span(rows, self.height), _span(cols, self.width)
        return self._main.sparse_mask(r0, r1, c0, c1)

    def read(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The window ``[rows, cols]`` as float32 ``(count, h, w)``: declared nodata as NaN, blocks without stored
        data (sparse) as NaN, scale and offset applied.

        Args:
            rows, cols: Slices of step 1; windows past the edge are cut.
        """
        return _values(self.read_raw(rows, cols), self.nodata, self.scales, self.offsets, self.sparse_mask(rows, cols))

    def close(self) -> None:
        """Close the file's datasets and drop the cached blocks (reading again reopens them)."""
        for source in self._pages or [self._main]:
            source.close()

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Raster({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, block_shape={self.block_shape})"


def _values(raw: np.ndarray, nodata, scales, offsets, sparse: np.ndarray | None, out: np.ndarray | None = None
            ) -> np.ndarray:
    """``raw`` ``(count, h, w)`` as float32 values (into ``out`` if given): each band's declared nodata and the
    blocks without stored data (``sparse``) as NaN, scale and offset applied."""
    window = raw.astype(np.float32) if out is None else out
    if out is not None:
        out[...] = raw
    for band, (value, scale, offset) in enumerate(zip(nodata, scales, offsets)):
        if value is not None:
            window[band][raw[band] == np.asarray(value).astype(raw.dtype)] = np.nan
            if np.isnan(value):
                window[band][np.isnan(raw[band])] = np.nan
        if scale != 1 or offset != 0:
            window[band] = window[band] * np.float32(scale) + np.float32(offset)
    if sparse is not None:
        window[sparse] = np.nan
    return window


def _pages(source: _Source) -> list[tuple[int, str]]:
    """A TIFF's pages as ``(number, GDAL name)`` in page order (empty for a one-page TIFF and other rasters)."""
    if source.driver != "GTiff":
        return []
    return sorted((int(s.split(":")[1]), s) for s in source.subdatasets if s.startswith("GTIFF_DIR:"))


@dataclass(frozen=True)
class Stack:
    """Every page of a raster, decoded: what :func:`read_stack` returns.

    Attributes:
        path: The file.
        array: The pixels in :attr:`shape`: the file's dtype (``raw=True``) or float32 with no data as NaN.
        shape: The array's shape: the one its writer recorded (``tifffile``'s ``{"shape": [...]}`` image
            description) when it fits the pages, else ``(pages, bands, H, W)``, dropping a pages or bands axis of 1.
        pages, bands, height, width: The file's geometry: pages of ``bands`` bands of ``height × width`` (the whole
            pages', also when :attr:`array` holds a window of them).
        descriptions: Each band's description, page after page (``pages × bands`` entries, ``None`` where none).
        tags: The first page's metadata (GDAL's default domain; a TIFF's tags as ``TIFFTAG_*``).
        georeference: The first page's CRS and transform.
        nodata: The first page's declared nodata value per band.
        interleaved: Whether the pages are pixel-interleaved with several bands (stored ``(P, H, W, B)``).
        recorded: Whether :attr:`shape` is the one the writer recorded (else the file's geometry).
    """

    path: Path
    array: np.ndarray
    shape: tuple[int, ...]
    pages: int
    bands: int
    height: int
    width: int
    descriptions: tuple[str | None, ...] = ()
    tags: dict = field(default_factory=dict)
    georeference: Georeference = field(default_factory=Georeference)
    nodata: tuple = ()
    interleaved: bool = False  # pixel-interleaved pages of several bands: stored (P, H, W, B)
    recorded: bool = False  # whether shape is the one the writer recorded
    _storage: np.ndarray | None = None  # the pages as stored: (P, B, H, W), or (P, H, W, B) when interleaved

    def by_band(self) -> np.ndarray:
        """The pixels as ``(pages × bands, H, W)``, every band of the first page first (a copy only for
        pixel-interleaved pages of several bands)."""
        storage = self._storage.transpose(0, 3, 1, 2) if self.interleaved else self._storage
        return storage.reshape(self.pages * self.bands, *storage.shape[-2:])  # a window's height and width


def _recorded_shape(tags: dict, size: int) -> tuple[int, ...] | None:
    """The shape ``tifffile`` recorded in the image description (``{"shape": [...]}``), if it holds ``size`` values;
    ``None`` for any other description (an untrusted file's description is only believed when it fits)."""
    text = tags.get("TIFFTAG_IMAGEDESCRIPTION", "")
    if not text.lstrip().startswith("{") or len(text) > 2**16:
        return None
    try:
        shape = json.loads(text).get("shape")
    except (ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(shape, list) or not shape or len(shape) > 32 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
        return None
    return tuple(shape) if math.prod(shape) == size else None


def read_stack(path: str | Path, *, raw: bool = False, external_sources: bool = False,
               window: tuple[slice, slice] | None = None) -> Stack:
    """Every page of a raster, each decoded once through GDAL, as one array.

    A TIFF's pages — single-band or multi-band, pixel- or band-interleaved (``planarconfig`` contig or separate),
    striped or tiled, any compression — must share their size, bands and dtype. Each page is held to the checks a
    single image gets (:mod:`cnnkit.rasters.plausibility`: declared sizes against the file's bytes, blocks, budgets)
    and the whole stack to :data:`~cnnkit.rasters.plausibility.STACK_BYTES` before anything is decoded; whatever
    GDAL raises becomes a :class:`~cnnkit.errors.CnnkitError` naming the file. Pages are decoded one at a time into
    the one output array (memory: the stack and one page). Other rasters (one GeoTIFF page, VRT, ENVI, …) are one
    page.

    Args:
        path: The file (untrusted).
        raw: Values as stored, in the file's dtype (labels, masks); a file with blocks without data (sparse) is
            then refused. Default: float32, each page's declared nodata and sparse blocks as NaN, scale and offset
            applied.
        external_sources: Let a VRT read files outside its own folder (refused by default).
        window: ``(rows, cols)`` slices of step 1 (cut at the edges): only that window of every page, each page
            decoding only the blocks the window touches (:class:`PageStack`); the array's height and width are the
            window's. A writer-recorded shape whose last axes are not the pages' rows and columns (a stack whose
            page axis runs along the image) cannot be cut so: refused.

    Returns:
        A :class:`Stack`: its ``array`` is shaped as ``tifffile.imread`` shapes the same file where its writer
        recorded the shape (``tifffile.imwrite`` of a ``(T, C, H, W)`` or ``(T, H, W, C)`` array), else
        ``(pages, bands, H, W)`` without axes of 1.

    Raises:
        CnnkitError: the file cannot be opened or decoded, declares more than it holds, or more than
            :data:`~cnnkit.rasters.plausibility.STACK_BYTES` (naming it).
        UnsupportedError: pages of different sizes, bands or dtypes (naming the page), complex values, sparse blocks
            with ``raw=True``.

    Examples:
        >>> import numpy as np, tifffile, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "s.tif")
        >>> series = np.arange(3 * 2 * 4 * 5, dtype="uint16").reshape(3, 2, 4, 5)  # T, C, H, W
        >>> tifffile.imwrite(path, series, photometric="minisblack", planarconfig="separate", compression="zlib")
        >>> stack = read_stack(path)
        >>> stack.pages, stack.bands, stack.shape, stack.array.dtype, bool((stack.array == series).all())
        (3, 2, (3, 2, 4, 5), dtype('float32'), True)
        >>> read_stack(path, raw=True).array.dtype
        dtype('uint16')
        >>> part = read_stack(path, window=(slice(1, 3), slice(2, None)))
        >>> part.shape, bool((part.array == series[..., 1:3, 2:]).all())
        ((3, 2, 2, 3), True)
    """
    with PageStack(path, raw=raw, external_sources=external_sources) as stack:
        if window is None:
            storage = stack.read(raw=raw)
            shape = stack.recorded or stack.geometry_shape
        else:
            shape = stack.window_shape(*window)
            storage = stack.read(*window, raw=raw)
        array = (storage.transpose(0, 3, 1, 2) if stack.interleaved and stack.recorded is None else storage)
        array = array.reshape(shape)
        return Stack(stack.path, array, tuple(array.shape), stack.pages, stack.bands, stack.height, stack.width,
                     stack.descriptions, stack.tags, stack.georeference, stack.nodata, stack.interleaved,
                     stack.recorded is not None, storage)


class PageStack:
    """Every page of a raster opened for reading, whole or one window at a time: what :func:`read_stack` reads.

    Opening checks what :func:`read_stack` checks — each page held to the checks of a single image
    (:mod:`cnnkit.rasters.plausibility`), pages alike in size, bands and dtype, the whole stack within
    :data:`~cnnkit.rasters.plausibility.STACK_BYTES` — and decodes nothing. :meth:`read` then decodes every page whole,
    or only the blocks a window touches on each page: each page is opened for the read and closed after it (GDAL's
    cache of its blocks goes with it), so memory holds the window of every page, never the pages — a tile and its
    halo cut from a series larger than memory. Blocks a halo shares with the next window are decoded again.

    Args:
        path: The file (untrusted).
        raw: Refuse pages with blocks without data (sparse): labels and masks are read as stored.
        external_sources: Let a VRT read files outside its own folder (refused by default).

    Attributes:
        path, pages, bands, height, width: The file and its geometry: pages of ``bands`` bands of ``height × width``.
        dtype: The pages' dtype as stored.
        interleaved: Whether the pages are pixel-interleaved with several bands (:meth:`read` gives ``(P, h, w, B)``).
        recorded: The shape its writer recorded (``tifffile``'s image description), if it holds the pages' values.
        geometry_shape: ``(pages, bands, height, width)`` without a pages or bands axis of 1.
        descriptions, tags, georeference, nodata: As :class:`Stack` has them.

    Examples:
        >>> import numpy as np, tifffile, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "s.tif")
        >>> tifffile.imwrite(path, np.arange(4 * 9 * 7, dtype="float32").reshape(4, 9, 7), photometric="minisblack")
        >>> with PageStack(path) as stack:
        ...     stack.pages, stack.read(slice(2, 4), slice(5, 9)).shape
        (4, (4, 1, 2, 2))
    """

    def __init__(self, path: str | Path, *, raw: bool = False, external_sources: bool = False):
        name, path = resolve_raster(path)
        if path.suffix.lower() == ".vrt":
            check_vrt_sources(path, allow_outside=external_sources)
            _check_vrt_tiffs(path)
        main = _Source(name, path)
        if main.driver == "GTiff":
            tiff_directories(path)  # a chain of pages cut short: GDAL would read the pages before the cut
        names = [name] + [page for number, page in _pages(main) if number > 1]
        if len(names) > MAX_PAGES:
            raise CnnkitError(f"{path} holds {len(names):,} pages: more than the {MAX_PAGES:,} cnnkit reads from one "
                              "file. Is the file intact?")
        dtype = main.dtype
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise UnsupportedError(f"{path} holds {dtype} values; expected integer or float bands.")
        self.path, self.dtype = path, dtype
        self.pages, self.bands, self.height, self.width = len(names), main.count, main.height, main.width
        check_stack(path, self.pages, self.bands, self.height, self.width,
                    (dtype if raw else np.dtype(np.float32)).itemsize)
        self.interleaved = self.bands > 1 and not main.separate
        self._sources = [main]
        descriptions: list[str | None] = list(main.descriptions)
        for index, page_name in enumerate(names[1:], 1):
            source = _Source(page_name, path)  # opened and checked, then closed: nothing decoded
            found = (source.count, source.height, source.width, source.dtype)
            if found != (self.bands, self.height, self.width, dtype) or source.separate != main.separate:
                raise UnsupportedError(f"{path}: page {index + 1} holds {source.count} bands of {source.height} × "
                                       f"{source.width} {source.dtype}, page 1 {self.bands} bands of {self.height} × "
                                       f"{self.width} {dtype}: a stack's pages must be alike.")
            self._sources.append(source)
            descriptions += source.descriptions
        if raw:
            for index, source in enumerate(self._sources):
                if source.sparse:
                    raise UnsupportedError(f"{path}: page {index + 1} has blocks without data (sparse); a label or "
                                           "mask must store every block.")
        self.descriptions = tuple(descriptions)
        self.tags, self.georeference, self.nodata = main.tags, main.georeference, main.nodata
        self.recorded = _recorded_shape(main.tags, self.pages * self.bands * self.height * self.width)
        self.geometry_shape = (*(n for n in (self.pages, self.bands) if n > 1), self.height, self.width)

    def spatial(self) -> bool:
        """Whether the array :func:`read_stack` gives ends with the pages' rows and columns (so a window of the pages
        is a window of it): always, unless the writer recorded a shape that runs along the pages otherwise."""
        if self.recorded is None:
            return True
        if self.interleaved:
            return self.recorded[-3:] == (self.height, self.width, self.bands)
        return self.recorded[-2:] == (self.height, self.width)

    def window_shape(self, rows: slice, cols: slice) -> tuple[int, ...]:
        """The shape :func:`read_stack` gives the window ``[rows, cols]`` (its array's, with the window's height and
        width).

        Raises:
            UnsupportedError: a recorded shape whose last axes are not the pages' rows and columns (:meth:`spatial`).
        """
        (r0, r1), (c0, c1) = _span(rows, self.height), _span(cols, self.width)
        if not self.spatial():
            raise UnsupportedError(f"{self.path}: its writer recorded the shape {self.recorded}, whose last axes are "
                                   f"not its pages' rows and columns ({self.height} × {self.width}); it is read "
                                   "whole, not by windows.")
        shape = list(self.recorded or self.geometry_shape)
        where = (-3, -2) if self.interleaved and self.recorded is not None else (-2, -1)
        shape[where[0]], shape[where[1]] = r1 - r0, c1 - c0
        return tuple(shape)

    def read(self, rows: slice = slice(None), cols: slice = slice(None), *, raw: bool = False) -> np.ndarray:
        """The window ``[rows, cols]`` of every page as stored: ``(P, B, h, w)``, or ``(P, h, w, B)`` for
        pixel-interleaved pages of several bands; the file's dtype (``raw``), else float32 with each page's declared
        nodata and sparse blocks as NaN, scale and offset applied. The whole pages when no window is given."""
        (r0, r1), (c0, c1) = _span(rows, self.height), _span(cols, self.width)
        out_dtype = self.dtype if raw else np.dtype(np.float32)
        size = (r1 - r0, c1 - c0)
        storage = np.empty((self.pages, *size, self.bands) if self.interleaved else (self.pages, self.bands, *size),
                           out_dtype)
        for index, source in enumerate(self._sources):
            page = source.read_window(r0, r1, c0, c1)
            target = storage[index].transpose(2, 0, 1) if self.interleaved else storage[index]
            if raw:
                target[...] = page
            else:
                _values(page, source.nodata, source.scales, source.offsets, source.sparse_mask(r0, r1, c0, c1),
                        out=target)
            del page
        return storage

    def close(self) -> None:
        """Nothing is kept open between reads (each page is opened for a read and closed after it)."""
        for source in self._sources:
            source.close()

    def __enter__(self) -> PageStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_vrt_tiffs(path: Path) -> None:
    """The GeoTIFFs a VRT reads, held to the checks of a GeoTIFF read directly (their declared sizes against their
    bytes); one with sparse blocks is refused, since through a VRT those would read as GDAL's fill, not as no data."""
    import rasterio

    for source in vrt_source_files(path):
        if source.suffix.lower() not in (".tif", ".tiff") or not source.is_file():
            continue
        with raster_errors(source, "open the raster"), rasterio.open(source) as ds:
            check_declared(source, ds.count, ds.height, ds.width)
            if ds.driver == "GTiff" and tiff_blocks(ds, source):
                raise UnsupportedError(f"{path} reads {source}, which has blocks without data (sparse); through a "
                                       "VRT they would read as values. Predict that file directly.")


def read_georeference(path: str | Path) -> Georeference:
    """The CRS and transform of a raster GDAL reads; an empty :class:`Georeference` for PNG/JPEG and folders.

    Examples:
        >>> read_georeference("picture.png")
        Georeference(crs=None, transform=None)
    """
    import rasterio

    if parse_subdataset(path) is None:
        path = Path(path)
        if path.suffix.lower() not in RASTER_EXTENSIONS or not path.is_file():
            return Georeference()
    name, path = resolve_raster(path)
    with raster_errors(path, "open the raster"), rasterio.open(name) as ds:
        return Georeference.of(ds)


_SUBDATASET = re.compile(r'^(?P<driver>NETCDF|HDF5|HDF4_SDS|HDF4_EOS):(?P<quote>"?)(?P<file>.+?)(?P=quote):'
                         r'(?P<part>[^"]+)$', re.IGNORECASE)
"""A subdataset as GDAL names it: ``NETCDF:"file.nc":variable``, ``HDF5:"file.h5"://group/dataset`` (quotes
optional)."""

_VIRTUAL = re.compile(r"^/vsi|://|^[A-Za-z][A-Za-z0-9+.-]+:")
"""A GDAL virtual file system, a URL or a connection string (``PG:…``): never a local file."""

SCIENTIFIC_EXTENSIONS = (".nc", ".h5", ".hdf", ".hdf5", ".he5")
"""Files that may hold several rasters (GDAL's subdatasets): netCDF, HDF5, HDF4."""


def parse_subdataset(text: str | os.PathLike) -> tuple[str, Path, str] | None:
    """``(driver, file, part)`` of a raster named as GDAL names a subdataset (``NETCDF:"f.nc":var``,
    ``HDF5:"f.h5"://group/data``, quotes optional); ``None`` for any other text (a plain path).

    Only the syntax is read: nothing is opened, and the file need not exist (:func:`resolve_raster` checks that it
    is a local file listing that subdataset). The driver is upper-cased and repeated ``/`` in the part collapsed
    (``//group/data`` and ``/group/data`` name one HDF5 dataset; a ``pathlib.Path`` of the name collapses them).

    Examples:
        >>> parse_subdataset('NETCDF:"scene.nc":ndvi')
        ('NETCDF', PosixPath('scene.nc'), 'ndvi')
        >>> parse_subdataset('hdf5:/data/s2.h5://bands/b08')
        ('HDF5', PosixPath('/data/s2.h5'), '/bands/b08')
        >>> parse_subdataset("scene.tif") is None
        True
    """
    match = _SUBDATASET.match(os.fspath(text))
    if match is None:
        return None
    return match["driver"].upper(), Path(match["file"]), re.sub("/+", "/", match["part"])


def is_subdataset_name(text: str | os.PathLike) -> bool:
    """Whether ``text`` names a subdataset as GDAL does (:func:`parse_subdataset`) and is not itself an existing file.

    Examples:
        >>> is_subdataset_name('NETCDF:"scene.nc":ndvi'), is_subdataset_name("scene.nc")
        (True, False)
    """
    return parse_subdataset(text) is not None and not Path(os.fspath(text)).is_file()


def subdataset_stem(text: str | os.PathLike) -> str:
    """The outputs' name for a subdataset: its file's stem and its part, joined by ``_``, every character other than
    letters, digits, ``.``, ``-`` and ``_`` replaced by ``_``.

    Raises:
        ValueError: ``text`` is no subdataset name.

    Examples:
        >>> subdataset_stem('NETCDF:"/data/f.nc":ndvi'), subdataset_stem('HDF5:"s2 tile.h5"://bands/b08')
        ('f_ndvi', 's2_tile_bands_b08')
    """
    parsed = parse_subdataset(text)
    if parsed is None:
        raise ValueError(f"Not a subdataset name (DRIVER:\"file\":part). Received {os.fspath(text)!r}.")
    _, file, part = parsed
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", piece).strip("_") for piece in (file.stem, part)]
    return "_".join(piece for piece in safe if piece)


def _subdataset_key(name: str) -> tuple[str, Path, str] | None:
    parsed = parse_subdataset(name)
    if parsed is None:
        return None
    return parsed[0], parsed[1].resolve(), parsed[2]


def resolve_raster(path: str | os.PathLike) -> tuple[str, Path]:
    """The GDAL name to open for ``path`` and the file it lies in: a file as it is; a netCDF/HDF file holding exactly
    one raster (subdataset), that raster; a subdataset named as GDAL names it (``NETCDF:"f.nc":var``,
    ``HDF5:"f.h5"://group/data``), that subdataset, once it is found among those its file lists (so a name can only
    read a raster of a local file, never a URL or a virtual file system).

    Raises:
        CnnkitError: a missing file; a netCDF/HDF file holding several rasters (naming them: name the one to read); a
            subdataset its file does not hold (naming those it does).

    Examples:
        >>> resolve_raster("missing.nc")
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: Input image does not exist: missing.nc
    """
    import rasterio

    text = os.fspath(path)
    asked = None if Path(text).is_file() else _subdataset_key(text)
    file = asked[1] if asked is not None else Path(text)
    if asked is not None and _VIRTUAL.search(_SUBDATASET.match(text)["file"]):
        raise CnnkitError(f"{text!r} names a subdataset of {_SUBDATASET.match(text)['file']!r}, which is not a local "
                          "file: a subdataset is read from a regular file only (no URL, /vsi… path or connection "
                          "string).")
    if not file.is_file():
        raise CnnkitError(f"Input image does not exist: {file}" + (f" (named in {text})" if asked else ""))
    if asked is None and file.suffix.lower() not in SCIENTIFIC_EXTENSIONS:
        return str(file), file
    with raster_errors(file, "open the raster"), rasterio.open(file) as ds:
        count, listed = ds.count, list(ds.subdatasets)
    shown = ", ".join(listed[:8]) + (f", … ({len(listed)} in all)" if len(listed) > 8 else "")
    if asked is not None:
        found = [name for name in listed if _subdataset_key(name) == asked]
        if not found:
            raise CnnkitError(f"{file} holds no subdataset {text!r}; it holds: {shown or 'none'}.")
        return found[0], file
    if count or not listed:
        return str(file), file
    if len(listed) == 1:
        return listed[0], file
    raise CnnkitError(f"{file} holds {len(listed)} rasters (subdatasets): {shown}. cnnkit reads one raster a file: "
                      f"name the one to read as GDAL does (e.g. {listed[0]!r}), or extract it (gdal_translate "
                      f"{listed[0]!r} {file.stem}.tif).")
