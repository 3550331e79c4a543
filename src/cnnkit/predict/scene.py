"""Reading inputs and writing predictions: whole images, and scenes read and written window by window.

* PNG and JPEG are read whole with Pillow; TIFF with ``tifffile``. An uncompressed, contiguous TIFF is read
  one window at a time with positioned reads (the rows of the window, then its columns), so a scene larger
  than memory never is in memory — and, unlike a memory map, the pages read do not stay in the process's
  resident memory. A compressed TIFF is decoded whole (there is no windowed decoder without extra packages:
  store large scenes uncompressed).
* Outputs are written the same way (:func:`create_tiff`): an uncompressed TIFF whose windows are written
  with positioned writes as tiles finish.
* Band layout of a 3-D TIFF: channels-last (H, W, C) when its last axis has the expected number of bands,
  channels-first (C, H, W) when its first axis has; channels-last when both hold (as in
  :class:`~cnnkit.data.SegmentationFolder`).
* The georeferencing tags of a GeoTIFF (model tie point, pixel scale, transformation, GeoKeys, GDAL's nodata)
  are read as they are stored and written unchanged into the output TIFFs, so the label map lies on the map
  exactly where the scene does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError

__all__ = ["GEO_TAGS", "IMAGE_EXTENSIONS", "Scene", "create_tiff", "geo_tags", "open_scene"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

GEO_TAGS = {
    33550: "ModelPixelScaleTag",
    33922: "ModelTiepointTag",
    34264: "ModelTransformationTag",
    34735: "GeoKeyDirectoryTag",
    34736: "GeoDoubleParamsTag",
    34737: "GeoAsciiParamsTag",
    42113: "GDAL_NODATA",
}
"""TIFF tag code → name of every georeferencing tag copied from an input scene to its outputs."""


@dataclass
class Scene:
    """An input image, read whole or one window at a time.

    Attributes:
        path: The file.
        bands, height, width: Its size.
        geo_tags: ``[(code, tifffile dtype, count, value), …]`` of its georeferencing tags (empty if none).
        nodata: GDAL's nodata value of a GeoTIFF, if it has one.
    """

    path: Path
    bands: int
    height: int
    width: int
    geo_tags: list[tuple[int, Any, int, Any]] = field(default_factory=list)
    nodata: float | None = None
    _array: Any = None  # a NumPy array, or a _RasterFile: windowed reads of a contiguous TIFF
    _channels_last: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.bands, self.height, self.width

    def read(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The window ``[rows, cols]`` as ``(bands, h, w)`` float32 (a copy; windows past the edge are cut)."""
        source = self._array
        try:
            if self._channels_last:
                window = np.asarray(source[rows, cols]).transpose(2, 0, 1)
            else:
                window = np.asarray(source[:, rows, cols] if source.ndim == 3 else source[rows, cols][None])
        except (OSError, ValueError) as err:
            raise CnnkitError(f"Could not read {self.path}: {err}. Is the file complete?") from err
        return np.array(window, dtype=np.float32, order="C", copy=True)


    def preview(self, step: int, rows_per_read: int = 512) -> np.ndarray:
        """Every ``step``-th pixel of every ``step``-th row, ``(bands, ⌈H/step⌉, ⌈W/step⌉)`` float32, read in blocks
        of rows (a picture of a scene larger than memory)."""
        blocks = []
        block = max(step, rows_per_read // step * step)
        for top in range(0, self.height, block):
            # a copy: a strided view would keep each whole block of rows alive
            blocks.append(self.read(slice(top, min(top + block, self.height)))[:, ::step, ::step].copy())
        return np.concatenate(blocks, axis=1)


class _RasterFile:
    """An uncompressed, contiguous raster inside a file, read and written window by window with positioned
    reads and writes (no memory map: what was read or written does not stay in the process's memory).

    ``shape`` is the array's shape as stored: (H, W), (H, W, C) or (C, H, W); indexing takes row and column
    slices (and, for (C, H, W), a leading ``:``), like a NumPy array.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, *, planar: bool = False):
        self.path, self.offset, self.shape, self.dtype, self.planar = Path(path), offset, shape, np.dtype(dtype), planar
        self.ndim = len(shape)

    def _plane(self) -> tuple[int, int, int]:
        """(height, width, values per pixel in one plane)."""
        if self.planar:
            return self.shape[1], self.shape[2], 1
        return self.shape[0], self.shape[1], self.shape[2] if self.ndim == 3 else 1

    @staticmethod
    def _span(index: slice, size: int) -> tuple[int, int]:
        start, stop, step = index.indices(size)
        if step != 1:
            raise ValueError("windows must be contiguous (step 1)")
        return start, max(start, stop)

    def _split(self, key) -> tuple[slice, slice]:
        key = key if isinstance(key, tuple) else (key,)
        if self.planar:
            key = key[1:] if len(key) == 3 else key
        rows = key[0] if len(key) > 0 else slice(None)
        cols = key[1] if len(key) > 1 else slice(None)
        return rows, cols

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = self._split(key)
        height, width, depth = self._plane()
        (r0, r1), (c0, c1) = self._span(rows, height), self._span(cols, width)
        item = self.dtype.itemsize
        planes = []
        with self.path.open("rb") as f:
            for plane in range(self.shape[0] if self.planar else 1):
                base = self.offset + plane * height * width * depth * item
                f.seek(base + r0 * width * depth * item)
                count = (r1 - r0) * width * depth
                data = np.fromfile(f, dtype=self.dtype, count=count)
                if data.size != count:
                    raise OSError(f"the file ends inside its image data (expected {count} values)")
                block = data.reshape(r1 - r0, width, depth)[:, c0:c1]
                planes.append(block if self.ndim == 3 and not self.planar else block[..., 0])
        return np.stack(planes) if self.planar else planes[0]

    def __setitem__(self, key, value) -> None:
        rows, cols = self._split(key)
        height, width, depth = self._plane()
        (r0, r1), (c0, c1) = self._span(rows, height), self._span(cols, width)
        value = np.ascontiguousarray(np.broadcast_to(np.asarray(value, dtype=self.dtype),
                                                     (r1 - r0, c1 - c0, depth) if depth > 1 else (r1 - r0, c1 - c0)))
        item = self.dtype.itemsize
        row_bytes = (c1 - c0) * depth * item
        with self.path.open("r+b") as f:
            if c0 == 0 and c1 == width:  # whole rows: one write
                f.seek(self.offset + r0 * width * depth * item)
                f.write(value.tobytes())
                return
            flat = value.reshape(r1 - r0, row_bytes // item)
            for y in range(r0, r1):
                f.seek(self.offset + (y * width + c0) * depth * item)
                f.write(flat[y - r0].tobytes())

    def flush(self) -> None:
        """Nothing to do: every write went to the file when it was made."""


def _tiff(path: Path, bands: int | None) -> Scene:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = tuple(int(v) for v in tif.series[0].shape)
            tags, nodata = _geo_tags(page)
            series = tif.series[0]
            offset, dtype = series.dataoffset, series.dtype.newbyteorder(tif.byteorder)
            planar = len(shape) == 3 and page.planarconfig == 2  # stored band by band
        if offset is not None and len(shape) in (2, 3):
            array = _RasterFile(path, offset, shape, dtype, planar=planar)
        else:  # compressed, tiled or not contiguous: decode whole
            array = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as err:
        raise CnnkitError(f"Could not read the TIFF {path}: {err}.") from err
    return _scene(path, array, shape, bands, tags, nodata)


def _geo_tags(page) -> tuple[list[tuple[int, Any, int, Any]], float | None]:
    """A TIFF page's georeferencing tags (:data:`GEO_TAGS`) as ``[(code, dtype, count, value), …]`` and GDAL's nodata
    value among them (``None`` if absent or not a number)."""
    tags, nodata = [], None
    for code in GEO_TAGS:
        tag = page.tags.get(code)
        if tag is not None:
            tags.append((code, tag.dtype, tag.count, tag.value))
            if code == 42113:
                try:
                    nodata = float(str(tag.value).strip("\x00 "))
                except ValueError:
                    nodata = None
    return tags, nodata


def geo_tags(path: str | Path) -> list[tuple[int, Any, int, Any]]:
    """The georeferencing tags of a TIFF's first page (for :func:`create_tiff`); ``[]`` for other files and TIFFs
    without them.

    Examples:
        >>> geo_tags("not-a-tiff.png")
        []
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return []
    try:
        with tifffile.TiffFile(path) as tif:
            return _geo_tags(tif.pages[0])[0]
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as err:
        raise CnnkitError(f"Could not read the TIFF {path}: {err}.") from err


def _scene(path, array, shape, bands, tags=(), nodata=None, channels_last: bool | None = None) -> Scene:
    """Wrap an array (memory-mapped or not) of ``shape`` as a :class:`Scene`, deciding its band layout."""
    if len(shape) == 2:
        channels_last, (count, height, width) = False, (1, *shape)
    elif len(shape) == 3:
        if channels_last is None:
            if bands is not None and bands in (shape[0], shape[-1]):
                channels_last = shape[-1] == bands
            else:
                channels_last = shape[-1] <= shape[0]
        count, height, width = (shape[2], shape[0], shape[1]) if channels_last else shape
    else:
        raise UnsupportedError(f"An image must be (H, W), (H, W, C) or (C, H, W). Received shape {shape} from {path}.")
    if tuple(array.shape) != tuple(shape):
        raise UnsupportedError(f"Unexpected layout of {path}: an array of {tuple(array.shape)} for an image {shape}.")
    if bands is not None and count != bands:
        raise ShapeError(f"{path} has {count} bands; the network was trained on {bands}. Received an image of "
                         f"shape {shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UnsupportedError(f"{path} holds {array.dtype} values; expected integer or float bands.")
    return Scene(Path(path), int(count), int(height), int(width), list(tags), nodata, array, channels_last)


def open_scene(path: str | Path, bands: int | None = None) -> Scene:
    """Open an image for reading: PNG/JPEG (whole) or TIFF (memory-mapped where possible).

    Args:
        path: The file.
        bands: The number of bands expected (decides the layout of a 3-D TIFF; a mismatch is an error).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CnnkitError(f"Input image does not exist: {path}")
    if suffix in (".tif", ".tiff"):
        return _tiff(path, bands)
    if suffix in (".png", ".jpg", ".jpeg"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                if img.mode not in ("L", "I", "I;16", "RGB", "RGBA", "F"):
                    img = img.convert("RGB")
                array = np.array(img)
        except (UnidentifiedImageError, OSError) as err:
            raise CnnkitError(f"Could not read the image {path}: {err}.") from err
        return _scene(path, array, array.shape, bands, channels_last=array.ndim == 3)
    raise UnsupportedError(f"Unsupported image extension {path.suffix!r}. Expected one of {IMAGE_EXTENSIONS}. "
                           f"Received: {path}")


def create_tiff(path: str | Path, shape: tuple[int, ...], dtype, geo_tags=(), nodata: float | None = None
                ) -> _RasterFile:
    """A new uncompressed TIFF of ``shape`` ((H, W) or (H, W, K)), filled window by window: ``out[rows, cols] = x``.

    ``geo_tags`` (from :class:`Scene`) are copied in, except the input's GDAL nodata value: it speaks of the input's
    bands, not of this file's values (an input nodata of 0 would hide class 0 of a label map in a GIS). ``nodata``
    declares this file's own (a label map's ``ignore_value``); without it the file declares none.
    """
    import tifffile

    extratags = [(code, dtype_, count, value, True) for code, dtype_, count, value in geo_tags if code != 42113]
    if nodata is not None:
        extratags.append((42113, "s", 0, f"{nodata:g}", True))
    try:
        mapped = tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack",
                                 planarconfig="contig" if len(shape) == 3 else None, extratags=extratags)
        offset = mapped.offset
        del mapped  # the header is written; the data is written with positioned writes
    except (OSError, ValueError) as err:
        raise CnnkitError(f"Could not write {path}: {err}.") from err
    return _RasterFile(Path(path), offset, tuple(shape), np.dtype(dtype))
