"""Pictures of image time series with clouds: valid share per date, pixel band profiles, frame strips, label maps.

Each function returns a matplotlib ``Figure`` (Agg canvas, no display needed) for a
:class:`~cnnkit.report.ReportSection`. Inputs are one series ``(T, C, H, W)`` with its validity
``(T, H, W)`` (False under clouds) and label maps ``(H, W)`` with −100 where there is no label.

Label panels are opaque: class ``k`` is painted with ``palette[k]`` exactly (the legend's colour, no
blending with the image), unlabelled pixels with :data:`NO_LABEL_COLOR`, which the legend lists too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cnnkit.errors import ShapeError
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.render.labels import DEFAULT_PALETTE, colorize, image_to_rgb

__all__ = ["NO_LABEL_COLOR", "band_profiles_figure", "frame_strip_figure", "label_maps_figure",
           "pick_profile_pixels", "valid_share_figure"]

NO_LABEL_COLOR = (235, 235, 235)
"""Colour of pixels without a label in the label panels (listed in their legend as "no label")."""

CLOUD_COLOR = (255, 255, 255)
"""Colour of cloudy (invalid) pixels in the frame strip."""


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _numpy(value, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().to("cpu").numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ShapeError(f"{name} must be a tensor or a NumPy array. Received {type(value).__name__}.")


def valid_share_figure(valid_shares: Sequence[Sequence[float]], names: Sequence[str] | None = None,
                       max_lines: int = 12):
    """Share of valid (cloud-free) pixels of every date, one line per series and their mean per date index.

    Args:
        valid_shares: For each series, the share of its pixels holding data on each of its dates.
        names: A name per series for the legend (only the first ``max_lines`` are drawn).
        max_lines: Series drawn as lines.
    """
    if not valid_shares:
        raise ShapeError("valid_shares must hold at least one series. Received an empty list.")
    fig = _figure(10, 3.0)
    left, right = fig.subplots(1, 2, width_ratios=(2, 1))
    for i, shares in enumerate(valid_shares[:max_lines]):
        label = names[i] if names is not None else None
        left.plot(range(1, len(shares) + 1), [100 * s for s in shares], marker=".", lw=0.8, alpha=0.7, label=label)
    steps = max(len(s) for s in valid_shares)
    mean = [100 * float(np.mean([s[t] for s in valid_shares if len(s) > t])) for t in range(steps)]
    left.plot(range(1, steps + 1), mean, color="black", lw=2, label="mean")
    left.set(xlabel="date (index in the series)", ylabel="valid pixels (%)", ylim=(0, 100),
             title="valid (cloud-free) share of each date")
    if names is not None and len(valid_shares) <= 8:
        left.legend(fontsize=7, ncols=2)
    flat = [100 * v for s in valid_shares for v in s]
    right.hist(flat, bins=20, range=(0, 100), color="#4c72b0")
    right.set(xlabel="valid pixels (%)", ylabel="dates", title=f"all {len(flat)} dates")
    return fig


def pick_profile_pixels(label: Tensor, valid: Tensor, per_class: int = 1, num_classes: int | None = None,
                        seed: int = 0) -> list[tuple[int, int, int]]:
    """``(class, y, x)`` of up to ``per_class`` labelled pixels of every class present in ``label``, preferring
    pixels with both cloudy and clear dates (so the profile shows both)."""
    label, valid = torch.as_tensor(label), torch.as_tensor(valid)
    g = torch.Generator().manual_seed(seed)
    mixed = (~valid).any(0) & valid.sum(0).ge(2)
    chosen = []
    classes = range(num_classes) if num_classes is not None else sorted(set(label[label != IGNORE_INDEX].tolist()))
    for k in classes:
        for pool in ((label == k) & mixed, label == k):
            ys, xs = torch.nonzero(pool, as_tuple=True)
            if len(ys):
                order = torch.randperm(len(ys), generator=g)[:per_class]
                chosen += [(int(k), int(ys[i]), int(xs[i])) for i in order]
                break
    return chosen


def band_profiles_figure(series: Tensor, valid: Tensor, pixels: Sequence[tuple[int, int, int]],
                         class_names: Sequence[str], bands: Sequence[int] = (0, 1),
                         palette: Sequence[Sequence[int]] = DEFAULT_PALETTE, dates: Sequence[float] | None = None):
    """Band values over time of a few pixels, one panel per pixel (titled by its class), cloudy dates marked.

    A cloudy date has no value: it is drawn as a grey band behind the plot and a cross on the time axis;
    the lines join the valid dates only (what the recurrence sees).

    Args:
        series: (T, C, H, W) (NaN allowed under clouds).
        valid: (T, H, W) bool.
        pixels: ``(class, y, x)`` triples, e.g. from :func:`pick_profile_pixels`.
        class_names: A name per class.
        bands: Bands drawn (indices into C).
        palette: Colour per class (the panel's frame and title).
        dates: Position of every date on the time axis (default 1 … T).
    """
    series, valid = _numpy(series, "series"), _numpy(valid, "valid").astype(bool)
    if series.ndim != 4 or valid.shape != (series.shape[0], *series.shape[2:]):
        raise ShapeError(f"series must be (T, C, H, W) and valid (T, H, W). Received {series.shape} and {valid.shape}.")
    if not pixels:
        raise ShapeError("pixels must name at least one (class, y, x). Received an empty list.")
    t = np.asarray(dates if dates is not None else np.arange(1, series.shape[0] + 1), dtype=float)
    cols = min(len(pixels), 5)
    rows = (len(pixels) + cols - 1) // cols
    fig = _figure(2.3 * cols, 2.0 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharey=True, squeeze=False)).ravel()
    styles = ("-", "--", ":", "-.")
    for ax, (k, y, x) in zip(axes, pixels):
        ok = valid[:, y, x]
        for date in t[~ok]:
            ax.axvspan(date - 0.004 * (t.max() - t.min() + 1), date + 0.004 * (t.max() - t.min() + 1),
                       color="0.85", lw=0)
        ax.plot(t[~ok], np.full((~ok).sum(), 0.0), "x", color="0.5", ms=4, transform=ax.get_xaxis_transform())
        for j, b in enumerate(bands):
            ax.plot(t[ok], series[ok, b, y, x], styles[j % len(styles)], marker=".", ms=3,
                    color=np.asarray(palette[k % len(palette)]) / 255, label=f"band {b}")
        ax.set_title(f"{class_names[k]} ({y}, {x}): {int((~ok).sum())}/{len(ok)} cloudy", fontsize=8)
        ax.tick_params(labelsize=7)
        for spine in ax.spines.values():
            spine.set_edgecolor(np.asarray(palette[k % len(palette)]) / 255)
            spine.set_linewidth(2)
    for ax in axes[len(pixels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.supxlabel("date" if dates is not None else "date (index)", fontsize=8)
    return fig


def frame_strip_figure(series: Tensor, valid: Tensor, bands: Sequence[int] | None = None, max_frames: int = 12):
    """A scene's dates side by side (top row: the bands, clouds painted white) over their cloud masks
    (bottom row: black = cloud, white = valid), each titled with its valid share.

    Args:
        series: (T, C, H, W) (NaN allowed under clouds).
        valid: (T, H, W) bool.
        bands: R, G, B band indices (or one, grey) for :func:`~cnnkit.render.image_to_rgb`.
        max_frames: Dates shown (evenly spread over the series when it has more).
    """
    series, valid = torch.as_tensor(series), torch.as_tensor(valid).bool()
    steps = series.shape[0]
    shown = sorted({round(float(v)) for v in np.linspace(0, steps - 1, min(steps, max_frames))})
    fig = _figure(1.15 * len(shown) + 0.4, 2.7)
    axes = fig.subplots(2, len(shown), squeeze=False)
    clean = torch.where(valid[:, None], series, torch.full((), float("nan")))
    # one stretch for every date, so that brightness can be compared along the strip
    if bands is None:
        bands = (0, 1, 2) if series.shape[1] >= 3 else (0,)
    stacked = clean[:, list(bands)].permute(1, 0, 2, 3).reshape(len(bands), steps * series.shape[2], series.shape[3])
    rgb = image_to_rgb(stacked, bands=tuple(range(len(bands))) if len(bands) == 3 else (0,),
                       normalize="percentile").reshape(steps, series.shape[2], series.shape[3], 3)
    for col, t in enumerate(shown):
        frame = rgb[t].copy()
        frame[~valid[t].numpy()] = CLOUD_COLOR
        axes[0, col].imshow(frame, interpolation="nearest")
        axes[0, col].set_title(f"date {t + 1}\n{100 * float(valid[t].float().mean()):.0f} % valid", fontsize=7)
        axes[1, col].imshow(valid[t].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("bands", fontsize=8)
    axes[1, 0].set_ylabel("valid", fontsize=8)
    return fig


def label_maps_figure(panels: Sequence[tuple[str, Tensor]], class_names: Sequence[str], rows: int = 1,
                      palette: Sequence[Sequence[int]] = DEFAULT_PALETTE):
    """Label maps side by side as opaque colour panels, with one legend whose colours are the panels' colours.

    Args:
        panels: ``(title, label (H, W))`` pairs, in reading order (``rows`` rows).
        class_names: A name per class.
        rows: Rows of panels.
        palette: Colour per class (RGB 0–255); unlabelled (−100) pixels are :data:`NO_LABEL_COLOR`.
    """
    from matplotlib.patches import Patch

    if not panels:
        raise ShapeError("panels must hold at least one (title, label). Received an empty list.")
    cols = (len(panels) + rows - 1) // rows
    fig = _figure(2.0 * cols + 1.6, 2.1 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = [tuple(int(v) for v in palette[k % len(palette)]) for k in range(len(class_names))]
    for ax, (title, label) in zip(axes, panels):
        ax.imshow(colorize(torch.as_tensor(label), palette=colours, ignore_index=IGNORE_INDEX,
                           ignore_color=NO_LABEL_COLOR), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor="black", lw=0.5, label=n)
               for c, n in zip(colours, class_names)]
    handles.append(Patch(facecolor=np.asarray(NO_LABEL_COLOR) / 255, edgecolor="black", lw=0.5, label="no label"))
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return fig
