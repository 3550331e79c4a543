"""The one boundary between GDAL and cnnkit: every dataset the room opens, reads or writes goes through here.

Errors raised inside GDAL (through rasterio) or by the operating system while a raster is opened, read or written
become one :class:`~cnnkit.errors.CnnkitError` that names the file, what was being done and GDAL's message. Checks
on untrusted files (declared sizes against a memory budget, damaged blocks) belong here too, so the reader and
the writer have one place that decides what a file may cost.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

from cnnkit.errors import CnnkitError

__all__ = ["raster_errors"]


GDAL_CACHE_BYTES = 32 * 2**20
"""GDAL's own block cache, process-wide, unless ``GDAL_CACHEMAX`` is set in the environment. cnnkit keeps the blocks
a sweep of tiles needs in its reader's cache; GDAL's default (5 % of the machine's memory) would keep every block of
a scene it decoded besides, and the output files' blocks as they are written: 2.2 GB on a 10,980² × 4 scene."""

_limited: list[bool] = []


def _limit_gdal_cache() -> None:
    if _limited:
        return
    _limited.append(True)
    if "GDAL_CACHEMAX" not in os.environ:
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)  # an integer: bytes, applied at once


@contextlib.contextmanager
def raster_errors(path: str | os.PathLike, doing: str) -> Iterator[None]:
    """Re-raise what GDAL or the file system raise inside the block as a :class:`CnnkitError` naming ``path``.

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
    """
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    # a picture without georeferencing is ordinary here, not worth a warning per file
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    _limit_gdal_cache()
    try:
        yield
    except CnnkitError:
        raise
    except (RasterioError, OSError) as err:
        message = str(err).strip() or type(err).__name__
        raise CnnkitError(f"Could not {doing} {os.fspath(path)}: {message}") from err
