"""PNG and JPEG read whole with Pillow, as untrusted files: the declared size checked before decoding.

A PNG's header is checked against its image data first (:func:`~cnnkit.rasters.plausibility.check_png`: within the
budget, exactly the rows declared); a JPEG's declared size against the same budget. Pillow's own errors — a
truncated file, ``DecompressionBombError``, an unknown format — become a :class:`~cnnkit.errors.CnnkitError` naming
the file, through :func:`~cnnkit.rasters.boundary.raster_errors`.

Examples:
    >>> import numpy as np, tempfile, os
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "x.png")
    >>> Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4)).save(path)
    >>> read_picture(path).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from cnnkit.errors import CnnkitError
from cnnkit.rasters.boundary import raster_errors
from cnnkit.rasters.plausibility import PICTURE_BYTES, check_declared, check_png

__all__ = ["read_picture"]

_MODES = ("L", "I", "I;16", "RGB", "RGBA", "F")


def read_picture(path: str | os.PathLike, budget: int = PICTURE_BYTES) -> np.ndarray:
    """A PNG or JPEG as an ``(H, W)`` or ``(H, W, C)`` array (palette and other modes as RGB).

    Args:
        path: The file.
        budget: Bytes its decoded pixels may take at most (default :data:`~cnnkit.rasters.plausibility.PICTURE_BYTES`).

    Raises:
        CnnkitError: a damaged or truncated file, a header that contradicts the data, or a size over ``budget``
            (naming the file and the sizes).
    """
    from PIL import Image

    name = os.fspath(path)
    with open(path, "rb") as f:
        png = f.read(8) == b"\x89PNG\r\n\x1a\n"
    if png:
        check_png(path, budget)
    with raster_errors(path, "read the image"), warnings.catch_warnings():
        # the budget is ours, checked above and below; Pillow's own bomb limit still raises (and is caught)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            width, height = img.size
            channels = len(img.getbands()) if img.mode in _MODES else 3
            check_declared(name, channels, height, width)
            if height * width * channels > budget:
                raise CnnkitError(f"{name} declares {height} × {width} pixels × {channels} channels: over the "
                                  f"{budget // 2**20} MiB a PNG or JPEG may take (they are decoded whole). Convert "
                                  "it to a tiled GeoTIFF (gdal_translate -co TILED=YES), read window by window.")
            if img.mode not in _MODES:
                img = img.convert("RGB")
            return np.array(img)
