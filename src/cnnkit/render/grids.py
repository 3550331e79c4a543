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

__all__ = ["activation_grid", "annotated_grid", "colorbar", "filter_grid", "signed_to_byte", "signed_to_rgb",
           "tile_images"]


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


def signed_to_byte(arr: np.ndarray, scale: float) -> np.ndarray:
    """Signed values as bytes around mid-grey: ``128 + round(127 · clip(value / scale, −1, 1))``, so 0 is 128 and
    ±``scale`` is 255 / 1 (a colour filter's three channels drawn as one RGB tile).

    Examples:
        >>> signed_to_byte(np.array([-4.0, -1.0, 0.0, 2.0, 9.0]), 2.0).tolist()
        [1, 64, 128, 255, 255]
    """
    t = np.clip(arr / scale, -1.0, 1.0)
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
        tiles = np.moveaxis(signed_to_byte(arr, s), 1, -1)  # (O, kH, kW, 3)
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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def colorbar(scale: float, width: int = 160, height: int = 10, *, font_size: int = 11,
             background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """A horizontal bar of :func:`signed_to_rgb`'s colours from ``-scale`` to ``+scale``, its ends and 0 written.

    Shape:
        - Output: (height + font_size + 6, width + 2·margin, 3) ``uint8``.

    Examples:
        >>> bar = colorbar(2.0, width=101, height=4)
        >>> bar[0, bar.shape[1] // 2].tolist()  # the middle of the bar is 0: white
        [255, 255, 255]
    """
    from PIL import Image, ImageDraw

    font = _font(font_size)
    ticks = [f"{-scale:.3g}", "0", f"{scale:.3g}"]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin = max(int(probe.textlength(t, font=font)) for t in ticks) // 2 + 2
    values = np.linspace(-scale, scale, width)
    strip = signed_to_rgb(np.broadcast_to(values, (height, width)), scale=scale)
    fill = tuple(int(c) for c in _check_color(background, "background"))
    image = Image.new("RGB", (width + 2 * margin, height + font_size + 6), fill)
    image.paste(Image.fromarray(np.ascontiguousarray(strip)), (margin, 0))
    draw = ImageDraw.Draw(image)
    for text, x in zip(ticks, (margin, margin + width // 2, margin + width - 1)):
        draw.line([x, height, x, height + 2], fill=(60, 60, 60))
        draw.text((x, height + 3), text, fill=(30, 30, 30), font=font, anchor="mt")
    return np.asarray(image, dtype=np.uint8).copy()


def annotated_grid(
    tiles: np.ndarray,
    ncols: int,
    *,
    zoom: int = 1,
    gap: int = 4,
    labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    scale: float | None = None,
    font_size: int = 11,
    background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """Tiles in a grid with written labels, on a plain background (no filler tiles), and an optional colour bar.

    Unlike :func:`tile_images`, an incomplete last row stays empty (nothing that could be mistaken for a
    dead channel) and every tile can carry a label above it (``labels``, e.g. channel numbers); rows and
    columns can be named (``row_labels`` at the left, ``col_labels`` on top, e.g. filters and bands).
    Tiles are enlarged by ``zoom`` (nearest neighbour) and never resized otherwise, so grids drawn with
    the same ``zoom`` show their layers at their true relative resolution.

    Args:
        tiles: (T, h, w, 3) ``uint8`` tiles, filled row by row.
        ncols: Tiles per row.
        zoom: Integer enlargement of each tile.
        gap: Pixels between tiles.
        labels: One text per tile, written above it.
        row_labels: One text per row, written left of it.
        col_labels: One text per column, written above it.
        scale: If given, a :func:`colorbar` from ``-scale`` to ``+scale`` is added under the grid.
        font_size: Text size in pixels.
        background: RGB of the background.

    Shape:
        - Output: (H, W, 3) ``uint8``.

    Examples:
        >>> grid = annotated_grid(np.zeros((3, 2, 2, 3), np.uint8), ncols=2, gap=1, background=(9, 9, 9))
        >>> grid.shape, grid[-1, -1].tolist()  # the empty 4th cell is background, not a black tile
        ((5, 5, 3), [9, 9, 9])
    """
    from PIL import Image, ImageDraw

    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[-1] != 3:
        shape = getattr(tiles, "shape", None)
        raise ShapeError(f"tiles must be a uint8 array of shape (T, h, w, 3). Received shape {shape}.")
    count = tiles.shape[0]
    if count == 0:
        raise ShapeError("tiles must hold at least one tile. Received 0 tiles.")
    ncols = min(check_int(ncols, "ncols"), count)
    zoom, gap = check_int(zoom, "zoom"), check_int(gap, "gap", minimum=0)
    rows = math.ceil(count / ncols)
    for name, texts, size in (("labels", labels, count), ("row_labels", row_labels, rows),
                              ("col_labels", col_labels, ncols)):
        if texts is not None and len(texts) != size:
            raise ShapeError(f"{name} must hold {size} texts. Received {len(texts)}.")
    color = tuple(int(c) for c in _check_color(background, "background"))
    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    h, w = tiles.shape[1] * zoom, tiles.shape[2] * zoom
    label_h = font_size + 3 if labels is not None else 0
    left = max((int(probe.textlength(t, font=font)) for t in row_labels), default=0) + 10 if row_labels else 0
    top = font_size + 4 if col_labels is not None else 0
    cell_w = max(w, max((int(probe.textlength(t, font=font)) for t in (labels or col_labels or ())), default=0) + 2)
    cell_h = h + label_h
    width = left + ncols * cell_w + (ncols - 1) * gap
    height = top + rows * cell_h + (rows - 1) * gap
    bar = colorbar(scale, width=min(240, max(80, width - 40)), font_size=font_size, background=color) \
        if scale is not None else None
    total_h = height + (bar.shape[0] + 8 if bar is not None else 0)
    total_w = max(width, bar.shape[1] if bar is not None else 0)
    image = Image.new("RGB", (total_w, total_h), color)
    draw = ImageDraw.Draw(image)
    ink = (30, 30, 30)
    for c, text in enumerate(col_labels or ()):
        draw.text((left + c * (cell_w + gap) + cell_w // 2, 0), text, fill=ink, font=font, anchor="mt")
    for i in range(count):
        r, c = divmod(i, ncols)
        x = left + c * (cell_w + gap) + (cell_w - w) // 2
        y = top + r * (cell_h + gap)
        if labels is not None:
            draw.text((x + w // 2, y), labels[i], fill=ink, font=font, anchor="mt")
        tile = tiles[i].repeat(zoom, axis=0).repeat(zoom, axis=1) if zoom > 1 else tiles[i]
        image.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y + label_h))
    for r, text in enumerate(row_labels or ()):
        draw.text((left - 6, top + r * (cell_h + gap) + label_h + h // 2), text, fill=ink, font=font, anchor="rm")
    if bar is not None:
        image.paste(Image.fromarray(bar), (0, height + 8))
    return np.asarray(image, dtype=np.uint8).copy()
