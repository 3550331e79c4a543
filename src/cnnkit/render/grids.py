"""Image grids of filters, weight gradients and activations, on one shared symmetric scale.

"What do these 32 filters look like?" — random numbers at initialisation, feature detectors after
training (see :class:`cnnkit.inspect.FilterEvolution`). "What is a weight gradient?" — the gradient of
the loss with respect to each weight: a tensor of exactly the weight's shape, so it is drawn by the
same function, ``filter_grid(conv.weight.grad)``.

**Normalisation.** Every grid uses one *shared symmetric* scale ``s``: by default the largest absolute
value in the whole tensor (``s = max |w|``), or a ``scale`` you pass (values beyond it are clipped), so
sign and magnitude can be compared between tiles — a tile that looks faint really has small weights.
With ``t = clip(w / s, −1, 1)``:

* **single-channel tiles** use a diverging map: negative blue, zero white, positive red —
  ``t ≥ 0 → (255, round(255·(1 − t)), round(255·(1 − t)))`` and
  ``t < 0 → (round(255·(1 + t)), round(255·(1 + t)), 255)``; so ``+s`` is pure red (255, 0, 0),
  ``−s`` pure blue (0, 0, 255) and 0 white (255, 255, 255);
* **RGB tiles** (first-layer filters of a 3-channel input) map each channel to
  ``128 + round(127·t)``: 0 is mid-grey 128, ``+s`` is 255 and ``−s`` is 1.

Rounding is to the nearest integer (ties to even). If ``s`` is 0 (an all-zero tensor) it is taken as 1.
Tiles are separated by ``padding`` pixels of ``pad_color`` (also around the border) and may be enlarged
by an integer ``zoom`` (nearest neighbour). Results are ``uint8`` arrays (H, W, 3), channels last, ready
for :func:`cnnkit.render.save_png`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.render.labels import _check_color, _to_numpy

__all__ = ["activation_grid", "filter_grid", "signed_to_rgb", "tile_images"]


def _as_float(values, name: str) -> np.ndarray:
    if isinstance(values, Tensor) and values.is_floating_point():
        values = values.detach().to("cpu", torch.float64)  # also bfloat16 / float16, which numpy lacks
    arr = _to_numpy(values, name)
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_:
        raise ShapeError(f"{name} must hold numbers. Received dtype {arr.dtype}.")
    if arr.size == 0:
        raise ShapeError(f"{name} must not be empty. Received {name} with shape {tuple(arr.shape)}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ShapeError(f"{name} must be finite. Received {name} with NaN or infinite values.")
    return arr


def _shared_scale(arr: np.ndarray, scale: float | None) -> float:
    if scale is None:
        peak = float(np.abs(arr).max())
        return peak if peak > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0 or not math.isfinite(scale):
        raise ShapeError(f"scale must be a positive finite number (or None for max |value|). Received scale={scale!r}.")
    return float(scale)


def signed_to_rgb(values: Tensor | np.ndarray, scale: float | None = None) -> np.ndarray:
    """Diverging colours for signed values: negative blue, zero white, positive red (shared scale).

    Args:
        values: Any real tensor or array.
        scale: The magnitude drawn at full colour; default ``max |values|``. Beyond it, values are clipped.

    Shape:
        - Output: ``(*values.shape, 3)``, ``uint8``.

    Examples:
        >>> signed_to_rgb(torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])).tolist()
        [[0, 0, 255], [128, 128, 255], [255, 255, 255], [255, 128, 128], [255, 0, 0]]
    """
    arr = _as_float(values, "values")
    t = np.clip(arr / _shared_scale(arr, scale), -1.0, 1.0)
    fade = np.round(255.0 * (1.0 - np.abs(t))).astype(np.uint8)
    full = np.full_like(fade, 255)
    positive = t >= 0
    r = np.where(positive, full, fade)
    b = np.where(positive, fade, full)
    return np.stack([r, fade, b], axis=-1)


def _rgb_signed(arr: np.ndarray, s: float) -> np.ndarray:
    t = np.clip(arr / s, -1.0, 1.0)
    return (128 + np.round(127.0 * t)).astype(np.uint8)


def tile_images(
    tiles: np.ndarray,
    ncols: int | None = None,
    *,
    padding: int = 1,
    pad_color: Sequence[int] = (0, 0, 0),
    zoom: int = 1,
) -> np.ndarray:
    """Lay (T, h, w, 3) ``uint8`` tiles out row by row in a grid, ``ncols`` per row.

    Args:
        tiles: The tiles, channels last.
        ncols: Tiles per row; default ``ceil(sqrt(T))``.
        padding: Pixels of ``pad_color`` between tiles and around the border (after zoom).
        pad_color: RGB of the separators.
        zoom: Integer enlargement of each tile (nearest neighbour).

    Shape:
        - Output: (rows·(h·zoom + padding) + padding, ncols·(w·zoom + padding) + padding, 3) with
          rows = ceil(T / ncols).

    Examples:
        >>> tile_images(np.full((2, 1, 1, 3), 9, np.uint8), padding=1)[..., 0]
        array([[0, 0, 0, 0, 0],
               [0, 9, 0, 9, 0],
               [0, 0, 0, 0, 0]], dtype=uint8)
    """
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        shape = getattr(tiles, "shape", None)
        raise ShapeError(f"tiles must be a uint8 array of shape (T, h, w, 3). Received shape {shape}.")
    if tiles.shape[0] == 0:
        raise ShapeError("tiles must hold at least one tile. Received 0 tiles.")
    count = tiles.shape[0]
    ncols = math.ceil(math.sqrt(count)) if ncols is None else check_int(ncols, "ncols")
    ncols = min(ncols, count)
    padding = check_int(padding, "padding", minimum=0)
    zoom = check_int(zoom, "zoom")
    color = _check_color(pad_color, "pad_color")
    if zoom > 1:
        tiles = tiles.repeat(zoom, axis=1).repeat(zoom, axis=2)
    h, w = tiles.shape[1:3]
    rows = math.ceil(count / ncols)
    canvas = np.empty((rows * (h + padding) + padding, ncols * (w + padding) + padding, 3), dtype=np.uint8)
    canvas[...] = color
    for i in range(count):
        r, c = divmod(i, ncols)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        canvas[top:top + h, left:left + w] = tiles[i]
    return canvas


def filter_grid(
    weight: Tensor | np.ndarray,
    *,
    rgb: bool | None = None,
    scale: float | None = None,
    ncols: int | None = None,
    padding: int = 1,
    zoom: int = 1,
    pad_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Draw convolution filters — or their weight gradients — as one image grid.

    ``weight`` is a conv weight (``conv.weight``) or anything of its shape (``conv.weight.grad``, a
    snapshot, a difference of snapshots). With ``rgb`` (default: when ``in_channels == 3``), filter ``o``
    is one RGB tile ``weight[o]`` (first-layer filters of colour images); otherwise every (filter, input
    channel) pair is a single-channel tile in the diverging map, ordered filter by filter
    (``o·in_channels + i``). All tiles share one symmetric scale (module docstring).

    Args:
        weight: (out_channels, in_channels, kH, kW) for Conv2d, or (out_channels, in_channels, k) for
            Conv1d (each tile is then 1 × k).
        rgb: Draw each filter as one RGB tile (needs in_channels == 3). Default: ``in_channels == 3``.
        scale: Full-intensity magnitude; default ``max |weight|`` over the whole tensor.
        ncols: Tiles per row; default ``in_channels`` for per-channel tiles with in_channels > 1
            (one filter per row), else ``ceil(sqrt(number of tiles))``.
        padding, zoom, pad_color: Layout (:func:`tile_images`).

    Shape:
        - weight: (O, I, kH, kW) or (O, I, k)
        - Output: (H, W, 3) ``uint8``; e.g. per-channel tiles, I > 1: H = O·(kH·zoom + padding) + padding,
          W = I·(kW·zoom + padding) + padding.

    Examples:
        >>> w = torch.tensor([[[[1.0, -0.5]]], [[[0.0, 0.25]]]])  # 2 filters, 1 input channel, 1 × 2
        >>> filter_grid(w, padding=0, ncols=1).tolist()  # shared scale 1.0 for both filters
        [[[255, 0, 0], [128, 128, 255]], [[255, 255, 255], [255, 191, 191]]]
        >>> filter_grid(torch.zeros(4, 3, 5, 5), padding=0)[0, 0].tolist()  # RGB filters: 0 is grey
        [128, 128, 128]
    """
    arr = _as_float(weight, "weight")
    if arr.ndim == 5:
        raise UnsupportedError(
            "filter_grid draws 1-D and 2-D filters; for a Conv3d weight pass one depth slice, "
            f"e.g. weight[:, :, d]. Received weight with shape {arr.shape}."
        )
    if arr.ndim == 3:
        arr = arr[:, :, None, :]
    if arr.ndim != 4:
        raise ShapeError(
            "weight must be a conv weight of shape (out_channels, in_channels, kH, kW) or "
            f"(out_channels, in_channels, k). Received weight with shape {arr.shape}."
        )
    in_channels = arr.shape[1]
    s = _shared_scale(arr, scale)
    if rgb is None:
        rgb = in_channels == 3
    if rgb:
        if in_channels != 3:
            raise ShapeError(
                f"rgb=True needs weights with in_channels == 3. Received weight with shape {arr.shape}."
            )
        tiles = np.moveaxis(_rgb_signed(arr, s), 1, -1)  # (O, kH, kW, 3)
        default_cols = None
    else:
        tiles = signed_to_rgb(arr.reshape(-1, *arr.shape[2:]), scale=s)  # (O·I, kH, kW, 3)
        default_cols = in_channels if in_channels > 1 else None
    return tile_images(np.ascontiguousarray(tiles), ncols if ncols is not None else default_cols,
                       padding=padding, pad_color=pad_color, zoom=zoom)


def activation_grid(
    activations: Tensor | np.ndarray,
    *,
    sample: int = 0,
    scale: float | None = None,
    ncols: int | None = None,
    padding: int = 1,
    zoom: int = 1,
    pad_color: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Draw the feature maps of one sample, one tile per channel, on a shared symmetric scale.

    Uses the diverging map of :func:`signed_to_rgb` (after a ReLU everything is white → red); the scale
    is ``max |activations[sample]|`` unless given, so channels can be compared with one another.

    Args:
        activations: (N, C, H, W) or (N, C, L) — a layer's output, e.g. from :class:`cnnkit.inspect.Recorder`.
        sample: Which sample of the batch to draw.
        scale: Full-intensity magnitude; default the sample's max |activation|.
        ncols, padding, zoom, pad_color: Layout (:func:`tile_images`); ``ncols`` defaults to ceil(sqrt(C)).

    Shape:
        - Output: (H_grid, W_grid, 3) ``uint8``, one (H, W) tile (or 1 × L for 1-D) per channel.

    Examples:
        >>> a = torch.tensor([[[[2.0]], [[-1.0]]]])  # (1, 2, 1, 1)
        >>> activation_grid(a, padding=0).tolist()
        [[[255, 0, 0], [128, 128, 255]]]
    """
    arr = _as_float(activations, "activations")
    if arr.ndim not in (3, 4):
        raise ShapeError(
            f"activations must have shape (N, C, H, W) or (N, C, L). Received activations with shape {arr.shape}."
        )
    if isinstance(sample, bool) or not isinstance(sample, int) or not -arr.shape[0] <= sample < arr.shape[0]:
        raise ShapeError(f"sample must index the batch of {arr.shape[0]}. Received sample={sample!r}.")
    maps = arr[sample]
    if maps.ndim == 2:
        maps = maps[:, None, :]
    tiles = signed_to_rgb(maps, scale=_shared_scale(maps, scale))
    return tile_images(tiles, ncols, padding=padding, pad_color=pad_color, zoom=zoom)
