"""Reading inputs and writing predictions: whole images, and scenes read and written window by window.

* PNG and JPEG are read whole with Pillow; TIFF with ``tifffile``. An uncompressed, contiguous TIFF is
  memory-mapped, so a scene larger than memory is read one window at a time; a compressed TIFF is decoded
  whole (there is no windowed decoder without extra packages: store large scenes uncompressed or pass
  ``--max-pixels`` a budget that fits).
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

__all__ = ["GEO_TAGS", "IMAGE_EXTENSIONS", "Scene", "create_tiff", "open_scene"]

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
    _array: Any = None
    _channels_last: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.bands, self.height, self.width

    def read(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The window ``[rows, cols]`` as ``(bands, h, w)`` float32 (a copy; windows past the edge are cut)."""
        try:
            if self._channels_last:
                window = np.asarray(self._array[rows, cols, :]).transpose(2, 0, 1)
            else:
                window = np.asarray(self._array[:, rows, cols])
        except (OSError, ValueError) as err:
            raise CnnkitError(f"Could not read {self.path}: {err}. Is the file complete?") from err
        return np.array(window, dtype=np.float32, order="C", copy=True)


def _tiff(path: Path, bands: int | None) -> Scene:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = tuple(int(v) for v in tif.series[0].shape)
            tags = []
            nodata = None
            for code in GEO_TAGS:
                tag = page.tags.get(code)
                if tag is not None:
                    tags.append((code, tag.dtype, tag.count, tag.value))
                    if code == 42113:
                        try:
                            nodata = float(str(tag.value).strip("\x00 "))
                        except ValueError:
                            nodata = None
        try:
            array = tifffile.memmap(path, mode="r")
        except ValueError:  # compressed, tiled or not contiguous: decode whole
            array = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError) as err:
        raise CnnkitError(f"Could not read the TIFF {path}: {err}.") from err
    return _scene(path, array, shape, bands, tags, nodata)


def _scene(path, array, shape, bands, tags=(), nodata=None, channels_last: bool | None = None) -> Scene:
    """Wrap an array (memory-mapped or not) of ``shape`` as a :class:`Scene`, deciding its band layout."""
    if len(shape) == 2:
        array, channels_last, (count, height, width) = array[None], False, (1, *shape)
    elif len(shape) == 3:
        if channels_last is None:
            if bands is not None and bands in (shape[0], shape[-1]):
                channels_last = shape[-1] == bands
            else:
                channels_last = shape[-1] <= shape[0]
        count, height, width = (shape[2], shape[0], shape[1]) if channels_last else shape
    else:
        raise UnsupportedError(f"An image must be (H, W), (H, W, C) or (C, H, W). Received shape {shape} from {path}.")
    if tuple(array.shape[-3:]) != (tuple(shape) if len(shape) == 3 else (1, *shape)):
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


def create_tiff(path: str | Path, shape: tuple[int, ...], dtype, geo_tags=(), **kwargs) -> np.memmap:
    """A new uncompressed TIFF of ``shape`` ((H, W) or (H, W, K)) mapped into memory, written window by window.

    ``geo_tags`` (from :class:`Scene`) are copied in unchanged.
    """
    import tifffile

    extratags = [(code, dtype_, count, value, True) for code, dtype_, count, value in geo_tags]
    try:
        return tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack",
                               planarconfig="contig" if len(shape) == 3 else None, extratags=extratags, **kwargs)
    except OSError as err:
        raise CnnkitError(f"Could not write {path}: {err}.") from err
