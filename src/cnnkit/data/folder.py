"""A dataset over a folder of images and label masks matched by file stem: PNG or multi-band TIFF, any size.

Layout::

    root/
      images/  scene_01.png   scene_02.tif   ...
      masks/   scene_01.png   scene_02.tif   ...

``images/scene_01.png`` is paired with the mask of the same stem (``masks/scene_01.*``). Images may differ
in size from one another (batch them with :func:`cnnkit.masking.collate_padded`), but each mask must have
its image's height and width.

TIFFs are read through GDAL (:class:`cnnkit.rasters.Raster`, the one TIFF reader of cnnkit), with their own metadata:

* a band's declared **nodata** reads as NaN (no data: left out of the statistics and the loss, counted in the
  training log) and a mask's declared nodata as an unlabelled pixel (−100), with no option given;
* band **descriptions** ("blue" … "swir") name the bands (:attr:`SegmentationFolder.band_names`); a band without a
  description is named by its colour interpretation where that names a band ("red", "green", "blue", "nir", …: an
  RGB GeoTIFF's bands are red, green, blue), not where it says only how to draw it ("gray", "palette", "undefined");
* blocks a GeoTIFF stores **without data** (GDAL's sparse blocks, byte count 0) read as no data in an image (NaN) and
  as unlabelled in a mask (−100), never as GDAL's fill value (0 would be a class);
* an image and its mask must lie on the same grid: equal CRS and transform where both are georeferenced, else
  the same size; a misaligned pair is refused naming both files.

Bands kept in separate files (as Sentinel-2 ships them) are stacked through a VRT (``.vrt`` files are read like
TIFFs; see docs/rasters.md for the recipe).

The other formats GDAL reads are read the same way, with whatever metadata they carry: ENVI (``.img`` beside its
``.hdr``), netCDF (``.nc``: CRS, transform and ``_FillValue`` as nodata), HDF5/HDF4 (``.h5``, ``.hdf5``, ``.he5``,
``.hdf``: ``_FillValue`` as nodata), JPEG 2000 (``.jp2``, ``.j2k``). A netCDF/HDF file must hold one raster (one
variable or dataset); one holding several is refused naming them (extract the one to train on: ``gdal_translate
'NETCDF:"f.nc":ndvi' f.tif``). Side-car files — an ENVI ``.hdr`` beside its image, GDAL's ``.aux.xml`` — are left
out, each named.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.rasters import RASTER_EXTENSIONS, Georeference, Raster
from cnnkit.rasters.plausibility import check_png

__all__ = ["SegmentationFolder"]

PNG_EXTENSIONS = (".png",)
TIFF_EXTENSIONS = RASTER_EXTENSIONS
"""Read through GDAL (:class:`~cnnkit.rasters.Raster`): TIFF, VRT, JPEG 2000, ENVI, netCDF, HDF."""
EXTENSIONS = PNG_EXTENSIONS + TIFF_EXTENSIONS
_SIDECARS = {".hdr": "the ENVI header of {}", ".aux.xml": "GDAL's side-car metadata of {}"}
"""Files beside an image that describe it (read by GDAL with the image), by ending: left out, named."""
_INT64_MAX = np.iinfo(np.int64).max
_PLAUSIBLE_CHUNK = 1 << 20
"""Values of a band checked at a time by :func:`_check_plausible` (8 MiB of float64)."""


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Info:
    """What a file says about itself besides its pixels."""

    nodata: tuple = ()  # the declared nodata of each band (None where a band declares none)
    georeference: Georeference = field(default_factory=Georeference)
    descriptions: tuple = ()  # each band's description (None where it has none)
    channels_first: bool = False  # a 3-D array is (C, H, W) for certain (a multi-band raster, not a page stack)
    colorinterp: tuple = ()  # each band's colour interpretation as GDAL names it ("red", "gray", "undefined", …)
    sparse: np.ndarray | None = field(default=None, compare=False)  # (C, H, W) True in blocks without data (raw reads)

    @property
    def names(self) -> tuple:
        """Each band's name: its description, else its colour interpretation where that names a band (``None``)."""
        count = max(len(self.descriptions), len(self.colorinterp))
        described = self.descriptions + (None,) * (count - len(self.descriptions))
        colours = self.colorinterp + ("undefined",) * (count - len(self.colorinterp))
        return tuple(d if d else (c if c not in _NOT_NAMES else None) for d, c in zip(described, colours))


_NOT_NAMES = frozenset({"undefined", "gray", "grey", "palette"})
"""Colour interpretations that say how to draw a band, not which band it is: they do not name it."""


def _info(raster: Raster, sparse: np.ndarray | None = None) -> _Info:
    return _Info(tuple(raster.nodata), raster.georeference, tuple(raster.descriptions), not raster.page_stack,
                 tuple(raster.colorinterp), sparse)


def _read_tiff(path: Path, raw: bool) -> tuple[np.ndarray, _Info]:
    """The pixels as stored (``raw``) or as float32 with declared nodata as NaN and scale/offset applied; a single
    band as (H, W), a multi-band raster as (C, H, W), a page stack in its stored layout ((H, W, C) or (C, H, W))."""
    with Raster(path) as raster:
        array = raster.read_raw() if raw else raster.read()  # read(): sparse blocks as NaN
        if not raw:
            _check_plausible(array, raster.dtype, path)
        # read_raw(): GDAL's fill (nodata or 0) in blocks stored without data; where they lie, for the caller
        info = _info(raster, raster.sparse_mask() if raw and raster.has_sparse_blocks else None)
        if raster.page_stack:
            array = array.transpose(1, 2, 0) if raster.channels_last else array
        elif raster.count == 1:
            array = array[0]
    return array, info


def _check_plausible(bands: np.ndarray, dtype: np.dtype, path: Path) -> None:
    """Refuse a floating-point raster whose band statistics lie beyond the float32 range they are computed in.

    A TIFF whose strips point into its own header (StripOffsets 0) decodes its tags as pixels: values like 1e29 that
    no sensor records, and a band mean of 2.6e35 that training took as data. Such a band's mean square (float64, over
    its finite values) exceeds the largest float32 — the dtype cnnkit reads, standardises and trains in — so its
    variance cannot even be represented there; real imagery lies many orders of magnitude below. (The limit is
    float32's also for float16 files: 1,000 is ordinary in a half-float band, and its square is beyond float16.)
    Integer bands cannot be judged by their values: every value is possible.
    """
    if not np.issubdtype(dtype, np.floating):
        return
    limit = float(np.finfo(np.float32).max)
    for band, values in enumerate(bands.reshape(len(bands), -1)):
        square, count, largest = 0.0, 0, 0.0
        for start in range(0, values.size, _PLAUSIBLE_CHUNK):  # float64 copies of a chunk, not of a whole band
            chunk = values[start:start + _PLAUSIBLE_CHUNK]
            finite = chunk[np.isfinite(chunk)].astype(np.float64)
            with np.errstate(over="ignore"):
                square += float(np.dot(finite, finite))
            count += finite.size
            largest = max(largest, float(np.abs(finite).max(initial=0.0)))
        if not count:
            continue
        mean_square = square / count
        if not np.isfinite(mean_square) or mean_square > limit:
            raise CnnkitError(
                f"{path} holds values impossible for its {np.dtype(dtype).name} data: band {band} has a mean square "
                f"of {mean_square:.3g} (largest magnitude {largest:.3g}), beyond the float32 "
                f"range {limit:.3g} in which it is standardised and trained. The file is damaged (e.g. its strips "
                "point into its own header) and is refused rather than trained on; replace it or remove it from the "
                "folder."
            )


def _read_png(path: Path) -> np.ndarray:
    """A PNG's pixels (palette images: the indices), after its declared size is checked against its image data
    (:func:`~cnnkit.rasters.plausibility.check_png`): Pillow alone pads a PNG holding fewer rows than it declares
    with zeros, which would train as real pixels and labels."""
    from PIL import Image

    check_png(path)
    with Image.open(path) as img:
        if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
            return np.array(img)  # palette: the indices, not the colours
        if img.mode in ("RGB", "RGBA", "LA"):
            return np.array(img)
        return np.array(img.convert("RGB"))


def _read(path: Path, raw: bool = True) -> tuple[np.ndarray, _Info]:
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise UnsupportedError(
            f"Unsupported file extension {path.suffix!r}. Expected one of {EXTENSIONS}. Received: {path}"
        )
    with _reading(path):
        return _read_tiff(path, raw) if suffix in TIFF_EXTENSIONS else (_read_png(path), _Info())


def _header(path: Path) -> _Info:
    """A file's metadata without its pixels (nothing for PNG)."""
    if path.suffix.lower() not in TIFF_EXTENSIONS:
        return _Info()
    with _reading(path), Raster(path) as raster:
        return _info(raster)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Re-raise what a reader library throws for a damaged file (PIL's ``OSError: image file is truncated``,
    GDAL's errors, zlib, struct, ...) as a :class:`CnnkitError` that names the file."""
    try:
        yield
    except CnnkitError:
        raise
    except MemoryError as error:
        raise CnnkitError(
            f"Could not read {path}: not enough memory to decode it ({type(error).__name__}: {error}). Its header "
            "may declare a size the file cannot hold; check the file, or free memory."
        ) from error
    except Exception as error:
        raise CnnkitError(
            f"Could not read {path}: {type(error).__name__}: {error}. The file is damaged, truncated or not a "
            f"{path.suffix.lstrip('.').upper()} file; replace it or remove it from the folder."
        ) from error


def _image_shape(path: Path) -> tuple[tuple[int, ...], _Info]:
    """The shape :func:`_read` gives an image's pixels, and its metadata, from its header alone (nothing decoded)."""
    with _reading(path):
        if path.suffix.lower() in TIFF_EXTENSIONS:
            with Raster(path) as raster:
                info = _info(raster)
                if raster.page_stack and raster.channels_last:
                    return (raster.height, raster.width, raster.count), info
                return (raster.shape[1:] if raster.count == 1 and not raster.page_stack else raster.shape), info
        from PIL import Image

        with Image.open(path) as img:
            width, height = img.size
            if img.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                return (height, width), _Info()
            return (height, width, len(img.getbands()) if img.mode in ("RGB", "RGBA", "LA") else 3), _Info()


def _layout(shape: tuple, channels_first: bool, hw: tuple, image_path: Path, mask_path: Path) -> str:
    """How an image of ``shape`` lies over its mask's ``hw``: ``"HW"``, ``"CHW"`` or ``"HWC"``; a ShapeError naming
    both files where it does not fit. The one rule for pixels read (``__getitem__``) and headers (``check_pairs``)."""
    if len(shape) == 2:
        layout = "HW"
    elif len(shape) == 3:
        layout = "CHW" if channels_first or tuple(shape[:2]) != tuple(hw) else "HWC"
    else:
        raise ShapeError(f"An image must be 2-D or 3-D. Received shape {tuple(shape)} from {image_path}")
    spatial = tuple(shape[1:]) if layout == "CHW" else tuple(shape[:2])
    if spatial == tuple(hw):
        return layout
    if layout == "CHW" and not channels_first:  # neither (H, W, C) nor (C, H, W) fits
        raise ShapeError(
            f"Image and mask sizes differ: image {image_path} has shape {tuple(shape)}, mask {mask_path} "
            f"has shape {tuple(hw)}; the image must be (H, W), (H, W, C) or (C, H, W) with the mask's (H, W)."
        )
    raise ShapeError(f"Image and mask sizes differ: image {image_path} has shape {spatial}, mask {mask_path} has "
                     f"shape {tuple(hw)}.")


def _check_aligned(image_path: Path, where: Georeference, mask_path: Path, mask_where: Georeference) -> None:
    """Refuse an image and mask that are both georeferenced on different grids (CRS or transform), naming both."""
    if where.is_set and mask_where.is_set and where != mask_where:
        raise ShapeError(
            f"Image and mask are not aligned: image {image_path} lies on CRS {where.crs} with transform "
            f"{tuple(where.transform or ())}, mask {mask_path} on CRS {mask_where.crs} with transform "
            f"{tuple(mask_where.transform or ())}; they must share CRS and transform (resample the mask onto "
            "the image's grid, e.g. with gdalwarp -te/-tr or rasterio.warp.reproject)."
        )


def _size(path: Path) -> tuple[int, int]:
    """(H, W) of a mask file from its header."""
    with _reading(path):
        return _header_size(path)


def _header_size(path: Path) -> tuple[int, int]:
    if path.suffix.lower() in TIFF_EXTENSIONS:
        with Raster(path) as raster:
            if raster.page_stack:
                shape = (raster.height, raster.width, raster.count) if raster.channels_last else raster.shape
            else:
                shape = raster.shape[1:] if raster.count == 1 else raster.shape
        if len(shape) == 3 and 1 in (shape[0], shape[-1]):
            shape = shape[1:] if shape[0] == 1 else shape[:-1]
        if len(shape) != 2:
            raise UnsupportedError(
                f"A mask must hold one integer label per pixel (H, W). Received shape {shape} from {path}"
            )
        return shape
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
    return height, width


class SegmentationFolder(Dataset):
    """Pairs of (image, label map) read from ``root/images`` and ``root/masks``, matched by file stem.

    Images are PNG (RGB, RGBA or grayscale, read with Pillow) or TIFF/VRT with any number of bands (read through
    GDAL with :class:`cnnkit.rasters.Raster`: declared nodata as NaN, scale and offset applied). Masks are PNG
    (palette images give their palette *indices*; grayscale images their
    values) or TIFF, holding integer class labels. Values are not rescaled: a ``uint8`` image gives
    0–255 as float32, a ``uint16`` band its raw counts.

    **Band layout of TIFF images.** A multi-band GeoTIFF is (C, H, W), whatever its interleave. A TIFF page
    stack (single-band pages, as ``tifffile.imwrite`` stores a 3-D array without ``planarconfig``) is a 3-D array
    matched against
    its mask's (H, W): if its first two axes equal the mask's shape it is channels-last (H, W, C), if its
    last two do it is channels-first (C, H, W); when both hold (a C×C×C cube) channels-last wins, as in
    Pillow and most writers. If neither holds, the image and mask sizes do not match and an error says so.

    **What is left out is named.** Each entry of ``images/`` or ``masks/`` that is not read — a hidden entry, a
    sub-folder, a symbolic link that loops or whose target is missing, a device or pipe, a mask without an image —
    gives one line ``skipped PATH: why``, kept in :attr:`skipped` and passed to ``log`` (a ``UserWarning`` without
    ``log``). An image without a mask, a file of another extension or one without read permission is refused.

    **Files are read when an item is.** The data set holds paths only (sizes come from the headers, see
    :attr:`sizes`); pixels are decoded in ``__getitem__``, so a folder larger than memory streams. A floating-point
    image whose band statistics lie beyond the float32 range it is trained in (a TIFF whose strips point into its
    header decodes its tags as values like 1e29) is refused naming the file; a decoder's error or a ``MemoryError``
    while decoding becomes a :class:`~cnnkit.errors.CnnkitError` naming the file.

    Args:
        root: The dataset folder.
        images: Sub-folder (relative to ``root``) with the images. Every file in it must have a supported
            extension (``.png``, ``.tif``, ``.tiff``, ``.vrt``).
        masks: Sub-folder with the label masks, one per image stem.
        bands: Optional bands to keep, in order: indices counted from 0 (e.g. ``(3, 2, 1)``) or the band names the
            files declare (their band descriptions, else their colour interpretation; case-insensitive: ``("nir",
            "red", "green")``), mixed as
            needed; each image's names are looked up in its own file. Default all bands.
        ignore_index: Optional mask value meaning "not labelled" (e.g. 255); it is returned as −100, the
            value that :func:`cnnkit.losses.pixel_cross_entropy` and ``F.cross_entropy`` leave out.
        log: Called with each ``skipped …`` line (e.g. the training log's ``print``); default: a ``UserWarning``.

    Attributes:
        samples: ``[(image path, mask path), …]`` sorted by image name.
        skipped: The ``skipped PATH: why`` lines of the entries left out.

    Returns (per item):
        ``(image, label)``: float32 (C, H, W) and int64 (H, W).

    Raises:
        CnnkitError: a folder is missing or empty, an image has no mask (or more than one), or a file cannot
            be read (no permission, damaged, truncated, values impossible for its dtype, out of memory; the error
            names the file).
        UnsupportedError: a file has an unsupported extension, a mask is colour (RGB), not integral or
            holds labels outside int64 (uint64 >= 2^63, a float 1e30), or an image is complex.
        ShapeError: an image and its mask differ in size (both files and shapes are named), an image has
            no band (or no pixel), a band index is out of range, or a band name is not declared once by an image
            (the message lists the names it declares).

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "images").mkdir(); (root / "masks").mkdir()
        >>> Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "images" / "a.png")
        >>> Image.fromarray(np.ones((5, 7), np.uint8)).save(root / "masks" / "a.png")
        >>> image, label = SegmentationFolder(root)[0]
        >>> image.shape, image.dtype, label.shape, label.dtype
        (torch.Size([3, 5, 7]), torch.float32, torch.Size([5, 7]), torch.int64)
    """

    def __init__(
        self,
        root: str | Path,
        images: str = "images",
        masks: str = "masks",
        bands: Sequence[int | str] | None = None,
        ignore_index: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.image_dir = self.root / images
        self.mask_dir = self.root / masks
        for name, folder in (("images", self.image_dir), ("masks", self.mask_dir)):
            if not folder.is_dir():
                raise CnnkitError(f"{name} folder does not exist. Received: {name}={str(folder)!r}")
        if bands is not None:
            given = bands
            bands = tuple(bands) if not isinstance(bands, (str, bytes)) else ()
            if not bands or not all((_is_int(b) and b >= 0) or (isinstance(b, str) and b.strip()) for b in bands):
                raise ShapeError(
                    "bands must be a non-empty sequence of band indices (integers >= 0, counted from 0) or band "
                    f"names (the files' band descriptions, else their colour interpretation). Received: bands={given!r}"
                )
            bands = tuple(int(b) if _is_int(b) else b for b in bands)
        if ignore_index is not None and not _is_int(ignore_index):
            raise ShapeError(f"ignore_index must be an integer or None. Received: ignore_index={ignore_index!r}")
        self.bands = bands
        self.ignore_index = ignore_index
        self.skipped: list[str] = []
        self._log = log
        self._sizes: list[tuple[int, int]] | None = None

        image_files = self._list(self.image_dir)
        if not image_files:
            raise CnnkitError(f"No images found in {str(self.image_dir)!r} (expected {EXTENSIONS} files).")
        masks_by_stem: dict[str, list[Path]] = {}
        for path in self._list(self.mask_dir):
            masks_by_stem.setdefault(path.stem, []).append(path)
        self.samples: list[tuple[Path, Path]] = []
        stems: dict[str, Path] = {}
        for path in image_files:
            if path.stem in stems:
                raise CnnkitError(f"Two images share the stem {path.stem!r}: {stems[path.stem]} and {path}.")
            stems[path.stem] = path
            found = masks_by_stem.get(path.stem, [])
            if not found:
                raise CnnkitError(
                    f"No mask for image {path}: expected a file "
                    f"{path.stem}{{{','.join(EXTENSIONS)}}} in {self.mask_dir}."
                )
            if len(found) > 1:
                raise CnnkitError(f"More than one mask for image {path}: {', '.join(map(str, found))}.")
            self.samples.append((path, found[0]))
        for stem, found in sorted(masks_by_stem.items()):
            if stem not in stems:
                for path in found:
                    self._skip(path, f"a mask without an image (no {stem}{{{','.join(EXTENSIONS)}}} in "
                                     f"{self.image_dir})", stacklevel=3)
        if self.bands is not None and not all(_is_int(b) for b in self.bands):
            self._band_indices(_header(self.samples[0][0]).names, self.samples[0][0], None)  # early check

    def _skip(self, path: Path, why: str, stacklevel: int = 4) -> None:
        """Name an entry that is left out: in :attr:`skipped`, and through ``log`` (or a ``UserWarning``)."""
        line = f"skipped {path}: {why}"
        self.skipped.append(line)
        if self._log is not None:
            self._log(line)
        else:
            warnings.warn(line, UserWarning, stacklevel=stacklevel)  # at the caller's line

    def _list(self, folder: Path) -> list[Path]:
        """The readable files of ``folder``, sorted; every other entry is named (:meth:`_skip`) or refused."""
        try:
            entries = sorted(folder.iterdir())
        except OSError as error:
            raise CnnkitError(f"Could not list {folder}: {error.strerror or error}. Make the folder "
                              "readable.") from error
        files = []
        for path in entries:
            if path.name.startswith("."):
                self._skip(path, "a hidden entry (its name starts with '.')")
                continue
            try:
                mode = path.stat().st_mode  # follows links: a loop or a missing target raises
            except OSError as error:
                if error.errno == errno.ELOOP:
                    why = "a symbolic link that loops (it never reaches a file)"
                elif path.is_symlink():
                    why = f"a symbolic link whose target does not exist ({os.readlink(path)})"
                else:
                    why = f"it cannot be examined ({error.strerror or error})"
                self._skip(path, why)
                continue
            if stat.S_ISDIR(mode):
                self._skip(path, "a folder (sub-folders are not read; move its files up or remove it)")
            elif not stat.S_ISREG(mode):
                self._skip(path, "not a regular file (a device, socket or pipe)")
            elif self._sidecar(path):
                self._skip(path, self._sidecar(path))
            elif path.suffix.lower() not in EXTENSIONS:
                raise UnsupportedError(
                    f"Unsupported file extension {path.suffix!r}. Expected one of {EXTENSIONS}. Received: {path}"
                )
            elif not os.access(path, os.R_OK):
                raise CnnkitError(f"Could not read {path}: permission denied. Make the file readable or remove it "
                                  "from the folder.")
            else:
                files.append(path)
        return files

    @staticmethod
    def _sidecar(path: Path) -> str | None:
        """Why ``path`` is left out if it is a side-car of an image beside it (an ENVI ``.hdr``, a ``.aux.xml``)."""
        for ending, why in _SIDECARS.items():
            if path.name.lower().endswith(ending) and len(path.name) > len(ending):
                base = path.name[: -len(ending)]
                # GDAL: x.img.aux.xml beside x.img; ENVI: x.hdr beside x.img (or x.img.hdr beside x.img)
                images = [path.with_name(base)] + [path.with_name(base + suffix) for suffix in TIFF_EXTENSIONS]
                found = next((p for p in images if p.suffix.lower() in EXTENSIONS and p.is_file()), None)
                if found is not None:
                    return why.format(found.name)
        return None

    def _band_indices(self, descriptions: tuple, path: Path, count: int | None) -> list[int]:
        """``bands`` as indices into ``path``'s bands: names matched to its band names (:attr:`_Info.names`: the
        descriptions, else the colour interpretation), case-insensitive."""
        by_name: dict[str, list[int]] = {}
        for index, name in enumerate(descriptions):
            if name:
                by_name.setdefault(str(name).strip().casefold(), []).append(index)
        indices = []
        for band in self.bands:
            if _is_int(band):
                indices.append(band)
                continue
            found = by_name.get(band.strip().casefold(), [])
            if len(found) != 1:
                named = [str(n) for n in descriptions if n]
                available = (f"the band names it declares are {', '.join(named)}" if named
                             else "it declares no band names (band descriptions)")
                rule = "names two bands" if found else "does not name a band"
                count = count or len(descriptions)
                raise ShapeError(
                    f"bands must be band indices or names that each image declares once. Received: bands="
                    f"{list(self.bands)!r}; {band!r} {rule} of {path}: {available}"
                    + (f"; indices 0–{count - 1} select by position." if count else ".")
                )
            indices.append(found[0])
        return indices

    @property
    def band_indices(self) -> tuple[int, ...] | None:
        """``bands`` as indices, names resolved against the first image's band descriptions (``None`` for all bands).

        For a preprocessing record: every image of a folder is expected to order its bands alike (each item is
        read by its own file's names all the same)."""
        if self.bands is None:
            return None
        first = self.samples[0][0]
        return tuple(self._band_indices(_header(first).names, first, None))

    def __len__(self) -> int:
        return len(self.samples)

    def check_pairs(self) -> None:
        """Check every image against its mask from their headers alone, before any pixel is decoded: the mask holds
        one label per pixel, the image has the mask's (H, W) (in any layout ``__getitem__`` reads), and both lie on
        one grid (equal CRS and transform) where both are georeferenced. Cheap (headers only), so a training run
        calls it before its passes over the pixels; the mask sizes read are kept for :attr:`sizes`.

        Raises:
            ShapeError: an image and its mask differ in size or grid (naming both files).
            UnsupportedError: a mask that is not (H, W).
            CnnkitError: a file that cannot be opened (naming it).
        """
        sizes = []
        for image_path, mask_path in self.samples:
            hw = _size(mask_path)
            shape, info = _image_shape(image_path)
            _check_aligned(image_path, info.georeference, mask_path, _header(mask_path).georeference)
            _layout(shape, info.channels_first, hw, image_path, mask_path)
            sizes.append(hw)
        self._sizes = sizes

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``[(H, W), …]`` of every sample, read from the masks' headers (no pixel is decoded).

        For :class:`~cnnkit.masking.BucketBatchSampler`. Read once, then kept.
        """
        if self._sizes is None:
            self._sizes = [_size(mask) for _, mask in self.samples]
        return self._sizes

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, images={self.image_dir.name!r}, "
                f"masks={self.mask_dir.name!r}, bands={self.bands!r}, ignore_index={self.ignore_index!r})"
                f"  # {len(self)} samples")

    @property
    def band_names(self) -> tuple[str, ...] | None:
        """The bands' names as the first image's file gives them (after ``bands`` selection): each band's description,
        else its colour interpretation where that names a band (an RGB GeoTIFF without descriptions: ``("red",
        "green", "blue")``); ``None`` when it does not name every band (PNG, or a TIFF whose bands are neither
        described nor interpreted as colours)."""
        names = _header(self.samples[0][0]).names
        if not names or not all(names):
            return None
        if self.bands is not None:
            indices = self.band_indices
            if max(indices) >= len(names):
                return None  # refused with the band count when the image is read
            names = tuple(names[b] for b in indices)
        return tuple(str(n) for n in names)

    def declared_nodata(self) -> dict[str, list[float]]:
        """The nodata values the files declare, ``{"images": [...], "masks": [...]}`` (read from the headers; PNGs
        declare none). Image pixels of these values read as NaN (no data), mask pixels as −100 (unlabelled)."""
        found: dict[str, set] = {"images": set(), "masks": set()}
        for image, mask in self.samples:
            for kind, path in (("images", image), ("masks", mask)):
                found[kind].update(float(v) for v in _header(path).nodata if v is not None)
        return {kind: sorted(values) for kind, values in found.items()}

    def _label(self, path: Path) -> np.ndarray:
        return self._read_label(path)[0]

    def _read_label(self, path: Path) -> tuple[np.ndarray, _Info]:
        mask, info = _read(path)
        declared = [v for v in info.nodata if v is not None]
        unlabelled = None
        if declared and mask.size:
            unlabelled = np.isnan(mask) if np.isnan(declared[0]) else mask == np.asarray(declared[0]).astype(mask.dtype)
            if unlabelled.any():
                mask = np.where(unlabelled, np.zeros((), mask.dtype), mask)
            else:
                unlabelled = None
        labels = self._labels(mask, path)
        if unlabelled is not None:
            labels[unlabelled.reshape(labels.shape)] = IGNORE_INDEX  # the mask's declared nodata: not labelled
        if info.sparse is not None and info.sparse.any():
            # blocks stored without data hold GDAL's fill (0, a class): not labelled
            labels[info.sparse.any(axis=0).reshape(labels.shape)] = IGNORE_INDEX
        return labels, info

    def _labels(self, mask: np.ndarray, path: Path) -> np.ndarray:
        if mask.ndim == 3 and 1 in (mask.shape[0], mask.shape[-1]):
            mask = mask.squeeze(0) if mask.shape[0] == 1 else mask.squeeze(-1)
        if mask.ndim != 2:
            raise UnsupportedError(
                f"A mask must hold one integer label per pixel (H, W); colour or multi-band masks are not "
                f"supported (save a palette or grayscale PNG). Received shape {mask.shape} from {path}"
            )
        if np.issubdtype(mask.dtype, np.bool_):
            return mask.astype(np.int64)
        if np.issubdtype(mask.dtype, np.integer):
            if np.iinfo(mask.dtype).max > _INT64_MAX and mask.size and mask.max() > _INT64_MAX:
                raise UnsupportedError(  # uint64 labels >= 2^63 would wrap to negative int64 values
                    f"A mask's labels must fit in int64. Received a {mask.dtype} value {int(mask.max())} > "
                    f"{_INT64_MAX} from {path}"
                )
            return mask.astype(np.int64)
        if not np.issubdtype(mask.dtype, np.floating):
            raise UnsupportedError(f"A mask must hold integer labels. Received dtype {mask.dtype} from {path}")
        if not np.all(np.isfinite(mask)) or not np.array_equal(mask, np.round(mask)):
            raise UnsupportedError(
                f"A mask must hold integer labels. Received dtype {mask.dtype} with non-integer values from {path}"
            )
        # float64 holds -2^63 and 2^63 exactly; outside, astype(int64) gives int64 min (1e30 did).
        if mask.size and (mask.min() < -(2.0**63) or mask.max() >= 2.0**63):
            value = mask.max() if mask.max() >= 2.0**63 else mask.min()
            raise UnsupportedError(
                f"A mask's labels must fit in int64. Received a {mask.dtype} value {value:g} from {path}"
            )
        return mask.astype(np.int64)

    def label(self, index: int) -> Tensor:
        """The label map of sample ``index`` alone (the image is not read): int64 (H, W), −100 for ``ignore_index``."""
        target = torch.from_numpy(self._label(self.samples[index][1]))
        if self.ignore_index is not None:
            target[target == self.ignore_index] = IGNORE_INDEX
        return target

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.samples[index]
        label, mask_info = self._read_label(mask_path)
        array, info = _read(image_path, raw=False)
        _check_aligned(image_path, info.georeference, mask_path, mask_info.georeference)
        layout = _layout(array.shape, info.channels_first, label.shape, image_path, mask_path)
        if layout == "HW":
            array = array[None]
        elif layout == "HWC":
            array = np.moveaxis(array, -1, 0)
        if array.shape[0] == 0 or array.size == 0:
            # A zero-band TIFF would otherwise reach Standardized as its validity band alone.
            raise ShapeError(
                f"An image must have at least one band and one pixel. Received shape {array.shape} (bands, H, W) "
                f"from {image_path}"
            )
        if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise UnsupportedError(
                f"An image must hold real numbers. Received dtype {array.dtype} from {image_path}"
            )
        if self.bands is not None:
            indices = self._band_indices(info.names, image_path, array.shape[0])
            if max(indices) >= array.shape[0]:
                raise ShapeError(
                    f"bands must index the image's {array.shape[0]} bands, counted from 0. Received: "
                    f"bands={self.bands} for {image_path}"
                )
            array = array[indices]
        image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # no second copy of float32 bands
        target = torch.from_numpy(label)
        if self.ignore_index is not None:
            target[target == self.ignore_index] = IGNORE_INDEX
        return image, target
