"""The one boundary between the decoders (GDAL through rasterio, Pillow, zlib) and cnnkit.

Whatever a decoder or the operating system raises while a raster is opened, read or written — GDAL's errors,
``zlib.error``, ``struct.error``, ``IndexError``, ``ZeroDivisionError``, ``NotImplementedError``, ``AssertionError``,
``MemoryError``, Pillow's ``DecompressionBombError``, a missing codec — becomes one
:class:`~cnnkit.errors.CnnkitError` that names the file, what was being done and the decoder's message; a missing
codec names what to install, a full disk says so. The checks of declared sizes against the file and a memory budget
live beside it, in :mod:`cnnkit.rasters.plausibility`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import warnings
from collections.abc import Iterator

from cnnkit.errors import CnnkitError

__all__ = ["disk_full", "raster_errors"]


GDAL_CACHE_BYTES = 8 * 2**20
"""GDAL's own block cache, process-wide, unless ``GDAL_CACHEMAX`` is set in the environment. cnnkit keeps the blocks
a sweep of tiles needs in its reader's cache; GDAL's default (5 % of the machine's memory) would keep every block of
a scene it decoded besides, and the output files' blocks as they are written: 2.2 GB on a 10,980² × 4 scene. While
a scene is predicted GDAL's cache mostly holds those decoded input blocks a second time (2 MB each for 512² × 4
uint16: copied into the reader's cache as they are read, never asked of GDAL again). 8 MB instead of 32 took 24 MB
off the peak of a 768 × 10,980 scene; the price: more of an output's blocks are flushed half-written between the two
rows of 256-px tiles that fill them, and read back (from an uncompressed file, in the page cache) to be completed."""

_limited: list[bool] = []

_FULL = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))
_FULL_TEXT = re.compile(r"no space left|file too large|disk quota", re.I)
_WRITE_TEXT = re.compile(r"short write|failed to write|write failed|write error", re.I)
_CODEC = re.compile(r"missing codec\s*(\w+)?|codec\s+(\w+)\s+(?:is\s+)?not (?:available|supported|configured)|"
                    r"decoder (\w+) not available|(\w+) compression support is not configured", re.I)


def _configure_gdal() -> None:
    if _limited:
        return
    _limited.append(True)
    from rasterio.env import set_gdal_config

    if "GDAL_CACHEMAX" not in os.environ:
        set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)  # an integer: bytes, applied at once
    # a VRT from elsewhere never runs code: GDAL's Python pixel functions stay off whatever the environment says
    set_gdal_config("GDAL_VRT_ENABLE_PYTHON", "NO")


def disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the disk (or a file size limit, or a quota) is full."""
    for err in (error, error.__cause__, error.__context__):
        if isinstance(err, OSError) and err.errno in _FULL:
            return True
        if err is not None and _FULL_TEXT.search(str(err)):
            return True
    return False


def _codec_hint(message: str) -> str:
    found = _CODEC.search(message)
    if not found:
        return ""
    codec = next((g for g in found.groups() if g), "this").upper()
    if codec in ("JPEG2K", "JPEG2000", "JP2"):
        return (" The JPEG 2000 decoder is missing: install Pillow built with OpenJPEG (pip install --upgrade pillow)"
                " or read the file through GDAL (a .jp2 file).")
    return (f" The {codec} codec is missing from this GDAL: install a rasterio built with it (pip install --upgrade "
            "rasterio: its wheels carry DEFLATE, LZW, ZSTD, WEBP, LERC and JPEG 2000) or conda-forge's libgdal.")


def _message(err: BaseException) -> str:
    text = (err.strerror if isinstance(err, OSError) and err.strerror else str(err)).strip()
    if isinstance(err, MemoryError):
        return "the decoder ran out of memory (the file declares more data than it holds, or than memory allows)"
    kind = type(err)
    name = kind.__name__ if kind.__module__ in ("builtins", "rasterio.errors", "rasterio._err") else (
        f"{kind.__module__}.{kind.__name__}")
    if not text:
        return name
    if kind.__module__ in ("rasterio.errors", "rasterio._err") or name in ("OSError", "FileNotFoundError"):
        return text
    return f"{name}: {text}"


@contextlib.contextmanager
def raster_errors(path: str | os.PathLike, doing: str) -> Iterator[None]:
    """Re-raise whatever a decoder or the file system raises inside the block as a :class:`CnnkitError` naming
    ``path``.

    Args:
        path: The file being read or written.
        doing: What was being done, as a verb phrase ("read", "write the Cloud-Optimized GeoTIFF").

    Examples:
        >>> with raster_errors("missing.tif", "open"):
        ...     import rasterio
        ...     rasterio.open("missing.tif")
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: Could not open missing.tif: ...
        >>> import zlib
        >>> with raster_errors("x.tif", "read"):
        ...     zlib.decompress(b"not deflate")
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: Could not read x.tif: zlib.error: Error -3 while decompressing data: ...
    """
    from rasterio.errors import NotGeoreferencedWarning

    # a picture without georeferencing is ordinary here, not worth a warning per file
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    _configure_gdal()
    try:
        yield
    except CnnkitError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as err:  # the boundary: every decoder error becomes the project's
        message = _message(err)
        if disk_full(err) and doing.startswith("write"):
            raise CnnkitError(f"Could not {doing} {os.fspath(path)}: the disk is full (or a file size limit was "
                              f"reached): {message}. The partial file was removed.") from err
        if doing.startswith("write") and any(_WRITE_TEXT.search(str(e)) for e in (err, err.__cause__) if e):
            cause = f" ({_message(err.__cause__)})" if err.__cause__ is not None else ""
            raise CnnkitError(f"Could not {doing} {os.fspath(path)}: {message}{cause}. Is the disk full, or a file "
                              "size limit reached? The partial file was removed.") from err
        raise CnnkitError(f"Could not {doing} {os.fspath(path)}: {message}.{_codec_hint(message)}") from err
