"""Opaque panels for one sample: labels, errors and confidence, each pixel in exactly one legend colour.

A report row shows a sample's image beside panels that are *not* blended into it, so every pixel of a
label panel has one of the legend's colours and nothing else:

* :func:`label_panel` — class ``k`` in ``palette[k]``; a pixel with data but no label in
  :data:`UNLABELLED_COLOR`; a pixel without data (the validity band is 0) in :data:`NODATA_COLOR` (both defined
  once in :mod:`cnnkit.render.labels`, and used by every picture).
* :func:`error_panel` — a labelled pixel predicted right in :data:`CORRECT_COLOR`, wrong in
  :data:`WRONG_COLOR`; unlabelled and no-data pixels as in :func:`label_panel`.
* :func:`confidence_panel` — the largest class probability of each pixel through a sequential colour map
  (:func:`confidence_colors` gives the stops of its colour bar); no-data pixels in :data:`NODATA_COLOR`.

No-data wins over unlabelled: a cloud pixel (no data, no label) is drawn as no data. Results are ``uint8``
(H, W, 3) arrays for :func:`cnnkit.render.save_png`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cnnkit.errors import ShapeError
from cnnkit.render.labels import (
    NODATA_COLOR,
    UNLABELLED_COLOR,
    _check_labels,
    _lookup,
    _palette_array,
    _to_numpy,
    _valid_mask,
)

__all__ = ["CORRECT_COLOR", "NODATA_COLOR", "UNLABELLED_COLOR", "WRONG_COLOR", "confidence_colors",
           "confidence_panel", "error_panel", "label_panel"]

CORRECT_COLOR: tuple[int, int, int] = (205, 205, 205)
"""Error panel: labelled pixels the network got right."""
WRONG_COLOR: tuple[int, int, int] = (220, 20, 60)
"""Error panel: labelled pixels the network got wrong."""


def label_panel(
    labels: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None = None,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    ignore_index: int = -100,
) -> np.ndarray:
    """Class colours, opaque; unlabelled pixels :data:`UNLABELLED_COLOR`, no-data pixels :data:`NODATA_COLOR`.

    Args:
        labels: (H, W) integer labels (``ignore_index`` = no label).
        valid: (H, W) truthy where the pixel has data (default: everywhere).
        palette: Class colours (default :data:`cnnkit.render.DEFAULT_PALETTE`, cycled).
        ignore_index: The label of unlabelled pixels.

    Examples:
        >>> label_panel(np.array([[0, -100, 1]]), valid=np.array([[1, 1, 0]])).tolist()
        [[[31, 119, 180], [0, 0, 0], [255, 255, 255]]]
    """
    lab = _check_labels(labels, ignore_index)
    colors, labelled = _lookup(lab, _palette_array(palette), ignore_index)
    out = np.empty((*lab.shape, 3), dtype=np.uint8)
    out[...] = UNLABELLED_COLOR
    out[labelled] = colors[labelled]
    out[~_valid_mask(valid, lab.shape)] = NODATA_COLOR
    return out


def error_panel(
    true: Tensor | np.ndarray,
    predicted: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None = None,
    ignore_index: int = -100,
) -> np.ndarray:
    """Right / wrong per labelled pixel; unlabelled and no-data pixels as in :func:`label_panel`.

    Examples:
        >>> error_panel(np.array([[0, 1, -100]]), np.array([[0, 2, 2]])).tolist()
        [[[205, 205, 205], [220, 20, 60], [0, 0, 0]]]
    """
    t = _check_labels(true, ignore_index, "true")
    p = _check_labels(predicted, None, "predicted")
    if t.shape != p.shape:
        raise ShapeError(f"predicted must have the shape of true {t.shape}. Received predicted with shape {p.shape}.")
    out = np.empty((*t.shape, 3), dtype=np.uint8)
    out[...] = UNLABELLED_COLOR
    labelled = t != ignore_index
    out[labelled & (t == p)] = CORRECT_COLOR
    out[labelled & (t != p)] = WRONG_COLOR
    out[~_valid_mask(valid, t.shape)] = NODATA_COLOR
    return out


def confidence_colors(values: np.ndarray, cmap: str = "viridis") -> np.ndarray:
    """``uint8`` RGB of ``values`` in [0, 1] under the matplotlib colour map ``cmap`` (clipped)."""
    from matplotlib import colormaps

    return np.round(255.0 * colormaps[cmap](np.clip(values, 0.0, 1.0))[..., :3]).astype(np.uint8)


def confidence_panel(
    probabilities: Tensor | np.ndarray,
    valid: Tensor | np.ndarray | None = None,
    cmap: str = "viridis",
) -> np.ndarray:
    """The largest class probability of each pixel through ``cmap`` (0 → its first colour, 1 → its last).

    Args:
        probabilities: (K, H, W) class probabilities (softmax of the logits).
        valid: (H, W) truthy where the pixel has data; no-data pixels are :data:`NODATA_COLOR`.
        cmap: A matplotlib colour map name.
    """
    if isinstance(probabilities, Tensor):
        probabilities = probabilities.detach().to("cpu", torch.float64)
    arr = _to_numpy(probabilities, "probabilities").astype(np.float64)
    if arr.ndim != 3:
        raise ShapeError(f"probabilities must have shape (K, H, W). Received shape {arr.shape}.")
    out = confidence_colors(arr.max(axis=0), cmap)
    out[~_valid_mask(valid, arr.shape[1:])] = NODATA_COLOR
    return out
