"""Pixel-wise output → label map → coloured mask → overlay on the image, with a fixed palette and legend.

The answer to "how does a softmax layer turn N channels into an image of labels?": it does not. The
network outputs one score per class and pixel (N, C, H, W); :func:`probabilities_to_labels` takes the
arg-max over the class axis (softmax is monotone, so logits and probabilities give the same labels);
:func:`colorize` paints class ``k`` with colour ``k`` of a fixed palette; :func:`overlay` blends that
mask onto the image; :func:`legend` draws the key.

Conventions, shared by every function here:

* **Layout.** Rendered images are NumPy ``uint8`` arrays, channels last: ``(..., H, W, 3)``, the layout
  Pillow, matplotlib and image files use. Inputs may be torch tensors or NumPy arrays, torch layout
  for images: ``(C, H, W)`` or ``(N, C, H, W)``.
* **Palette.** :data:`DEFAULT_PALETTE` has 20 colours (matplotlib's ``tab10`` followed by its light
  companions of ``tab20``). Class ``k`` always gets ``DEFAULT_PALETTE[k % 20]``, whatever other classes
  are present, so the same class has the same colour in every image of a run. A custom ``palette``
  (a sequence of RGB triples) is never cycled: a label beyond it is an error.
* **Ignored pixels.** ``ignore_index`` marks pixels outside every class (unlabelled, clouds, padding).
  :func:`colorize` paints them ``ignore_color`` (default :data:`UNLABELLED_COLOR`); :func:`overlay` leaves them
  byte-identical to the image's own RGB rendering (:func:`image_to_rgb`).
* **No data, one colour everywhere.** A pixel without data — NaN or ±inf in a band :func:`image_to_rgb` draws, or
  ``valid`` false where a function takes ``valid`` — is :data:`NODATA_COLOR` in every picture of cnnkit: the
  composite, the overlay, the coloured mask, the panels of :mod:`cnnkit.render.panels` and the legend's "no data"
  row. A pixel with data but no label is :data:`UNLABELLED_COLOR`. Neither colour is one of the palette's, nor
  the other's, so no mask or panel can confuse a class, an unlabelled pixel and a missing one. Where the image
  itself shows (the composite, an overlay's unlabelled pixels) its own colours include white and black: a saturated
  cloud looks like no data there; the panels are the pictures that tell them apart.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cnnkit._checks import check_choice
from cnnkit._tensors import argmax
from cnnkit.errors import ArgumentTypeError, ShapeError
from cnnkit.masking.batch import IGNORE_INDEX

__all__ = [
    "DEFAULT_PALETTE",
    "NODATA_COLOR",
    "UNLABELLED_COLOR",
    "colorize",
    "default_palette",
    "image_to_rgb",
    "legend",
    "overlay",
    "probabilities_to_labels",
    "save_png",
]

#: The fixed qualitative palette: ``tab10`` (indices 0–9) then the light ``tab20`` companions (10–19).
DEFAULT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)

NODATA_COLOR: tuple[int, int, int] = (255, 255, 255)
"""Pixels without data (NaN in the image, or validity 0), in every picture: white, the page shows through."""
UNLABELLED_COLOR: tuple[int, int, int] = (0, 0, 0)
"""Pixels with data but without a label (the ignore index), in every picture: black."""


def default_palette(num_classes: int) -> np.ndarray:
    """The colours of classes ``0 … num_classes − 1`` under the default palette, as a (K, 3) uint8 array.

    Class ``k`` gets ``DEFAULT_PALETTE[k % 20]``.

    Examples:
        >>> default_palette(2).tolist()
        [[31, 119, 180], [255, 127, 14]]
        >>> (default_palette(21)[20] == default_palette(1)[0]).all()
        np.True_
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ShapeError(f"num_classes must be an integer >= 0. Received num_classes={num_classes!r}.")
    base = np.asarray(DEFAULT_PALETTE, dtype=np.uint8)
    return base[np.arange(num_classes) % len(base)]


# -- helpers ---------------------------------------------------------------------------------------


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    raise ArgumentTypeError(f"{name} must be a torch.Tensor or a numpy.ndarray. Received {type(value).__name__}.")


def _check_color(color: Any, name: str) -> np.ndarray:
    arr = np.asarray(color)
    if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255:
        raise ShapeError(f"{name} must be 3 integers in [0, 255] (R, G, B). Received {name}={color!r}.")
    return arr.astype(np.uint8)


def _palette_array(palette: Any) -> np.ndarray | None:
    """None for the default (cycled) palette, else a validated (K, 3) uint8 array."""
    if palette is None:
        return None
    arr = np.asarray(palette)
    if (arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.integer)
            or arr.min() < 0 or arr.max() > 255):
        shape = arr.shape if arr.ndim else palette
        raise ShapeError(
            "palette must be a non-empty sequence of RGB triples of integers in [0, 255] (shape (K, 3)). "
            f"Received palette with shape {shape}."
        )
    return arr.astype(np.uint8)


def _check_labels(labels: Any, ignore_index: int | None, name: str = "labels") -> np.ndarray:
    arr = _to_numpy(labels, name)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ShapeError(
            f"{name} must hold integer class indices (use probabilities_to_labels on scores first). "
            f"Received {name} with dtype {arr.dtype}."
        )
    if arr.ndim < 2:
        raise ShapeError(f"{name} must have shape (..., H, W). Received {name} with shape {tuple(arr.shape)}.")
    if arr.size == 0:
        raise ShapeError(f"{name} must not be empty. Received {name} with shape {tuple(arr.shape)}.")
    valid = arr if ignore_index is None else arr[arr != ignore_index]
    if valid.size and valid.min() < 0:
        raise ShapeError(
            f"{name} must be >= 0 except for ignore_index={ignore_index!r}. Received a label {int(valid.min())}."
        )
    return arr


def _valid_mask(valid: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``valid`` as a bool array of ``shape`` (True where a pixel has data); everywhere when ``valid`` is None."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    arr = _to_numpy(valid, "valid")
    if arr.shape != shape:
        raise ShapeError(f"valid must have the labels' shape {shape}. Received valid with shape {arr.shape}.")
    return arr.astype(bool)


def _lookup(labels: np.ndarray, palette: np.ndarray | None, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Colours (..., 3) and the boolean "labelled" mask (...) for integer labels."""
    labelled = np.ones(labels.shape, dtype=bool) if ignore_index is None else labels != ignore_index
    index = np.where(labelled, labels, 0).astype(np.int64)
    if palette is None:
        table = np.asarray(DEFAULT_PALETTE, dtype=np.uint8)
        index = index % len(table)
    else:
        table = palette
        if labelled.any() and index[labelled].max() >= len(table):
            raise ShapeError(
                f"every label must have a colour in palette (a custom palette is not cycled). Received label "
                f"{int(index[labelled].max())} with a palette of {len(table)} colours."
            )
    return table[index], labelled


# -- scores → labels -------------------------------------------------------------------------------


def probabilities_to_labels(
    scores: Tensor,
    dim: int = 1,
    *,
    threshold: float | None = None,
    from_logits: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Label map from per-class scores: the arg-max over the class axis (the "softmax layer" step).

    Softmax is monotone, so logits and softmax probabilities give the same labels. With ``threshold``,
    pixels whose top class probability is below it get ``ignore_index`` ("not sure"); the probability
    is ``softmax(scores)`` when ``from_logits`` is True and ``scores`` itself otherwise (which must then
    be probabilities: in [0, 1] and summing to 1 along ``dim``). Ties go to the lowest class index.

    Args:
        scores: Logits or probabilities, e.g. (N, C, H, W) or (N, C, T, H, W) — any floating tensor.
        dim: The class axis (default 1, torch layout).
        threshold: Optional minimum top-class probability in (0, 1].
        from_logits: Whether ``scores`` are logits (True, default) or probabilities.
        ignore_index: The label given to pixels below ``threshold`` (default -100, as in
            ``torch.nn.functional.cross_entropy``).

    Shape:
        - scores: (N, C, *spatial) for ``dim=1``.
        - Output: ``scores.shape`` without ``dim``, dtype ``torch.long``.

    Examples:
        >>> logits = torch.tensor([[[[2.0, 0.0]], [[1.0, 0.1]], [[0.0, 0.2]]]])  # (1, 3, 1, 2)
        >>> probabilities_to_labels(logits)
        tensor([[[0, 2]]])
        >>> probabilities_to_labels(logits, threshold=0.5)  # the second pixel is too uncertain
        tensor([[[   0, -100]]])
    """
    if not isinstance(scores, Tensor):
        raise ArgumentTypeError(f"scores must be a torch.Tensor. Received {type(scores).__name__}.")
    if not scores.is_floating_point():
        raise ShapeError(f"scores must be a floating-point tensor of logits or probabilities. Received {scores.dtype}.")
    if scores.dim() == 0 or not -scores.dim() <= dim < scores.dim():
        raise ShapeError(
            f"dim must index an axis of scores. Received dim={dim} for scores of shape {tuple(scores.shape)}."
        )
    if scores.numel() == 0:
        raise ShapeError(f"scores must not be empty. Received scores of shape {tuple(scores.shape)}.")
    if torch.isnan(scores).any():
        raise ShapeError("scores must not contain NaN (the arg-max of NaN is undefined). Received scores with NaN.")
    if not from_logits:
        total = scores.sum(dim)
        if scores.min() < 0 or scores.max() > 1 or not torch.allclose(total, torch.ones_like(total), atol=1e-3):
            raise ShapeError(
                f"with from_logits=False, scores must be probabilities in [0, 1] summing to 1 along dim={dim}. "
                f"Received values in [{scores.min().item():.4g}, {scores.max().item():.4g}] with sums in "
                f"[{total.min().item():.4g}, {total.max().item():.4g}]."
            )
    labels = argmax(scores, dim)
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ShapeError(f"threshold must be a number in (0, 1]. Received threshold={threshold!r}.")
        probs = scores.softmax(dim) if from_logits else scores
        labels = torch.where(probs.amax(dim) >= threshold, labels, torch.full_like(labels, ignore_index))
    return labels


# -- labels → colours ------------------------------------------------------------------------------


def colorize(
    labels: Tensor | np.ndarray,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    ignore_index: int | None = None,
    ignore_color: Sequence[int] = UNLABELLED_COLOR,
    *,
    valid: Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Colour mask of a label map: class ``k`` → colour ``k`` of the palette.

    Args:
        labels: Integer class indices (..., H, W), e.g. (H, W) or (N, H, W).
        palette: RGB triples; default :data:`DEFAULT_PALETTE`, cycled (class ``k`` → colour ``k % 20``).
            A custom palette must cover every label present.
        ignore_index: Label of pixels outside every class; they get ``ignore_color``.
        ignore_color: RGB of ignored pixels (default :data:`UNLABELLED_COLOR`; pass :data:`NODATA_COLOR` where the
            ignore index means "no data", as in a prediction's label map).
        valid: (..., H, W) truthy where the pixel has data; the others are :data:`NODATA_COLOR` (no data wins over
            a label). Default: data everywhere.

    Shape:
        - labels: (..., H, W)
        - Output: (..., H, W, 3), ``uint8``, channels last.

    Examples:
        >>> colorize(torch.tensor([[0, 3], [-1, 3]]), ignore_index=-1).tolist()
        [[[31, 119, 180], [214, 39, 40]], [[0, 0, 0], [214, 39, 40]]]
        >>> colorize(np.array([[1, 0]]), palette=[(0, 0, 0), (255, 255, 255)])[0, 0].tolist()
        [255, 255, 255]
    """
    arr = _check_labels(labels, ignore_index)
    colors, labelled = _lookup(arr, _palette_array(palette), ignore_index)
    colors[~labelled] = _check_color(ignore_color, "ignore_color")
    colors[~_valid_mask(valid, arr.shape)] = NODATA_COLOR
    return colors


# -- images → RGB ----------------------------------------------------------------------------------

_NORMALIZE = ("minmax", "percentile", "none")


def _resolve_bands(bands: Sequence[int] | None, channels: int) -> tuple[int, ...]:
    if bands is None:
        if channels >= 3:
            return (0, 1, 2)
        if channels == 1:
            return (0, 0, 0)
        raise ShapeError(
            f"bands must be given for an image with {channels} channels (3 band indices, or 1 for grey). "
            "Received bands=None."
        )
    try:
        picked = tuple(int(b) for b in bands)
    except TypeError:
        picked = ()
    if (len(picked) not in (1, 3) or any(isinstance(b, bool) for b in bands)
            or any(not 0 <= b < channels for b in picked)):
        raise ShapeError(
            f"bands must be 1 or 3 channel indices in [0, {channels - 1}] (R, G, B, or one for grey). "
            f"Received bands={bands!r} for an image with {channels} channels."
        )
    return picked * 3 if len(picked) == 1 else picked


def image_to_rgb(
    image: Tensor | np.ndarray,
    bands: Sequence[int] | None = None,
    *,
    normalize: str = "minmax",
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """An image (any number of bands) as displayable ``uint8`` RGB, channels last.

    Three bands are picked (R, G, B) — or one, shown in grey — then each is mapped to [0, 255]:

    * ``uint8`` images are taken as they are (no normalisation), so RGB photos render unchanged;
    * ``"minmax"`` (default): per image and per band, ``round(255 · (x − min) / (max − min))``;
    * ``"percentile"``: per image and per band, a linear stretch of the ``percentiles`` (default 2–98 %,
      the usual satellite-image stretch; robust to clouds and hot pixels), clipped to [0, 255];
    * ``"none"``: floats already in [0, 1], ``round(255 · x)`` clipped.

    A constant band renders as 0. Missing pixels (NaN or ±inf, as :func:`cnnkit.data.missing_pixels` counts them)
    are left out of the statistics, and a pixel missing in any band drawn renders as :data:`NODATA_COLOR`.

    Args:
        image: (C, H, W) or (N, C, H, W), torch layout.
        bands: Channel indices for R, G, B, or a single index for grey. Default: (0, 1, 2) when
            C ≥ 3, channel 0 in grey when C == 1.
        normalize: ``"minmax"``, ``"percentile"`` or ``"none"`` (ignored for ``uint8`` images).
        percentiles: (low, high) for ``"percentile"``.

    Shape:
        - image: (C, H, W) or (N, C, H, W)
        - Output: (H, W, 3) or (N, H, W, 3), ``uint8``.

    Examples:
        >>> image_to_rgb(torch.tensor([[[0.0, 0.5, 2.0]]])).tolist()  # one band → grey, min–max stretch
        [[[0, 0, 0], [64, 64, 64], [255, 255, 255]]]
        >>> image_to_rgb(torch.tensor([[[0.0, float("nan"), 2.0]]]))[0, 1].tolist()  # no data: NODATA_COLOR
        [255, 255, 255]
    """
    arr = _to_numpy(image, "image")
    if arr.ndim not in (3, 4):
        raise ShapeError(f"image must have shape (C, H, W) or (N, C, H, W). Received image with shape {arr.shape}.")
    if arr.size == 0:
        raise ShapeError(f"image must not be empty. Received image with shape {arr.shape}.")
    check_choice(normalize, _NORMALIZE, "normalize")
    batched = arr.ndim == 4
    if not batched:
        arr = arr[None]
    picked = arr[:, list(_resolve_bands(bands, arr.shape[1]))]  # (N, 3, H, W)
    if picked.dtype == np.uint8:
        rgb = picked
    else:
        if picked.dtype == np.bool_ or not np.issubdtype(picked.dtype, np.number):
            raise ShapeError(f"image must hold numbers. Received image with dtype {arr.dtype}.")
        x = picked.astype(np.float64)
        x[~np.isfinite(x)] = np.nan  # ±inf is missing too: left out of the stretch, not stretching it to nothing
        if normalize == "none":
            np.multiply(x, 255.0, out=x)
        else:
            if normalize == "percentile":
                low, high = percentiles
                if not 0 <= low < high <= 100:
                    raise ShapeError(
                        "percentiles must be (low, high) with 0 <= low < high <= 100. "
                        f"Received percentiles={percentiles!r}."
                    )
            with warnings.catch_warnings():  # an all-NaN band is allowed: it renders as 0
                warnings.simplefilter("ignore", RuntimeWarning)
                if normalize == "minmax":
                    lo = np.nanmin(x, axis=(2, 3), keepdims=True)
                    hi = np.nanmax(x, axis=(2, 3), keepdims=True)
                else:
                    lo = np.nanpercentile(x, low, axis=(2, 3), keepdims=True)
                    hi = np.nanpercentile(x, high, axis=(2, 3), keepdims=True)
            lo = np.nan_to_num(lo)
            span = np.nan_to_num(hi) - lo
            # 255 · (x − lo) / span, 0 where the band is flat — in place, the same operations in the same order (a
            # preview of 1024² × 3 in float64 is 25 MB a temporary: this keeps one, not five)
            np.subtract(x, lo, out=x)
            np.multiply(x, 255.0, out=x)
            np.divide(x, np.where(span > 0, span, 1.0), out=x)
            np.multiply(x, span > 0, out=x)
        np.nan_to_num(x, copy=False, nan=0.0)
        rgb = np.clip(np.round(x, out=x), 0, 255, out=x).astype(np.uint8)
    rgb = np.ascontiguousarray(np.moveaxis(rgb, 1, -1))
    rgb[_missing(picked)] = NODATA_COLOR
    return rgb if batched else rgb[0]


def _missing(picked: np.ndarray) -> np.ndarray:
    """(..., H, W) True where any of the drawn bands ``picked`` (..., 3, H, W) is NaN or ±inf."""
    if not np.issubdtype(picked.dtype, np.floating):
        return np.zeros(picked.shape[:-3] + picked.shape[-2:], dtype=bool)
    return ~np.isfinite(picked).all(axis=-3)


def overlay(
    image: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    alpha: float = 0.5,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    ignore_index: int | None = None,
    bands: Sequence[int] | None = None,
    *,
    normalize: str = "minmax",
    valid: Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """Blend the colour mask of ``labels`` onto ``image``; ignored pixels stay exactly as the image.

    The image is first rendered by :func:`image_to_rgb` (``bands``, ``normalize``); a labelled pixel
    becomes ``round((1 − alpha) · rgb + alpha · colour)``; a pixel with ``ignore_index`` keeps the
    rendered ``rgb`` bytes unchanged. A pixel without data (NaN or ±inf in a band drawn, or ``valid`` false) is
    :data:`NODATA_COLOR`, whatever its label.

    Args:
        image: (C, H, W) or (N, C, H, W); any number of bands (see :func:`image_to_rgb`).
        labels: (H, W) or (N, H, W) integer labels of the same spatial size.
        alpha: Opacity of the mask in [0, 1].
        palette, ignore_index: As in :func:`colorize`.
        bands: R, G, B channel indices (or one for grey); default first three, or grey for 1 channel.
        normalize: Band normalisation of float images (:func:`image_to_rgb`).
        valid: (H, W) or (N, H, W) truthy where the pixel has data (default: where the bands drawn are finite).

    Shape:
        - Output: (H, W, 3) or (N, H, W, 3), ``uint8``.

    Examples:
        >>> img = torch.full((3, 1, 2), 100, dtype=torch.uint8)
        >>> overlay(img, torch.tensor([[1, -1]]), alpha=0.5, ignore_index=-1).tolist()
        [[[178, 114, 57], [100, 100, 100]]]
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ShapeError(f"alpha must be a number in [0, 1]. Received alpha={alpha!r}.")
    rgb = image_to_rgb(image, bands, normalize=normalize)
    lab = _check_labels(labels, ignore_index)
    if lab.shape != rgb.shape[:-1]:
        raise ShapeError(
            f"labels must have the image's batch and spatial shape {rgb.shape[:-1]}. "
            f"Received labels with shape {lab.shape} for an image with shape {np.shape(image)}."
        )
    colors, labelled = _lookup(lab, _palette_array(palette), ignore_index)
    blended = np.round((1.0 - alpha) * rgb.astype(np.float64) + alpha * colors.astype(np.float64))
    out = rgb.copy()
    out[labelled] = np.clip(blended, 0, 255).astype(np.uint8)[labelled]
    arr = _to_numpy(image, "image")  # no data wins over a label
    out[_missing(arr[..., list(_resolve_bands(bands, arr.shape[-3])), :, :])] = NODATA_COLOR
    out[~_valid_mask(valid, lab.shape)] = NODATA_COLOR
    return out


# -- legend and files ------------------------------------------------------------------------------


def legend(
    class_names: Sequence[str] | Mapping[int, str],
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    *,
    ignore_name: str | None = None,
    ignore_color: Sequence[int] = UNLABELLED_COLOR,
    nodata_name: str | None = None,
    swatch: int = 14,
) -> np.ndarray:
    """A small image listing each class's colour and name (one row per class), for a PNG next to a mask.

    Args:
        class_names: Names by class index: a sequence (class ``k`` is ``class_names[k]``) or a mapping
            ``{k: name}`` (to list only some classes, with the colours they have in :func:`colorize`).
        palette: As in :func:`colorize`.
        ignore_name: If given, a row with ``ignore_color`` and this name (e.g. ``"unlabelled"``).
        ignore_color: RGB of the ignore row (default :data:`UNLABELLED_COLOR`).
        nodata_name: If given, a last row with :data:`NODATA_COLOR` and this name (e.g. ``"no data"``).
        swatch: Side of each colour square, in pixels (>= 4).

    Shape:
        - Output: (H, W, 3) ``uint8`` on a white background; H = rows · (swatch + 4) + 4.

    Examples:
        >>> img = legend(["background", "road", "car"])
        >>> img.shape[0], img.dtype.name
        (58, 'uint8')
        >>> img[4, 4].tolist(), img[4 + 18, 4].tolist()  # top-left pixel of the first two swatches
        ([31, 119, 180], [255, 127, 14])
    """
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(class_names, Mapping):
        entries = sorted(class_names.items())
    elif isinstance(class_names, Sequence) and not isinstance(class_names, (str, bytes)):
        entries = list(enumerate(class_names))
    else:
        raise ArgumentTypeError(
            f"class_names must be a sequence or a mapping of names. Received {type(class_names).__name__}.")
    if not entries and ignore_name is None and nodata_name is None:
        raise ShapeError("class_names must name at least one class. Received an empty class_names.")
    if not isinstance(swatch, int) or swatch < 4:
        raise ShapeError(f"swatch must be an integer >= 4. Received swatch={swatch!r}.")
    for k, name in entries:
        if not isinstance(k, int) or k < 0 or not isinstance(name, str):
            raise ShapeError(f"class_names must map class indices >= 0 to strings. Received {k!r}: {name!r}.")
    if entries:
        colors, _ = _lookup(np.asarray([k for k, _ in entries]), _palette_array(palette), None)
    else:
        colors = np.zeros((0, 3), dtype=np.uint8)
    rows = [(tuple(int(c) for c in col), f"{k}: {name}") for (k, name), col in zip(entries, colors)]
    if ignore_name is not None:
        rows.append((tuple(int(c) for c in _check_color(ignore_color, "ignore_color")), str(ignore_name)))
    if nodata_name is not None:
        rows.append((NODATA_COLOR, str(nodata_name)))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(int(probe.textlength(text, font=font)) for _, text in rows)
    row_h = swatch + 4
    image = Image.new("RGB", (4 + swatch + 6 + text_width + 4, 4 + row_h * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for i, (color, text) in enumerate(rows):
        top = 4 + i * row_h
        draw.rectangle([4, top, 4 + swatch - 1, top + swatch - 1], fill=color, outline=UNLABELLED_COLOR
                       if color == (255, 255, 255) else None)  # a white swatch framed on the white page
        draw.text((4 + swatch + 6, top + swatch // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(image, dtype=np.uint8).copy()


def save_png(array: Tensor | np.ndarray, path: str | Path) -> Path:
    """Write a ``uint8`` image — (H, W), (H, W, 3) or (H, W, 4), channels last — to a PNG file.

    Args:
        array: The image, e.g. from :func:`colorize`, :func:`overlay` or :func:`~cnnkit.render.filter_grid`.
        path: Destination file; parent folders must exist.

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Examples:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = save_png(colorize(np.array([[0, 1]])), os.path.join(d, "mask.png"))
        ...     np.asarray(Image.open(p)).tolist()
        [[[31, 119, 180], [255, 127, 14]]]
    """
    from PIL import Image

    arr = _to_numpy(array, "array")
    if arr.dtype != np.uint8:
        raise ShapeError(
            "array must be uint8 (render it with colorize, overlay or a grid function first). "
            f"Received dtype {arr.dtype}."
        )
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))) or arr.size == 0:
        raise ShapeError(
            f"array must have shape (H, W), (H, W, 3) or (H, W, 4), channels last. Received shape {arr.shape}."
        )
    path = Path(path)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")
    return path
