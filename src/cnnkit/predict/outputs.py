"""The files a prediction becomes: label map, overlay with legend, probabilities, confidence.

Per input ``STEM``, in the output folder:

* ``STEM_labels.png`` — the label map as a palette PNG: pixel value = class index, shown in the class
  colours; pixels without data hold ``ignore_value`` (255 by default), shown black;
* ``STEM_labels.tif`` (``tiff=True``) — the same values as a TIFF, with the input's georeferencing tags;
* ``STEM_overlay.png`` — the image (a band composite) beside the opaque label map, with the legend below,
  so every colour in the picture is a colour of the legend; scenes over 1024 pixels a side are drawn
  at a reduced scale (the file name says so: ``STEM_overlay_1to4.png``);
* ``STEM_probabilities.tif`` (``probabilities=True``) — ``(H, W, K)`` float16 softmax, georeferenced;
* ``STEM_confidence.tif`` (``confidence=True``) — ``(H, W)`` float16 probability of the winning class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError
from cnnkit.predict.scene import create_tiff
from cnnkit.render.labels import DEFAULT_PALETTE, colorize, image_to_rgb, legend

__all__ = ["palette_png", "side_by_side", "write_tiff"]


def _palette(num_classes: int, palette) -> np.ndarray:
    if palette is not None:
        return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return np.asarray([DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)] for k in range(num_classes)], dtype=np.uint8)


def palette_png(path: str | Path, labels: np.ndarray, num_classes: int, palette=None,
                ignore_value: int = 255) -> Path:
    """Write ``labels`` (H, W) as an 8-bit palette PNG: values are class indices, colours the class colours."""
    from PIL import Image

    if num_classes > 255 or not 0 <= ignore_value <= 255:
        raise CnnkitError(f"A PNG label map holds values 0–255: {num_classes} classes and ignore value {ignore_value} "
                          "do not fit. Ask for a TIFF label map instead (--tiff).")
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[:num_classes] = _palette(num_classes, palette)[:num_classes]
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(colours.flatten().tolist())
    try:
        image.save(path, optimize=False)
    except OSError as err:
        raise CnnkitError(f"Could not write {path}: {err}.") from err
    return Path(path)


def write_tiff(path: str | Path, array: np.ndarray, geo_tags=(), nodata: float | None = None) -> Path:
    """Write ``array`` ((H, W) or (H, W, K)) as an uncompressed TIFF with ``geo_tags`` copied in and ``nodata``
    declared as its own no-data value (see :func:`~cnnkit.predict.scene.create_tiff`)."""
    out = create_tiff(path, array.shape, array.dtype, geo_tags, nodata)
    out[:] = array
    out.flush()
    del out
    return Path(path)


def side_by_side(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], palette=None,
                 ignore_value: int = 255, bands: Sequence[int] | None = None, step: int = 1) -> np.ndarray:
    """The image's RGB composite and the opaque label map side by side, the legend below (``uint8`` RGB).

    ``step`` > 1 draws every ``step``-th pixel (a preview of a large scene).
    """
    from PIL import Image

    image = np.asarray(image)[:, ::step, ::step]
    labels = np.asarray(labels)[::step, ::step]
    if bands is None and image.shape[0] == 2:
        bands = (0,)  # two bands: the first in grey
    rgb = image_to_rgb(image, bands, normalize="percentile")
    mask = colorize(labels.astype(np.int64), _palette(len(class_names), palette), ignore_index=ignore_value)
    key = legend(list(class_names), _palette(len(class_names), palette), ignore_name="no data")
    gap = 8
    height, width = rgb.shape[:2]
    canvas = np.full((height + gap + key.shape[0], max(2 * width + gap, key.shape[1]), 3), 255, dtype=np.uint8)
    canvas[:height, :width] = rgb
    canvas[:height, width + gap:2 * width + gap] = mask
    canvas[height + gap:height + gap + key.shape[0], :key.shape[1]] = key
    return np.asarray(Image.fromarray(canvas))
