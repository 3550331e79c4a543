"""The sections of a report: one builder per section, in the order of :data:`BUILDERS`.

Each builder takes the :class:`Context` (the run's metrics rows, the model, the samples and their one forward
pass, the PNG writer) and returns a :class:`Section` — with its pictures written — or a section with a note
saying what is missing. Rendering the HTML is :mod:`cnnkit.report.page`'s job; reading the run folder is
:mod:`cnnkit.report.reading`'s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._tensors import argmax
from cnnkit.errors import ShapeError
from cnnkit.report.reading import evolution_states, stub_evolution

__all__ = ["BUILDERS", "Context", "ReportSection", "Section", "Writer", "build_sections", "central_crop", "named_rgb"]

MAX_ROWS = 8  # samples drawn one row each (true / predicted / errors / confidence)
MAX_GRADCAM = 4
MAX_ACTIVATION_LAYERS = 4
MAX_SIDE = 512  # segmentation samples larger than this are drawn (and run) as their central crop of this side
TSNE_PER_CLASS = 500  # pixels drawn per class for the t-SNE (stratified)
MAX_TSNE_SAMPLES = 32  # samples whose pixels the t-SNE draws from
IGNORE = -100  # what collate_padded pads label maps with; never drawn as a class


# -- structure -----------------------------------------------------------------------------------------


@dataclass
class Image:
    src: str
    alt: str
    caption: str = ""
    width: int | None = None  # CSS pixels; None: the PNG's own size
    kind: str = "figure"  # "image", "labels", "errors", "confidence", "figure": what the picture shows


@dataclass
class Legend:
    title: str
    entries: list[tuple[tuple[int, int, int], str]] = field(default_factory=list)
    gradient: str = ""  # a CSS linear-gradient for a continuous scale
    ticks: tuple[str, ...] = ()
    kind: str = "labels"


@dataclass
class SampleRow:
    name: str
    panels: list[Image]
    text: str = ""


@dataclass
class Section:
    id: str
    title: str
    note: str = ""
    intro: str = ""
    images: list[Image] = field(default_factory=list)
    table: dict[str, Any] | None = None
    pre: str | None = None
    legends: list[Legend] = field(default_factory=list)
    rows: list[SampleRow] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return bool(self.images or self.table or self.pre or self.rows)


@dataclass
class ReportSection:
    """A section of your own for :func:`write_report`: a paragraph, figures and a table, placed first.

    Args:
        title: The heading (and the link in the page's navigation).
        text: A paragraph under the heading (plain text; it is escaped).
        figures: ``[(matplotlib Figure, caption), …]``, each saved as a PNG beside the report.
        columns: Table header; the first column names the rows.
        rows: Table rows ``(name, value, …)``, one value per further column. Numbers are shown with four
            decimals (integers as they are) and keep their exact value in the cell's ``data-value`` attribute, under the
            ``data-key`` ``"<id>/<column>/<name>"``; other values are shown as text.
        id: The section's HTML id (default ``extra-<position>``).
        replaces: Ids of built-in sections this one makes redundant (e.g. ``("iou",)`` for a held-out IoU
            table): they are left out of the page.

    Examples:
        >>> section = ReportSection("Held-out IoU", "Network against a constant prediction.",
        ...                         columns=["class", "network", "baseline"], rows=[("water", 0.91, 0.40)])
        >>> section.rows[0][1]
        0.91
    """

    title: str
    text: str = ""
    figures: Sequence[tuple[Any, str]] = ()
    columns: Sequence[str] = ()
    rows: Sequence[Sequence[Any]] = ()
    id: str | None = None
    replaces: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not self.title:
            raise ShapeError(f"title must be a non-empty string. Received title={self.title!r}.")
        widths = {len(row) for row in self.rows}
        if len(widths) > 1 or (self.columns and widths and widths != {len(self.columns)}):
            raise ShapeError(f"rows must all have one cell per column ({len(self.columns) or 'equal lengths'}). "
                             f"Received row lengths {sorted(widths)}.")
        if self.id is not None and not re.fullmatch(r"[A-Za-z][\w-]*", self.id):
            raise ShapeError("id must start with a letter and hold letters, digits, '_' or '-'. "
                             f"Received id={self.id!r}.")
        unknown = [r for r in self.replaces if r not in BUILT_IN_IDS]
        if isinstance(self.replaces, str) or unknown:
            raise ShapeError(f"replaces must list ids of built-in sections, from {BUILT_IN_IDS}. "
                             f"Received replaces={self.replaces!r}.")


class Writer:
    """Writes PNGs into the report folder under unique, file-system-safe names."""

    def __init__(self, folder: Path, taken: set[str] = frozenset()):
        self.folder = folder
        self.names: set[str] = set(taken)  # names of files kept in the folder are never written over
        self.written: list[str] = []

    def name(self, stem: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "image"
        name, k = f"{base}.png", 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}.png"
        self.names.add(name)
        self.written.append(name)
        return name

    def png(self, array: np.ndarray, stem: str) -> str:
        from cnnkit.render import save_png

        name = self.name(stem)
        save_png(array, self.folder / name)
        return name

    def figure(self, fig, stem: str) -> str:
        name = self.name(stem)
        fig.savefig(self.folder / name, format="png")
        return name


def _figure(width: float, height: float, dpi: int = 80):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _zoom(size: int, target: int = 96) -> int:
    return max(1, min(16, target // max(size, 1)))


def _rgb(color) -> tuple[int, int, int]:
    return tuple(int(c) for c in color)  # type: ignore[return-value]


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _cell(key: str, value: Any) -> dict[str, Any]:
    """A table cell: numbers carry their exact value in ``data-value`` and are shown with 4 decimals."""
    if isinstance(value, Integral) and not isinstance(value, bool):  # a count, an epoch, a label value: no decimals
        return {"key": key, "value": float(value), "text": str(int(value)), "numeric": True}
    if isinstance(value, Real) and not isinstance(value, bool):
        return {"key": key, "value": float(value), "text": _number(float(value)), "numeric": True}
    return {"key": key, "value": str(value), "text": str(value), "numeric": False}


# -- context -------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What the builders read: the run, the model, the samples and one forward pass of each (cached)."""

    run_dir: Path
    rows: list[dict[str, float]]
    writer: Writer
    model: nn.Module | None = None
    input_shape: Sequence[int] | None = None
    images: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    class_names: Sequence[str] | None = None
    band_names: list[str] = field(default_factory=list)
    validity_band: bool = False
    rgb_bands: Sequence[int] | None = None
    evolution: Any = None
    full_sizes: list[tuple[int, ...] | None] = field(default_factory=list)  # before the crop to MAX_SIDE, if any
    _logits: dict[int, Tensor] = field(default_factory=dict)

    @property
    def segmentation(self) -> bool:
        return bool(self.labels) and self.labels[0].dim() == 2

    def logit(self, i: int) -> Tensor:
        """The model's output for sample ``i`` (run one by one: samples may differ in size), cached."""
        if i not in self._logits:
            with torch.no_grad():
                self._logits[i] = self.model(self.images[i][None])[0].cpu()
        return self._logits[i]

    def valid(self, i: int) -> Tensor | None:
        """(H, W) bool: where sample ``i`` has data (its validity band > 0), or None without one."""
        return self.images[i][-1].cpu() > 0 if self.validity_band else None

    def class_label(self, k: int) -> str:
        names = self.class_names
        return f"{k}: {names[k]}" if names is not None and k < len(names) else str(k)

    def num_classes(self) -> int:
        return self.logit(0).shape[0]


def central_crop(image: Tensor, label: Tensor, max_side: int = MAX_SIDE) -> tuple[Tensor, Tensor, bool]:
    """``image`` (C, H, W) and its label map (H, W) cut to their central ``max_side`` × ``max_side`` (each side only
    if longer), and whether anything was cut: a report draws five panels per sample and runs the model on each
    whole sample, which for a scene of thousands of pixels a side means gigabytes of activations and pictures
    nobody can look at. Other labels (a class, or a 1-D map) are returned as they are.

    Examples:
        >>> image, label, cut = central_crop(torch.zeros(3, 600, 100), torch.zeros(600, 100), 512)
        >>> tuple(image.shape), tuple(label.shape), cut
        ((3, 512, 100), (512, 100), True)
    """
    if image.dim() != 3 or label.dim() != 2 or max(image.shape[1:]) <= max_side:
        return image, label, False
    h, w = image.shape[1:]
    top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    rows, cols = slice(top, top + max_side), slice(left, left + max_side)
    return image[:, rows, cols], label[rows, cols], True


def _conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def _feature_layer(model: nn.Module) -> str | None:
    """The last conv layer that is not the output layer (the last conv, if there is only one)."""
    convs = _conv_layers(model)
    if not convs:
        return None
    return convs[-2][0] if len(convs) > 1 else convs[-1][0]


def _dominant(label: Tensor) -> int:
    valid = label[label != IGNORE].long()
    return int(torch.bincount(valid.flatten()).argmax()) if valid.numel() else 0


def _no_model(ident: str, title: str) -> Section:
    return Section(ident, title, note="No model given (CLI: --model file.py:build): no summary, filters, activations, "
                                      "Grad-CAM, t-SNE or predictions.")


def _no_samples(ident: str, title: str) -> Section:
    return Section(ident, title, note="No samples given (samples=[(image, label), …]).")


# -- builders ------------------------------------------------------------------------------------------


def curves_section(ctx: Context) -> Section:
    section = Section("curves", "Training curves")
    rows = ctx.rows
    if not rows:
        section.note = (f"No metrics: {str(ctx.run_dir / 'logs')!r} holds no version_*/metrics.csv "
                        "(train with cnnkit.train.fit to write them).")
        return section
    columns = sorted({k for row in rows for k in row} - {"epoch", "step", "version"})
    losses = [c for c in columns if "loss" in c]
    metrics = [c for c in columns if "loss" not in c and c.count("/") <= 1]  # per-class IoU goes to the table
    versions = sorted({row["version"] for row in rows})
    panels = [p for p in [(losses, "step", "loss"), (metrics, "epoch", "value")] if p[0]]
    if not panels:
        section.note = "The metrics files hold no loss or metric columns."
        return section
    fig = _figure(11, 3.6)
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))]
    for ax, (keys, x_key, y_label) in zip(axes, panels):
        for key in keys:
            points = [(row[x_key], row[key]) for row in rows if key in row and x_key in row]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=key)
        for v in versions[1:]:  # a restart (resume): where its first row sits
            first = next((row[x_key] for row in rows if row["version"] == v and x_key in row), None)
            if first is not None:
                ax.axvline(first, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlabel(x_key)
        ax.set_ylabel(y_label)
        ax.legend(fontsize="small", frameon=False)
        ax.grid(alpha=0.3)
    restarts = f" Dashed lines: {len(versions) - 1} restart(s) from a checkpoint." if len(versions) > 1 else ""
    section.intro = (f"{len(rows)} logged rows from {len(versions)} metrics.csv file(s); losses over optimizer "
                     f"steps, validation metrics over epochs.{restarts}")
    section.images.append(Image(ctx.writer.figure(fig, "curves"), "Training and validation loss over steps, "
                                "validation metrics over epochs"))
    return section


def iou_section(ctx: Context) -> Section:
    section = Section("iou", "Per-class IoU")
    last = next((row for row in reversed(ctx.rows) if any(k.startswith("val/iou/") for k in row)), None)
    if last is None:
        section.note = "No validation row with val/iou/<class> columns (SegmentationTask with a validation loader)."
        return section
    class_names = ctx.class_names
    order = {name: i for i, name in enumerate(class_names or ())}
    keys = [k for k in last if k.startswith("val/iou/")]
    keys.sort(key=lambda k: (order.get(k[8:], len(order)), int(k[8:]) if k[8:].isdigit() else 0, k))
    body = []
    for key in keys:  # the task logs val/iou/<class name>, or val/iou/<index> without names
        name = key.removeprefix("val/iou/")
        if class_names is not None and name.isdigit() and int(name) < len(class_names):
            name = f"{name}: {class_names[int(name)]}"
        body.append({"name": name, "cells": [_cell(key, last[key])]})
    summary = [{"name": k.removeprefix("val/"), "cells": [_cell(k, last[k])]}
               for k in ("val/mean_iou", "val/pixel_accuracy", "val/loss") if k in last]
    section.table = {"header": ["class", "IoU"], "rows": body, "summary": summary}
    where = f"epoch {int(last['epoch'])}, " if "epoch" in last else ""
    section.intro = f"From the last validation row ({where}step {int(last.get('step', -1))})."
    return section


def _band_text(ctx: Context, bands: Sequence[int]) -> str:
    names = [ctx.band_names[b] if b < len(ctx.band_names) else f"band {b}" for b in bands]
    return " as grey" if len(names) == 1 else ": " + ", ".join(names) + " as red, green, blue"


def _composite_bands(ctx: Context, channels: int) -> tuple[int, ...]:
    data = channels - 1 if ctx.validity_band else channels
    if ctx.rgb_bands is not None:
        bands = tuple(int(b) for b in ctx.rgb_bands)
        if len(bands) not in (1, 3) or not all(0 <= b < channels for b in bands):
            raise ShapeError(f"rgb_bands must be 1 or 3 band indices in [0, {channels - 1}]. "
                             f"Received rgb_bands={ctx.rgb_bands!r}.")
        return bands
    named = named_rgb(ctx.band_names[:data])
    if named is not None:
        return named
    return (0, 1, 2) if data >= 3 else (0,)


def named_rgb(band_names: Sequence[str]) -> tuple[int, int, int] | None:
    """The indices of the bands named red, green and blue (case-insensitive, each named once), else ``None``.

    Examples:
        >>> named_rgb(["Blue", "Green", "Red", "NIR"])
        (2, 1, 0)
        >>> named_rgb(["band 0", "band 1", "band 2"]) is None
        True
    """
    folded = [str(name).strip().casefold() for name in band_names]
    if any(folded.count(colour) != 1 for colour in ("red", "green", "blue")):
        return None
    return folded.index("red"), folded.index("green"), folded.index("blue")


def predictions_section(ctx: Context) -> Section:
    from cnnkit.render import (
        CORRECT_COLOR,
        DEFAULT_PALETTE,
        NODATA_COLOR,
        UNLABELLED_COLOR,
        WRONG_COLOR,
        confidence_colors,
        confidence_panel,
        error_panel,
        image_to_rgb,
        label_panel,
    )

    section = Section("predictions", "Predicted vs true labels")
    if ctx.model is None:
        return _no_model(section.id, section.title)
    if not ctx.images:
        return _no_samples(section.id, section.title)
    if not ctx.segmentation:
        rows = []
        for i, label in enumerate(ctx.labels):
            true, predicted = ctx.class_label(int(label)), ctx.class_label(int(ctx.logit(i).argmax()))
            rows.append({"name": ctx.names[i], "cells": [_cell(f"predictions/true/{i}", true),
                                                         _cell(f"predictions/predicted/{i}", predicted)]})
        section.table = {"header": ["sample", "true", "predicted"], "rows": rows, "summary": []}
        return section
    num_classes = ctx.num_classes()
    palette = [DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)] for k in range(num_classes)]
    nodata = [(NODATA_COLOR, "no data")] if ctx.validity_band else []
    section.legends.append(Legend("Labels", [(_rgb(palette[k]), ctx.class_label(k)) for k in range(num_classes)]
                                  + [(UNLABELLED_COLOR, "unlabelled")] + nodata))
    section.legends.append(Legend("Errors", [(CORRECT_COLOR, "right"), (WRONG_COLOR, "wrong"),
                                             (UNLABELLED_COLOR, "unlabelled"), *nodata], kind="errors"))
    stops = confidence_colors(np.linspace(0, 1, 6))
    gradient = ", ".join(f"rgb({r},{g},{b}) {100 * i / 5:.0f}%" for i, (r, g, b) in enumerate(stops.tolist()))
    section.legends.append(Legend("Confidence (top class probability)", gradient=f"linear-gradient(to right, "
                                  f"{gradient})", ticks=("0", "0.5", "1"), kind="confidence"))
    bands = _composite_bands(ctx, ctx.images[0].shape[0])
    shown = min(len(ctx.images), MAX_ROWS)
    for i in range(shown):
        image, label, out = ctx.images[i].cpu(), ctx.labels[i].long().cpu(), ctx.logit(i)
        valid = ctx.valid(i)
        predicted = argmax(out, 0)
        rgb = image_to_rgb(image, bands, normalize="percentile")
        if valid is not None:
            rgb[~valid.numpy()] = NODATA_COLOR
        size = max(image.shape[-2:])
        width = image.shape[-1] * max(1, min(4, 192 // size))
        stem = re.sub(r"\.[A-Za-z0-9]+$", "", ctx.names[i])
        w = ctx.writer
        panels = [
            Image(w.png(rgb, f"{stem}_image"), f"{ctx.names[i]}: image", "image", width, "image"),
            Image(w.png(label_panel(label, valid, palette), f"{stem}_true"), f"{ctx.names[i]}: true labels",
                  "true", width, "labels"),
            Image(w.png(label_panel(predicted, valid, palette), f"{stem}_predicted"),
                  f"{ctx.names[i]}: predicted labels", "predicted", width, "labels"),
            Image(w.png(error_panel(label, predicted, valid), f"{stem}_errors"), f"{ctx.names[i]}: errors",
                  "errors", width, "errors"),
            Image(w.png(confidence_panel(torch.softmax(out.double(), 0), valid), f"{stem}_confidence"),
                  f"{ctx.names[i]}: confidence", "confidence", width, "confidence"),
        ]
        labelled = label != IGNORE
        right = int((labelled & (predicted == label)).sum())
        total = int(labelled.sum())
        full = ctx.full_sizes[i] if i < len(ctx.full_sizes) else None
        shape = f"{image.shape[-2]}×{image.shape[-1]} px" + (
            f" (the central crop of {full[0]}×{full[1]})" if full is not None else "")
        text = f"{shape}, {right / total:.1%} of {total} labelled pixels right" if total else \
            f"{shape}, no labelled pixel"
        section.rows.append(SampleRow(ctx.names[i], panels, text))
    more = f" (the first {shown} of {len(ctx.images)})" if shown < len(ctx.images) else ""
    nodata_text = " No data: where the validity band is 0 (the last input band)." if ctx.validity_band else ""
    if any(full is not None for full in ctx.full_sizes):
        nodata_text += (f" Samples longer than {MAX_SIDE} px on a side are shown, and were run through the model for "
                        f"this page, as their central {MAX_SIDE}×{MAX_SIDE} crop (its border pixels lack the "
                        "context the whole scene would give them).")
    section.intro = (f"One row per sample{more}. Image: bands{_band_text(ctx, bands)}, each stretched between its "
                     "2nd and 98th percentile. The label, error and confidence panels are opaque (nothing blended): "
                     f"every pixel has exactly one colour of the legends above.{nodata_text} Panels are enlarged "
                     "up to 4× without smoothing.")
    return section


def _pixel_features(model: nn.Module, image: Tensor) -> Tensor | None:
    """The input of the model's last conv layer for one sample (what the classifier sees at each pixel),
    brought to the image's size (nearest) — or None if the model has no conv layer."""
    convs = _conv_layers(model)
    if not convs:
        return None
    seen: list[Tensor] = []
    handle = convs[-1][1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        handle.remove()
    features = seen[-1][0]
    if features.shape[-2:] != image.shape[-2:]:
        features = F.interpolate(features[None], size=image.shape[-2:], mode="nearest")[0]
    return features.cpu()


def tsne_section(ctx: Context) -> Section:
    from cnnkit.inspect import Recorder, tsne_plot
    from cnnkit.inspect.embedding import sample_pixels

    section = Section("tsne", "t-SNE of features")
    if ctx.model is None:
        return _no_model(section.id, section.title)
    if not ctx.images:
        return _no_samples(section.id, section.title)
    name = ctx.writer.name("tsne")
    if ctx.segmentation:
        features, labels = [], []
        last = _conv_layers(ctx.model)
        if not last:
            section.note = "No conv layer to take features from."
            return section
        for i, image in enumerate(ctx.images[:MAX_TSNE_SAMPLES]):
            features.append(_pixel_features(ctx.model, image))
            label = ctx.labels[i].long().cpu().clone()
            valid = ctx.valid(i)
            if valid is not None:
                label[~valid] = IGNORE
            labels.append(label)
        x, y = sample_pixels(features, labels, TSNE_PER_CLASS, ignore_index=IGNORE)
        if len(y) < 10:
            section.note = f"t-SNE needs at least 10 labelled pixels. Received {len(y)}."
            return section
        counts = ", ".join(f"{ctx.class_label(int(k))} {int((y == k).sum())}" for k in np.unique(y))
        tsne_plot(x, y, ctx.writer.folder / name, perplexity=min(15.0, (len(y) - 1) / 3),
                  class_names=ctx.class_names, point_size=3.0, pca_components=16, max_iter=300, angle=0.7,
                  threads=torch.get_num_threads())
        section.intro = (f"{len(y)} pixels of {len(features)} sample(s), drawn per class (at most "
                         f"{TSNE_PER_CLASS} each: {counts}), with data and a label. Features: the input of the last "
                         f"conv layer {last[-1][0]} at each pixel, reduced to 16 principal components, then t-SNE "
                         "(perplexity 15 or less, 300 iterations). Coloured by true class, in the legend's colours.")
        section.images.append(Image(name, "t-SNE of pixel features coloured by true class"))
        return section
    layer = _feature_layer(ctx.model)
    n = len(ctx.images)
    if layer is None:
        section.note = "No conv layer to take features from."
        return section
    if n < 4:
        section.note = f"t-SNE needs at least 4 samples. Received {n}."
        return section
    with Recorder(ctx.model, layer) as rec, torch.no_grad():
        pooled = []
        for image in ctx.images:
            ctx.model(image[None])
            pooled.append(rec.activation(layer).flatten(2).mean(2).cpu())
    targets = [int(label) for label in ctx.labels]
    tsne_plot(torch.cat(pooled), np.asarray(targets), ctx.writer.folder / name, perplexity=min(30.0, (n - 1) / 3),
              class_names=ctx.class_names, title=f"layer {layer}")
    section.intro = f"{n} samples, features of layer {layer} averaged over space, coloured by label."
    section.images.append(Image(name, f"t-SNE of pooled features of layer {layer}, coloured by label"))
    return section


def activations_section(ctx: Context) -> Section:
    from cnnkit.inspect import Recorder
    from cnnkit.render import annotated_grid, signed_to_rgb

    section = Section("activations", "Activations")
    if ctx.model is None:
        return _no_model(section.id, section.title)
    if not ctx.images:
        return _no_samples(section.id, section.title)
    names = [n for n, _ in _conv_layers(ctx.model)][:MAX_ACTIVATION_LAYERS]
    if not names:
        section.note = "The model has no Conv1d / Conv2d layer to record."
        return section
    image = ctx.images[0]
    with Recorder(ctx.model, names) as rec, torch.no_grad():
        ctx.model(image[None])
        acts = {name: rec.activation(name)[0].cpu() for name in names}
    zoom = _zoom(max(image.shape[1:]), 128)
    for name in names:
        maps = acts[name].double()
        if maps.dim() == 2:
            maps = maps[:, None, :]
        scale = float(maps.abs().max()) or 1.0
        tiles = signed_to_rgb(maps.numpy(), scale=scale)
        grid = annotated_grid(tiles, min(len(tiles), 8), zoom=zoom, labels=[str(c) for c in range(len(tiles))],
                              scale=scale)
        shape = "×".join(str(v) for v in maps.shape[1:])
        section.images.append(Image(ctx.writer.png(grid, f"activations_{name}"),
                                    f"Activations of layer {name} for {ctx.names[0]}",
                                    f"Layer {name}: {len(tiles)} channels of {shape} px, numbered; one shared scale "
                                    f"±{scale:.3g} (colour bar).", kind="grid"))
    section.intro = (f"Outputs of the first {len(names)} conv layer(s) for {ctx.names[0]}, one grid per layer, one "
                     f"tile per channel, drawn at {zoom}× the layer's own resolution (a layer at half the input's "
                     "resolution is drawn half as large). Blue negative, white 0, red positive.")
    return section


def gradcam_section(ctx: Context) -> Section:
    from matplotlib import colormaps

    from cnnkit.inspect import grad_cam
    from cnnkit.render import image_to_rgb

    section = Section("gradcam", "Grad-CAM")
    if ctx.model is None:
        return _no_model(section.id, section.title)
    if not ctx.images:
        return _no_samples(section.id, section.title)
    layer = _feature_layer(ctx.model)
    if layer is None or ctx.images[0].dim() != 3:
        section.note = "Grad-CAM needs a 2-D model with a conv layer."
        return section
    targets = [_dominant(lab) for lab in ctx.labels] if ctx.segmentation else [int(lab) for lab in ctx.labels]
    bands = _composite_bands(ctx, ctx.images[0].shape[0])
    for i in range(min(len(ctx.images), MAX_GRADCAM)):
        image = ctx.images[i]
        cam = grad_cam(ctx.model, image[None], layer, target=targets[i:i + 1]).cpu().numpy()[0]
        heat = colormaps["inferno"](cam)[..., :3] * 255.0
        rgb = image_to_rgb(image.cpu(), bands, normalize="percentile").astype(np.float64)
        blended = np.clip(np.round(0.5 * rgb + 0.5 * heat), 0, 255).astype(np.uint8)
        cls = ctx.class_label(targets[i])
        width = image.shape[-1] * max(1, min(4, 192 // max(image.shape[-2:])))
        section.images.append(Image(ctx.writer.png(blended, f"gradcam_{i}"),
                                    f"Grad-CAM for class {cls} on {ctx.names[i]}", f"{ctx.names[i]}, class {cls}",
                                    width, "overlay"))
    what = "the class with the most labelled pixels" if ctx.segmentation else "the true class"
    section.intro = (f"Grad-CAM at layer {layer} for {what}, blended at opacity 0.5 over the image "
                     "(inferno: bright = supports that class).")
    return section


def _band_labels(ctx: Context, count: int) -> list[str]:
    labels = [ctx.band_names[b] if b < len(ctx.band_names) else f"band {b}" for b in range(count)]
    if ctx.validity_band and count and not ctx.band_names:
        labels[-1] = "validity"
    return labels


def _band_sentence(ctx: Context, count: int) -> str:
    if ctx.validity_band:
        return (f"Columns: input bands; the last ({_band_labels(ctx, count)[-1]}) is the validity band (1 = data, "
                "0 = none), not a spectral band.")
    return "Columns: input bands."


def filters_section(ctx: Context) -> Section:
    from cnnkit.inspect import Recorder
    from cnnkit.render import annotated_grid, signed_to_rgb

    section = Section("filters", "First-layer filters and weight gradients")
    if ctx.model is None:
        return _no_model(section.id, section.title)
    convs = _conv_layers(ctx.model)
    if not convs:
        section.note = "The model has no Conv1d / Conv2d layer."
        return section
    name, conv = convs[0]
    weight = conv.weight.detach().cpu().double()
    grids = [(weight, f"filters_{name}", f"Filters of the first conv layer {name}", "Weights")]
    if ctx.images:
        saved = {p: p.grad for p in ctx.model.parameters()}  # leave the caller's .grad as it was
        try:
            for p in ctx.model.parameters():
                p.grad = None
            with Recorder(ctx.model, name, activations=False, weight_grads=True) as rec:
                count = min(len(ctx.images), MAX_ROWS)
                for image, label in zip(ctx.images[:count], ctx.labels[:count]):  # sizes may differ: one by one
                    logits = ctx.model(image[None])
                    target = label.long()[None].to(logits.device) if ctx.segmentation \
                        else torch.tensor([int(label)], device=logits.device)
                    (F.cross_entropy(logits, target, ignore_index=IGNORE) / count).backward()
                grad = rec.weight_grad(name).cpu().double()
        finally:
            for p, g in saved.items():
                p.grad = g
        grids.append((grad, f"filter_grads_{name}", f"Weight gradients of the first conv layer {name}",
                      "∂loss/∂weight"))
    else:
        section.note = "No samples given, so no weight gradients."
    if weight.dim() == 3:
        weight = weight[:, :, None, :]
    out_channels, in_channels = weight.shape[:2]
    zoom = _zoom(weight.shape[-1], 24)
    for tensor, stem, alt, what in grids:
        tensor = tensor.reshape(out_channels, in_channels, *weight.shape[2:])
        scale = float(tensor.abs().max()) or 1.0
        tiles = signed_to_rgb(tensor.reshape(-1, *weight.shape[2:]).numpy(), scale=scale)
        grid = annotated_grid(tiles, in_channels, zoom=zoom, row_labels=[f"filter {o}" for o in range(out_channels)],
                              col_labels=_band_labels(ctx, in_channels), scale=scale)
        section.images.append(Image(ctx.writer.png(grid, stem), alt, f"{what}: one row per filter, one column per "
                                    f"input band, shared scale ±{scale:.3g}.", kind="grid"))
    grad_text = (f" Gradient of the mean cross-entropy over {min(len(ctx.images), MAX_ROWS)} sample(s), one "
                 "backward pass in eval mode." if ctx.images else "")
    section.intro = (f"Layer {name} ({type(conv).__name__}, weight {tuple(conv.weight.shape)}). "
                     f"{_band_sentence(ctx, in_channels)}{grad_text}")
    return section


def evolution_section(ctx: Context) -> Section:
    from cnnkit.render import annotated_grid, signed_to_rgb

    section = Section("evolution", "Filter evolution")
    evolutions = [ctx.evolution] if ctx.evolution is not None else \
        [stub_evolution(s) for s in evolution_states(ctx.run_dir)]
    in_channels = 0
    for evo in evolutions:
        for layer in evo.layers:
            if len(evo.history[layer]) == 0:
                continue
            h = torch.stack(evo.history[layer]).double()  # (T, O, I, *k)
            if h.dim() == 6:
                continue
            if h.dim() == 3:  # Linear (T, O, I)
                h = h[:, :, None, None, :]
            elif h.dim() == 4:  # Conv1d
                h = h[:, :, :, None, :]
            t, o, i, kh, kw = h.shape
            in_channels = i
            scale = float(h.abs().max()) or 1.0
            side = h.permute(1, 0, 3, 2, 4).reshape(o * t, kh, i * kw)  # row = filter, column = snapshot
            tiles = signed_to_rgb(side.numpy(), scale=scale)
            steps = list(evo.steps)
            grid = annotated_grid(tiles, t, zoom=_zoom(max(kh, kw), 16), gap=3,
                                  row_labels=[f"filter {k}" for k in range(o)],
                                  col_labels=[f"step {s}" for s in steps], scale=scale)
            change = evo.change(layer).relative_l2[-1]
            section.images.append(Image(
                ctx.writer.png(grid, f"evolution_{layer}"),
                f"Filters of layer {layer}, one row per filter, one column per snapshot (training step)",
                f"Layer {layer}: {len(steps)} snapshots (columns, by training step); each tile shows the input "
                f"bands side by side ({', '.join(_band_labels(ctx, i))}); one scale ±{scale:.3g} for all. Relative "
                f"change at the last snapshot: median {float(change.median()):.3f}, max {float(change.max()):.3f}.",
                kind="grid"))
    if not section.images:
        section.note = ("No filter history: train with cnnkit.train.FilterEvolutionCallback (its state is kept in "
                        "checkpoints/last.ckpt) or pass evolution=.")
    elif in_channels:
        section.intro = _band_sentence(ctx, in_channels)
    return section


def summary_section(ctx: Context) -> Section:
    from cnnkit.explainers import summary as summarise

    section = Section("summary", "Model summary")
    if ctx.model is None:
        return _no_model(section.id, section.title)
    input_shape = ctx.input_shape
    if input_shape is None and ctx.images:
        input_shape = tuple(ctx.images[0].shape)
    if input_shape is None:
        section.note = "No input_shape given (CLI: --input 3x64x64), so no summary table."
    else:
        section.pre = str(summarise(ctx.model, tuple(input_shape)))
    return section


def user_section(index: int, section: ReportSection, writer: Writer) -> Section:
    ident = section.id or f"extra-{index}"
    out = Section(ident, section.title, intro=section.text)
    for k, (fig, caption) in enumerate(section.figures):
        out.images.append(Image(writer.figure(fig, f"{ident}_{k}"), caption or section.title, caption))
    if section.rows:
        columns = list(section.columns) or ["item", *(f"value {i}" for i in range(1, len(section.rows[0])))]
        body = []
        for row in section.rows:
            name, *values = row
            body.append({"name": str(name), "cells": [_cell(f"{ident}/{col}/{name}", v)
                                                      for col, v in zip(columns[1:], values)]})
        out.table = {"header": columns, "rows": body, "summary": []}
    return out


BUILDERS: tuple[tuple[str, Callable[[Context], Section]], ...] = (
    ("curves", curves_section),
    ("iou", iou_section),
    ("predictions", predictions_section),
    ("tsne", tsne_section),
    ("activations", activations_section),
    ("gradcam", gradcam_section),
    ("filters", filters_section),
    ("evolution", evolution_section),
    ("summary", summary_section),
)
"""The built-in sections, in page order (after the caller's own sections)."""

BUILT_IN_IDS = tuple(ident for ident, _ in BUILDERS)

_NEEDS_MODEL = ("predictions", "tsne", "activations", "gradcam", "filters", "summary")


def build_sections(ctx: Context, own: Sequence[ReportSection] = ()) -> list[Section]:
    """The caller's sections, then every built-in one not replaced by them, in :data:`BUILDERS` order.

    Without a model, the model's sections collapse into one note. The model's mode and ``.grad`` are restored.
    """
    parts = [user_section(i, section, ctx.writer) for i, section in enumerate(own)]
    replaced = {r for section in own for r in section.replaces}
    model = ctx.model
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        for ident, build in BUILDERS:
            if ident in replaced:
                continue
            if model is None and ident in _NEEDS_MODEL:
                if ident == "predictions":
                    parts.append(Section("model", "Model", note="No model given (CLI: --model file.py:build): no "
                                         "summary, filters, activations, Grad-CAM, t-SNE or predictions."))
                continue
            parts.append(build(ctx))
    finally:
        if model is not None:
            model.train(was_training)
    return parts
