"""Input images for prediction: read whole, or one window at a time.

* PNG and JPEG are read whole with Pillow (:func:`cnnkit.rasters.pictures.read_picture`: the declared size checked
  against the image data and a memory budget first).
* Every other raster — GeoTIFF and Cloud-Optimized GeoTIFF with any compression and tiling, JPEG2000, VRT mosaics,
  ENVI, netCDF — is read through GDAL by :class:`cnnkit.rasters.Raster`: a window (a tile and its halo) is
  assembled from the file's own blocks, each decoded once when tiles are swept row by row, so a scene larger than
  memory never is in memory. Its CRS and transform go to the outputs, its declared nodata pixels read as NaN (no
  data), its scale and offset are applied, and its band descriptions and colour interpretation name the bands.
* A TIFF page stack (single-band pages of one size, as ``tifffile.imwrite`` stores a 3-D array without
  ``planarconfig``): channels-last (H, W, C) when its last axis has the expected number of bands, channels-first
  (C, H, W) when its first axis has; channels-last when both hold (as in :class:`~cnnkit.data.SegmentationFolder`).
* One raster of a netCDF/HDF file, named as GDAL names it (``NETCDF:"f.nc":ndvi``, ``HDF5:"f.h5"://bands``): read
  like any raster once its local file is found to list it (:func:`cnnkit.rasters.reading.resolve_raster`); its
  outputs are named ``f_ndvi`` (:attr:`Scene.stem`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.rasters import RASTER_EXTENSIONS, Georeference, Raster
from cnnkit.rasters.pictures import read_picture
from cnnkit.rasters.reading import is_subdataset_name, subdataset_stem

__all__ = ["IMAGE_EXTENSIONS", "Scene", "open_scene"]

PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_EXTENSIONS = PICTURE_EXTENSIONS + RASTER_EXTENSIONS
"""Extensions :func:`open_scene` reads (PNG/JPEG with Pillow, the rest through GDAL)."""

_COLOURS = ("red", "green", "blue")


@dataclass
class Scene:
    """An input image, read whole or one window at a time.

    Attributes:
        path: The file (or the subdataset's name, ``NETCDF:"f.nc":ndvi``).
        bands, height, width: Its size.
        georeference: Its CRS and transform (empty for PNG/JPEG and rasters without georeferencing).
        nodata: The nodata value the file declares (of its first band that declares one), if any; those pixels read
            as NaN.
        band_names: Each band's description in the file (``None`` where it has none).
        colorinterp: Each band's colour interpretation (``"red"``, ``"gray"``, ``"undefined"``, …).
    """

    path: Path
    bands: int
    height: int
    width: int
    georeference: Georeference = field(default_factory=Georeference)
    nodata: float | None = None
    band_names: tuple[str | None, ...] = ()
    colorinterp: tuple[str, ...] = ()
    _array: Any = None  # a NumPy array (PNG/JPEG), or a cnnkit.rasters.Raster
    _channels_last: bool = False
    _stem: str | None = None  # a subdataset's outputs' name (f_ndvi); None: the file's stem

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.bands, self.height, self.width

    @property
    def stem(self) -> str:
        """The outputs' name: the file's stem, or for a subdataset its file's stem and its name
        (:func:`~cnnkit.rasters.reading.subdataset_stem`: ``NETCDF:"f.nc":ndvi`` → ``f_ndvi``)."""
        return self._stem if self._stem is not None else self.path.stem

    @property
    def block_shape(self) -> tuple[int, int] | None:
        """The file's block ``(rows, cols)`` for a raster read through GDAL; ``None`` for a picture held whole."""
        return self._array.block_shape if isinstance(self._array, Raster) else None

    @property
    def rgb_bands(self) -> tuple[int, int, int] | None:
        """The red, green and blue bands (counted from 0) where the file names them by colour interpretation or
        description; ``None`` otherwise."""
        found = {}
        for index, (interp, name) in enumerate(zip(self.colorinterp, self.band_names or (None,) * self.bands)):
            for colour in _COLOURS:
                if interp == colour or (name or "").strip().lower() == colour:
                    found.setdefault(colour, index)
        return tuple(found[c] for c in _COLOURS) if len(found) == 3 else None  # type: ignore[return-value]

    def read(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """The window ``[rows, cols]`` as ``(bands, h, w)`` float32 (a copy; windows past the edge are cut)."""
        source = self._array
        if isinstance(source, Raster):
            return source.read(rows, cols)
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

    def close(self) -> None:
        """Close the file (a raster read through GDAL); reading again reopens it."""
        if isinstance(self._array, Raster):
            self._array.close()


def _scene(path, array, shape, bands, georeference: Georeference | None = None, nodata=None,
           channels_last: bool | None = None, band_names=(), colorinterp=()) -> Scene:
    """Wrap an array of ``shape`` (a NumPy array, or a :class:`~cnnkit.rasters.Raster` of ``(C, H, W)``) as a
    :class:`Scene`, deciding its band layout."""
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
    return Scene(Path(path), int(count), int(height), int(width), georeference or Georeference(), nodata,
                 tuple(band_names), tuple(colorinterp), array, channels_last)


def open_scene(path: str | Path, bands: int | None = None, *, external_sources: bool = False) -> Scene:
    """Open an image for reading: PNG/JPEG (whole, with Pillow) or any raster GDAL reads (window by window).

    The file is untrusted: its declared size is checked against its bytes and a memory budget before it is decoded
    (:mod:`cnnkit.rasters.plausibility`), and whatever its decoder raises becomes a :class:`CnnkitError` naming it.

    Args:
        path: The file, or one raster of a netCDF/HDF file named as GDAL names it (``NETCDF:"f.nc":ndvi``: its local
            file must exist, be a regular file and list it; no URL or ``/vsi…`` path).
        bands: The number of bands expected (decides the layout of a TIFF page stack; a mismatch is an error).
        external_sources: Let a VRT read files outside its own folder (refused by default).

    Raises:
        CnnkitError: a missing or unreadable file (naming it).
        ShapeError: a band count other than ``bands``.
        UnsupportedError: an unknown extension, or values that are not integer or float.

    Examples:
        >>> import numpy as np, rasterio, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "rgbn.tif")
        >>> with rasterio.open(path, "w", driver="GTiff", width=8, height=6, count=4, dtype="uint16") as dst:
        ...     dst.write(np.ones((4, 6, 8), "uint16"))
        ...     dst.descriptions = ("blue", "green", "red", "nir")
        >>> scene = open_scene(path, bands=4)
        >>> scene.shape, scene.band_names, scene.rgb_bands
        ((4, 6, 8), ('blue', 'green', 'red', 'nir'), (2, 1, 0))
    """
    text = os.fspath(path)
    subdataset = is_subdataset_name(text)  # NETCDF:"f.nc":var: its file must exist and list it (resolve_raster)
    path = Path(text)
    suffix = path.suffix.lower()
    if not subdataset and not path.is_file():
        raise CnnkitError(f"Input image does not exist: {path}")
    if subdataset or suffix in RASTER_EXTENSIONS:
        raster = Raster(text if subdataset else path, bands, external_sources=external_sources)
        declared = [v for v in raster.nodata if v is not None]
        scene = _scene(path, raster, raster.shape, bands, raster.georeference, declared[0] if declared else None,
                       channels_last=False, band_names=raster.descriptions, colorinterp=raster.colorinterp)
        scene._stem = subdataset_stem(text) if subdataset else None
        return scene
    if suffix in PICTURE_EXTENSIONS:
        array = read_picture(path)
        return _scene(path, array, array.shape, bands, channels_last=array.ndim == 3)
    raise UnsupportedError(f"Unsupported image extension {path.suffix!r}. Expected one of {IMAGE_EXTENSIONS}. "
                           f"Received: {path}")
