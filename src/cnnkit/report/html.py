"""``write_report``: gather a training run's logs, checkpoint and model into one static HTML page.

Collecting (CSV rows, checkpoint state, tensors from one forward/backward pass), rendering (PNG files via
:mod:`cnnkit.render`, matplotlib and :mod:`cnnkit.inspect`) and templating (Jinja2, autoescaped) are kept
apart. Every section is optional: it appears when its data exists, otherwise a short note says what is
missing and how to get it.

Layout written::

    run_dir/report/report.html     the page (relative image paths; open it straight from the file system)
    run_dir/report/*.png           its images
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit.errors import ArgumentTypeError, CnnkitError, ShapeError

__all__ = ["REPORT_DIR", "load_run_weights", "read_metrics", "write_report"]

REPORT_DIR = "report"
"""Folder of ``run_dir`` that holds ``report.html`` and its images."""

_MAX_SHOWN = 4  # samples drawn one by one (overlays, activations, Grad-CAM); t-SNE uses all of them
_MAX_ACTIVATION_LAYERS = 4
_IGNORE = -100  # what collate_padded pads label maps with; never drawn as a class


# -- collecting ----------------------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, str]:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return (int(match.group(1)) if match else -1, str(path))


def _metric_files(run_dir: Path) -> list[Path]:
    logs = run_dir / "logs"
    return sorted(logs.rglob("metrics.csv"), key=_version_key) if logs.is_dir() else []


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Every row of every ``run_dir/logs/**/metrics.csv``, restarts concatenated in version order.

    Empty cells are left out of a row; each row gets a ``"version"`` entry (its ``version_<k>`` folder's
    ``k``, or -1), so a resumed run reads as one history whose ``step`` column keeps counting.

    Args:
        run_dir: The folder given to :func:`cnnkit.train.fit`.

    Returns:
        A list of ``{column: value}``, one per CSV row, oldest first.

    Examples:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / "logs" / "version_0").mkdir(parents=True)
        >>> _ = (run / "logs" / "version_0" / "metrics.csv").write_text("epoch,step,val/loss\\n0,3,0.5\\n0,3,\\n")
        >>> read_metrics(run)
        [{'epoch': 0.0, 'step': 3.0, 'val/loss': 0.5, 'version': 0.0}, {'epoch': 0.0, 'step': 3.0, 'version': 0.0}]
    """
    rows: list[dict[str, float]] = []
    for path in _metric_files(Path(run_dir)):
        version = float(_version_key(path)[0])
        with path.open(newline="") as f:
            for raw in csv.DictReader(f):
                row: dict[str, float] = {}
                for key, cell in raw.items():
                    if key is None or cell is None or cell.strip() == "":
                        continue
                    try:
                        row[key] = float(cell)
                    except ValueError:
                        continue
                row["version"] = version
                rows.append(row)
    return rows


def _evolution_states(run_dir: Path) -> list[dict[str, Any]]:
    """The :class:`~cnnkit.train.FilterEvolutionCallback` states saved in ``last.ckpt`` (Lightning keeps
    callback states under ``checkpoint["callbacks"][state_key]``)."""
    from cnnkit.train.fit import last_checkpoint

    path = last_checkpoint(run_dir)
    if path is None:
        return []
    checkpoint = _load_checkpoint(path)
    states = []
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("FilterEvolutionCallback") and isinstance(state, dict) and state.get("history"):
            states.append(state)
    return states


_DAMAGED = ("The report reads the filter history and the trained weights from it: move it away (or delete it) "
            "to write the report without them, or resume the run (cnnkit train/demo --resume) from another "
            "checkpoint.")


def _load_checkpoint(path) -> dict[str, Any]:
    """A Lightning checkpoint read with ``weights_only=True``: tensors and plain containers, no code runs.
    A damaged file is a :class:`CnnkitError` naming it."""
    from cnnkit.train.rundir import read_checkpoint

    return read_checkpoint(path, what=_DAMAGED)


def _stub_evolution(state: dict[str, Any]):
    """A :class:`~cnnkit.inspect.FilterEvolution` holding ``state``, built on placeholder modules named like the
    recorded layers (rendering needs the history only, not the trained network)."""
    from cnnkit.inspect import FilterEvolution

    root = nn.Module()
    for name, snapshots in state["history"].items():
        module = root
        for part in name.split("."):
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        module.register_parameter("weight", nn.Parameter(snapshots[0].clone(), requires_grad=False))
    evolution = FilterEvolution(root, list(state["history"]), every_n_steps=1)
    evolution.load_state_dict(state)
    return evolution


def load_run_weights(model: nn.Module, run_dir: str | os.PathLike) -> Path:
    """Load the weights of ``run_dir/checkpoints/last.ckpt`` into ``model`` (in place).

    The checkpoint holds the task's ``state_dict``; a task keeps the network under ``model.``, which is
    stripped when every key has it.

    Returns:
        The checkpoint file read.

    Raises:
        FileNotFoundError: if the run has no ``last.ckpt``.
        CnnkitError: if the weights do not fit ``model`` (the message lists a few missing / unexpected keys).
    """
    from cnnkit.train.fit import last_checkpoint
    from cnnkit.train.rundir import MissingRunFileError

    path = last_checkpoint(run_dir)
    if path is None:
        raise MissingRunFileError(f"run_dir {os.fspath(run_dir)!r} has no checkpoints/last.ckpt to load weights "
                                  "from.")
    state = _load_checkpoint(path)["state_dict"]
    if state and all(k.startswith("model.") for k in state):
        state = {k.removeprefix("model."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CnnkitError(
            f"The weights in {str(path)!r} do not fit the model: missing keys {result.missing_keys[:5]}, "
            f"unexpected keys {result.unexpected_keys[:5]}."
        )
    return path


# -- report structure ----------------------------------------------------------------------------------


@dataclass
class _Image:
    src: str
    alt: str
    caption: str = ""


@dataclass
class _Section:
    id: str
    title: str
    note: str = ""
    intro: str = ""
    images: list[_Image] = field(default_factory=list)
    table: dict[str, Any] | None = None
    pre: str | None = None

    @property
    def present(self) -> bool:
        return bool(self.images or self.table or self.pre)


@dataclass
class ReportSection:
    """A section of your own for :func:`write_report`: a paragraph, figures and a table, placed first.

    Args:
        title: The heading (and the link in the page's navigation).
        text: A paragraph under the heading (plain text; it is escaped).
        figures: ``[(matplotlib Figure, caption), …]``, each saved as a PNG beside the report.
        columns: Table header; the first column names the rows.
        rows: Table rows ``(name, value, …)``, one value per further column. Numbers are shown with four
            decimals and keep their exact value in the cell's ``data-value`` attribute, under the
            ``data-key`` ``"<id>/<column>/<name>"``; other values are shown as text.
        id: The section's HTML id (default ``extra-<position>``).

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


class _Writer:
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


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _zoom(size: int, target: int = 96) -> int:
    return max(1, min(16, target // max(size, 1)))


# -- sections ------------------------------------------------------------------------------------------


def _curves_section(rows: list[dict[str, float]], writer: _Writer, run_dir: Path) -> _Section:
    section = _Section("curves", "Training curves")
    if not rows:
        section.note = (f"No metrics: {str(run_dir / 'logs')!r} holds no version_*/metrics.csv "
                        "(train with cnnkit.train.fit to write them).")
        return section
    columns = sorted({k for row in rows for k in row} - {"epoch", "step", "version"})
    losses = [c for c in columns if "loss" in c]
    metrics = [c for c in columns if "loss" not in c and c.count("/") <= 1]  # per-class IoU goes to the table
    versions = sorted({row["version"] for row in rows})
    fig = _figure(11, 4)
    panels = [(losses, "step", "loss"), (metrics, "epoch", "value")]
    panels = [p for p in panels if p[0]]
    axes = [fig.add_subplot(1, len(panels), i + 1) for i in range(len(panels))] if panels else []
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
    if not panels:
        section.note = "The metrics files hold no loss or metric columns."
        return section
    restarts = f" Dashed lines: {len(versions) - 1} restart(s) from a checkpoint." if len(versions) > 1 else ""
    section.intro = (f"{len(rows)} logged rows from {len(versions)} metrics.csv file(s); losses over optimizer "
                     f"steps, validation metrics over epochs.{restarts}")
    section.images.append(_Image(writer.figure(fig, "curves"), "Training and validation loss over steps, "
                                 "validation metrics over epochs"))
    return section


def _iou_section(rows: list[dict[str, float]], class_names: Sequence[str] | None) -> _Section:
    section = _Section("iou", "Per-class IoU")
    last = next((row for row in reversed(rows) if any(k.startswith("val/iou/") for k in row)), None)
    if last is None:
        section.note = "No validation row with val/iou/<class> columns (SegmentationTask with a validation loader)."
        return section
    body = []
    order = {name: i for i, name in enumerate(class_names or ())}
    keys = [k for k in last if k.startswith("val/iou/")]
    keys.sort(key=lambda k: (order.get(k[8:], len(order)), int(k[8:]) if k[8:].isdigit() else 0, k))
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


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _cell(key: str, value: Any) -> dict[str, Any]:
    """A table cell: numbers carry their exact value in ``data-value`` and are shown with 4 decimals."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return {"key": key, "value": float(value), "text": _number(float(value)), "numeric": True}
    return {"key": key, "value": str(value), "text": str(value), "numeric": False}


def _user_section(index: int, section: ReportSection, writer: _Writer) -> _Section:
    ident = section.id or f"extra-{index}"
    out = _Section(ident, section.title, intro=section.text)
    for k, (fig, caption) in enumerate(section.figures):
        out.images.append(_Image(writer.figure(fig, f"{ident}_{k}"), caption or section.title, caption))
    if section.rows:
        columns = list(section.columns) or ["item", *(f"value {i}" for i in range(1, len(section.rows[0])))]
        body = []
        for row in section.rows:
            name, *values = row
            body.append({"name": str(name), "cells": [_cell(f"{ident}/{col}/{name}", v)
                                                      for col, v in zip(columns[1:], values)]})
        out.table = {"header": columns, "rows": body, "summary": []}
    return out


def _evolution_section(run_dir: Path, evolution, writer: _Writer) -> _Section:
    section = _Section("evolution", "Filter evolution")
    evolutions = [evolution] if evolution is not None else [_stub_evolution(s) for s in _evolution_states(run_dir)]
    for evo in evolutions:
        for layer in evo.layers:
            if len(evo.history[layer]) == 0:
                continue
            image = evo.render(layer, zoom=_zoom(max(evo.history[layer][0].shape[2:] or (1,)), 24))
            steps = ", ".join(str(s) for s in evo.steps[:12]) + (" …" if len(evo.steps) > 12 else "")
            change = evo.change(layer).relative_l2[-1]
            section.images.append(_Image(
                writer.png(image, f"evolution_{layer}"),
                f"Filters of layer {layer}, one row per filter, snapshots at steps {steps}",
                f"Layer {layer}: {len(evo.steps)} snapshots (steps {steps}); relative change at the last "
                f"snapshot: median {float(change.median()):.3f}, max {float(change.max()):.3f}.",
            ))
    if not section.images:
        section.note = ("No filter history: train with cnnkit.train.FilterEvolutionCallback (its state is kept in "
                        "checkpoints/last.ckpt) or pass evolution=.")
    return section


def _conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]


def _feature_layer(model: nn.Module) -> str | None:
    """The last conv layer that is not the output layer (the last conv, if there is only one)."""
    convs = _conv_layers(model)
    if not convs:
        return None
    return convs[-2][0] if len(convs) > 1 else convs[-1][0]


def _model_sections(
    model: nn.Module,
    input_shape: Sequence[int] | None,
    samples: Sequence[tuple[Any, Any]] | None,
    class_names: Sequence[str] | None,
    writer: _Writer,
) -> list[_Section]:
    from cnnkit.explainers import summary as summarise

    summary = _Section("summary", "Model summary")
    if input_shape is None and samples:
        input_shape = tuple(samples[0][0].shape)
    if input_shape is None:
        summary.note = "No input_shape given (CLI: --input 3x64x64), so no summary table."
    else:
        summary.pre = str(summarise(model, tuple(input_shape)))
    sections = [summary]
    titles = [("filters", "First-layer filters and weight gradients"), ("activations", "Activations"),
              ("gradcam", "Grad-CAM"), ("tsne", "t-SNE of pooled features"),
              ("predictions", "Predicted vs true labels")]
    if not samples:
        sections.append(_filters_section(model, writer))
        sections += [_Section(i, t, note="No samples given (samples=[(image, label), …]).") for i, t in titles[1:]]
        return sections
    images = torch.stack([torch.as_tensor(s[0]) for s in samples]).float()
    labels = [torch.as_tensor(s[1]) for s in samples]
    segmentation = labels[0].dim() == 2
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    images = images.to(device)
    was_training = model.training
    model.eval()
    try:
        sections.append(_filters_section(model, writer, images, labels, segmentation))
        sections.append(_activations_section(model, images, writer))
        with torch.no_grad():
            logits = model(images)
        targets = [_dominant(lab) for lab in labels] if segmentation else [int(lab) for lab in labels]
        sections.append(_gradcam_section(model, images, targets, segmentation, class_names, writer))
        sections.append(_tsne_section(model, images, targets, segmentation, class_names, writer))
        sections.append(_predictions_section(images, labels, logits, segmentation, class_names, writer))
    finally:
        model.train(was_training)
    return sections


def _loss(logits: Tensor, labels: list[Tensor], segmentation: bool) -> Tensor:
    target = torch.stack([lab.long() for lab in labels]).to(logits.device) if segmentation \
        else torch.tensor([int(lab) for lab in labels], device=logits.device)
    return F.cross_entropy(logits, target, ignore_index=_IGNORE)


def _filters_section(model, writer, images=None, labels=None, segmentation=False) -> _Section:
    """The first-layer filter grid, and its weight-gradient grid when samples are given."""
    from cnnkit.inspect import Recorder
    from cnnkit.render import filter_grid

    section = _Section("filters", "First-layer filters and weight gradients")
    convs = _conv_layers(model)
    if not convs:
        section.note = "The model has no Conv1d / Conv2d layer."
        return section
    name, conv = convs[0]
    if images is None:
        weight = conv.weight.detach().cpu()
        section.images.append(_Image(writer.png(filter_grid(weight, zoom=_zoom(weight.shape[-1], 24)),
                                                f"filters_{name}"),
                                     f"Filters of the first conv layer {name}", f"Filters of layer {name}."))
        section.note = "No samples given, so no weight gradients."
        return section
    saved = {p: p.grad for p in model.parameters()}  # leave the caller's .grad as it was
    try:
        with Recorder(model, name, activations=False, weight_grads=True) as rec:
            _loss(model(images), labels, segmentation).backward()
        grad = rec.weight_grad(name).cpu()
    finally:
        for p, g in saved.items():
            p.grad = g
    weight = conv.weight.detach().cpu()
    zoom = _zoom(weight.shape[-1], 24)
    section.intro = (f"Layer {name} ({type(conv).__name__}, weight {tuple(weight.shape)}). Gradient of the "
                     f"cross-entropy of {len(images)} sample(s), one forward/backward pass in eval mode.")
    section.images.append(_Image(writer.png(filter_grid(weight, zoom=zoom), f"filters_{name}"),
                                 f"Filters of the first conv layer {name}", "Weights"))
    section.images.append(_Image(writer.png(filter_grid(grad, zoom=zoom), f"filter_grads_{name}"),
                                 f"Weight gradients of the first conv layer {name}", "∂loss/∂weight"))
    return section


def _activations_section(model, images, writer) -> _Section:
    from cnnkit.inspect import Recorder
    from cnnkit.render import activation_grid

    section = _Section("activations", "Activations")
    names = [n for n, _ in _conv_layers(model)][:_MAX_ACTIVATION_LAYERS]
    if not names:
        section.note = "The model has no Conv1d / Conv2d layer to record."
        return section
    shown = images[:_MAX_SHOWN]
    with Recorder(model, names) as rec, torch.no_grad():
        model(shown)
    section.intro = f"Outputs of the first {len(names)} conv layer(s), one tile per channel, shared scale per grid."
    for i in range(len(shown)):
        for name in names:
            act = rec.activation(name).cpu()
            grid = activation_grid(act, sample=i, zoom=_zoom(act.shape[-1], 48))
            section.images.append(_Image(writer.png(grid, f"activations_{i}_{name}"),
                                         f"Activations of layer {name} for sample {i}", f"sample {i}, layer {name}"))
    return section


def _dominant(label: Tensor) -> int:
    valid = label[label != _IGNORE].long()
    return int(torch.bincount(valid.flatten()).argmax()) if valid.numel() else 0


def _class_name(k: int, class_names: Sequence[str] | None) -> str:
    return f"{k}: {class_names[k]}" if class_names is not None and k < len(class_names) else str(k)


def _gradcam_section(model, images, targets, segmentation, class_names, writer) -> _Section:
    from matplotlib import colormaps

    from cnnkit.inspect import grad_cam
    from cnnkit.render import image_to_rgb

    section = _Section("gradcam", "Grad-CAM")
    layer = _feature_layer(model)
    if layer is None or images.dim() != 4:
        section.note = "Grad-CAM needs a 2-D model with a conv layer."
        return section
    shown = images[:_MAX_SHOWN]
    cam = grad_cam(model, shown, layer, target=targets[:len(shown)]).cpu().numpy()
    heat = colormaps["inferno"](cam)[..., :3] * 255.0
    rgb = image_to_rgb(shown.cpu()).astype(np.float64)
    blended = np.clip(np.round(0.5 * rgb + 0.5 * heat), 0, 255).astype(np.uint8)
    what = "the class with the most labelled pixels" if segmentation else "the true class"
    section.intro = f"Grad-CAM at layer {layer} for {what}; bright = supports that class."
    for i in range(len(shown)):
        zoom = _zoom(blended.shape[1], 160)
        big = blended[i].repeat(zoom, 0).repeat(zoom, 1)
        cls = _class_name(targets[i], class_names)
        section.images.append(_Image(writer.png(big, f"gradcam_{i}"), f"Grad-CAM for class {cls} on sample {i}",
                                     f"sample {i}, class {cls}"))
    return section


def _tsne_section(model, images, targets, segmentation, class_names, writer) -> _Section:
    from cnnkit.inspect import Recorder, tsne_plot

    section = _Section("tsne", "t-SNE of pooled features")
    layer = _feature_layer(model)
    n = len(images)
    if layer is None:
        section.note = "No conv layer to take features from."
        return section
    if n < 4:
        section.note = f"t-SNE needs at least 4 samples. Received {n}."
        return section
    with Recorder(model, layer) as rec, torch.no_grad():
        model(images)
    names = class_names if class_names is not None else None
    writer_name = writer.name("tsne")
    tsne_plot(rec.activation(layer), np.asarray(targets), writer.folder / writer_name,
              perplexity=min(30.0, (n - 1) / 3), class_names=names, title=f"layer {layer}")
    label = "class with the most pixels" if segmentation else "label"
    section.intro = f"{n} samples, features of layer {layer} averaged over space, coloured by {label}."
    section.images.append(_Image(writer_name, f"t-SNE of pooled features of layer {layer}, coloured by {label}"))
    return section


def _predictions_section(images, labels, logits, segmentation, class_names, writer) -> _Section:
    from cnnkit.render import legend, overlay

    section = _Section("predictions", "Predicted vs true labels")
    if not segmentation:
        predicted = logits.argmax(1).tolist()
        rows = [{"name": f"sample {i}", "cells": [_cell(f"predictions/true/{i}", _class_name(int(t), class_names)),
                                                  _cell(f"predictions/predicted/{i}", _class_name(p, class_names))]}
                for i, (t, p) in enumerate(zip(labels, predicted))]
        section.table = {"header": ["sample", "true", "predicted"], "rows": rows, "summary": []}
        return section
    predicted = logits.argmax(1).cpu()
    num_classes = logits.shape[1]
    names = list(class_names) if class_names is not None else [f"class {k}" for k in range(num_classes)]
    section.images.append(_Image(writer.png(legend(names[:num_classes], ignore_name="unlabelled"), "legend"),
                                 "Legend: colour of each class", "Legend"))
    for i in range(min(len(images), _MAX_SHOWN)):
        image = images[i].cpu()
        zoom = _zoom(image.shape[-1], 160)
        for kind, lab in (("true", labels[i]), ("predicted", predicted[i])):
            drawn = overlay(image, lab.long().cpu().numpy(), alpha=0.5, ignore_index=_IGNORE)
            drawn = drawn.repeat(zoom, 0).repeat(zoom, 1)
            section.images.append(_Image(writer.png(drawn, f"{kind}_{i}"), f"{kind.capitalize()} labels of sample {i}",
                                         f"sample {i}: {kind}"))
    return section


# -- the page ------------------------------------------------------------------------------------------


def _render_html(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("cnnkit.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def write_report(
    run_dir: str | os.PathLike,
    *,
    model: nn.Module | None = None,
    input_shape: Sequence[int] | None = None,
    samples: Sequence[tuple[Any, Any]] | None = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    evolution=None,
    sections: Sequence[ReportSection] = (),
    report_dir: str | os.PathLike | None = None,
) -> Path:
    """Write ``run_dir/report/report.html`` (and its PNG images beside it) for a training run.

    Sections, each shown when its data exists (else a note says what is missing): training curves and the
    per-class IoU of the last validation row (from ``logs/**/metrics.csv``), the model summary, filter
    evolution (from the :class:`~cnnkit.train.FilterEvolutionCallback` state in ``checkpoints/last.ckpt``, or
    ``evolution``), first-layer filters and their weight gradients, activations, Grad-CAM, t-SNE of pooled
    features and predicted-vs-true overlays (from ``model`` and ``samples``). The model is used as given (load
    trained weights first, e.g. with :func:`load_run_weights`); its mode and ``.grad`` are restored.

    Args:
        run_dir: The folder given to :func:`cnnkit.train.fit`.
        model: The network (not the Lightning task), for the summary and every sample-based section.
        input_shape: One sample's shape without batch, for the summary; default the first sample's shape.
        samples: ``[(image (C, H, W), label), …]``; label is an (H, W) label map (segmentation; −100 is
            unlabelled) or an int class. Up to 4 are drawn; t-SNE uses all (at least 4).
        class_names: Names by class index, for the legend, Grad-CAM captions and the IoU table.
        title: Page title (default: the run folder's name).
        evolution: A :class:`~cnnkit.inspect.FilterEvolution` to draw instead of the one in ``last.ckpt``.
        sections: :class:`ReportSection` objects of your own (e.g. a data summary or a baseline), shown first.
        report_dir: Folder of the page and its images (default ``run_dir/report``).

    The folder's ``cnnkit-report.json`` lists the files written. An earlier report there is replaced only if
    cnnkit wrote it (the list says so) and this call writes every section of its own that it had: only the
    files on its list that still hold what it wrote (SHA-256) are removed, anything else in the folder is kept
    and never written over. A richer
    report (``cnnkit train``/``demo`` add *Data* and *Held-out evaluation*) is kept and this call refused:
    write into another ``report_dir``.

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: if ``run_dir`` is not a folder (a :class:`CnnkitError` too).
        CnnkitError: if there is nothing at all to report (no metrics, no filter history, no model), if the
            report folder holds a report that cnnkit did not write or a richer one, or if
            ``checkpoints/last.ckpt`` is damaged.

    Warns:
        UserWarning: when the run has no metrics.csv (the report is still written with what there is).
    """
    from cnnkit.train.rundir import MissingRunFileError

    run = Path(run_dir)
    if not run.is_dir():
        raise MissingRunFileError(f"run_dir must be an existing folder. Received run_dir={os.fspath(run_dir)!r}.")
    if samples is not None and (isinstance(samples, (str, bytes)) or
                                not all(isinstance(s, (tuple, list)) and len(s) == 2 for s in samples)):
        raise ShapeError("samples must be a list of (image, label) pairs. "
                         f"Received samples of type {type(samples).__name__}.")
    if model is not None and not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module. Received {type(model).__name__}.")
    sections = list(sections)
    for section in sections:
        if not isinstance(section, ReportSection):
            raise ArgumentTypeError("sections must hold cnnkit.report.ReportSection objects. "
                            f"Received {type(section).__name__}.")
    rows = read_metrics(run)
    has_history = evolution is not None or bool(_evolution_states(run))
    if not rows and not has_history and model is None and not sections:
        raise CnnkitError(
            f"Nothing to report in run_dir {str(run)!r}: no logs/version_*/metrics.csv, no FilterEvolutionCallback "
            "state in checkpoints/last.ckpt, and no model given."
        )
    if not rows:
        warnings.warn(f"run_dir {str(run)!r} has no logs/version_*/metrics.csv: the report has no training curves "
                      "and no IoU table.", UserWarning, stacklevel=2)
    folder = run / REPORT_DIR if report_dir is None else Path(report_dir)
    kept = _clear_earlier_report(folder, [section.title for section in sections])
    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder, kept)
    parts = [_user_section(i, section, writer) for i, section in enumerate(sections)]
    parts += [_curves_section(rows, writer, run), _iou_section(rows, class_names),
              _evolution_section(run, evolution, writer)]
    if model is not None:
        parts += _model_sections(model, input_shape, samples, class_names, writer)
    else:
        parts.append(_Section("model", "Model", note="No model given (CLI: --model file.py:build): no summary, "
                                 "filters, activations, Grad-CAM, t-SNE or prediction overlays."))
    html = _render_html({"title": title if title is not None else run.resolve().name, "run_dir": str(run),
                         "sections": parts})
    path = folder / "report.html"
    path.write_text(html, encoding="utf-8")
    from cnnkit.train.rundir import write_report_manifest

    write_report_manifest(folder, [*writer.written, path.name], [section.title for section in sections])
    return path


def _clear_earlier_report(folder: Path, titles: Sequence[str]) -> set[str]:
    """Remove the files of an earlier report in ``folder`` that cnnkit wrote, if this call replaces it.

    Returns the names of the files left in the folder (never written over). Raises :class:`CnnkitError`
    if the folder holds a report that is not on a cnnkit list, or one with sections this call lacks.
    """
    from cnnkit.train.rundir import REPORT_MANIFEST, read_report_manifest

    if folder.exists() and not folder.is_dir():
        raise CnnkitError(f"The report folder {str(folder)!r} is a file. Choose another folder for the report.")
    if not folder.is_dir():
        return set()
    names = {p.name for p in folder.iterdir()}
    manifest = read_report_manifest(folder)
    if manifest is None:  # no list, or one that cannot be read: nothing here is known to be cnnkit's
        if "report.html" in names:
            raise CnnkitError(
                f"{str(folder / 'report.html')!r} exists and is not on the list of files cnnkit wrote "
                f"({REPORT_MANIFEST}); it is kept and nothing was written. Move it away, or write this report into "
                "another folder (report_dir=..., on the command line --out DIR)."
            )
        return names
    missing = [t for t in manifest["sections"] if t not in titles]
    if missing:
        raise CnnkitError(
            f"{str(folder / 'report.html')!r} holds sections that this report cannot write ("
            + ", ".join(repr(t) for t in missing) + ", from cnnkit train or cnnkit demo); it is kept and nothing "
            "was written. Write this report into another folder (report_dir=..., on the command line --out DIR)."
        )
    for name in manifest["files"]:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    (folder / REPORT_MANIFEST).unlink(missing_ok=True)
    left = {p.name for p in folder.iterdir()}
    if "report.html" in left:
        raise CnnkitError(
            f"{str(folder / 'report.html')!r} is not on the list of files cnnkit wrote ({REPORT_MANIFEST}); it is "
            "kept. Move it away, or write this report into another folder (report_dir=..., --out DIR)."
        )
    return left
