"""``write_report``: the page (Jinja2, autoescaped) and the report folder it is written into.

Collecting (:mod:`cnnkit.report.reading`), building the sections and their pictures
(:mod:`cnnkit.report.sections`) and templating (here) are kept apart. Every section is optional: it appears
when its data exists, otherwise a short note says what is missing and how to get it.

Layout written::

    run_dir/report/report.html          the page (relative image paths; open it straight from the file system)
    run_dir/report/*.png                its images
    run_dir/report/cnnkit-report.json   the list of files written (what a later report may replace)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.errors import ArgumentTypeError, CnnkitError, ShapeError
from cnnkit.report.reading import evolution_states, read_metrics
from cnnkit.report.sections import Context, ReportSection, Writer, build_sections, central_crop

__all__ = ["REPORT_DIR", "write_report"]

REPORT_DIR = "report"
"""Folder of ``run_dir`` that holds ``report.html`` and its images."""


def _render_html(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("cnnkit.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def _check_names(values, name: str, count: int | None) -> list[str] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not all(isinstance(v, str) for v in values):
        raise ShapeError(f"{name} must be a sequence of strings. Received {name}={values!r}.")
    if count is not None and len(values) != count:
        raise ShapeError(f"{name} must hold one name per {'sample' if name == 'sample_names' else 'band'} "
                         f"({count}). Received {len(values)} names.")
    return list(values)


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
    sample_names: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    validity_band: bool = False,
    rgb_bands: Sequence[int] | None = None,
) -> Path:
    """Write ``run_dir/report/report.html`` (and its PNG images beside it) for a training run.

    Sections, each shown when its data exists (else a note says what is missing), in this order: your own ``sections``;
    training curves and the per-class IoU of the last validation row (from ``logs/**/metrics.csv``); then, from
    ``model`` and ``samples``: one row per sample (image, true labels, predicted labels, an error map and the
    confidence, label panels opaque in exactly the legend's colours), a t-SNE of pixel features (up to 500 pixels per
    class, drawn at random; all of a class that has fewer), activations (one grid per layer, channels numbered, with a
    colour bar), Grad-CAM, first-layer filters and their weight gradients (columns named by band); filter evolution
    (from the :class:`~cnnkit.train.FilterEvolutionCallback` state in ``checkpoints/last.ckpt``, or ``evolution``;
    columns named by training step); the model summary. The model is used as given (load trained weights first, e.g.
    with :func:`load_run_weights`); its mode and ``.grad`` are restored.

    Args:
        run_dir: The folder given to :func:`cnnkit.train.fit`.
        model: The network (not the Lightning task), for the summary and every sample-based section.
        input_shape: One sample's shape without batch, for the summary; default the first sample's shape.
        samples: ``[(image (C, H, W), label), …]``; label is an (H, W) label map (segmentation; −100 is
            unlabelled) or an int class. Samples may differ in size. The first 8 get a row; t-SNE uses all. A
            segmentation sample longer than 512 px on a side is used as its central 512×512 crop (the page says
            so).
        class_names: Names by class index, for the legend, Grad-CAM captions and the IoU table.
        title: Page title (default: the run folder's name).
        evolution: A :class:`~cnnkit.inspect.FilterEvolution` to draw instead of the one in ``last.ckpt``.
        sections: :class:`ReportSection` objects of your own (e.g. a data summary or a baseline), shown first;
            a section's ``replaces`` leaves out built-in sections it makes redundant.
        report_dir: Folder of the page and its images (default ``run_dir/report``).
        sample_names: A name per sample (e.g. its file name) for the rows and captions (default
            ``"sample <i>"``).
        band_names: A name per input band (filter columns, the image composite's caption); default
            ``"band <i>"``, and ``"validity"`` for the last one with ``validity_band``.
        validity_band: The last input band is a validity band (1 = data, 0 = none; what cnnkit train and demo
            feed the network): pixels where it is 0 are drawn as "no data", and the filters say so.
        rgb_bands: The bands drawn as red, green, blue (or one band as grey) in the image panels; default the bands
            ``band_names`` names red, green and blue (case-insensitive), else the first three (the first one for
            fewer than three data bands).

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
    names = _check_names(sample_names, "sample_names", len(samples) if samples is not None else None)
    if validity_band not in (True, False):
        raise ShapeError(f"validity_band must be True or False. Received validity_band={validity_band!r}.")
    rows = read_metrics(run)
    has_history = evolution is not None or bool(evolution_states(run))
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
    writer = Writer(folder, kept)
    device = next((p.device for p in model.parameters()), torch.device("cpu")) if model is not None else None
    images = [torch.as_tensor(s[0]).float().to(device) for s in samples or ()] if model is not None else []
    labels = [torch.as_tensor(s[1]) for s in samples or ()] if model is not None else []
    full_sizes = []
    for i, (image, label) in enumerate(zip(images, labels)):
        images[i], labels[i], cut = central_crop(image, label)
        full_sizes.append(tuple(image.shape[1:]) if cut else None)
    channels = images[0].shape[0] if images else None
    context = Context(run, rows, writer, model=model, input_shape=input_shape, images=images, labels=labels,
                      names=names or [f"sample {i}" for i in range(len(images))], class_names=class_names,
                      band_names=_check_names(band_names, "band_names", channels) or [],
                      validity_band=validity_band, rgb_bands=rgb_bands, evolution=evolution, full_sizes=full_sizes)
    parts = build_sections(context, sections)
    html = _render_html({"title": title if title is not None else run.resolve().name, "run_dir": str(run),
                         "sections": parts})
    path = folder / "report.html"
    from cnnkit.train.rundir import write_report_manifest

    # The page is staged, listed, then renamed into place: a run killed at any point leaves no report.html that the
    # list does not name (the next report, a --resume's, replaces what the list names and keeps anything else).
    staged = folder / ".report.html.partial"
    staged.unlink(missing_ok=True)  # cnnkit's own temporary name, left by a report killed while it was written
    staged.write_text(html, encoding="utf-8")
    write_report_manifest(folder, writer.written, [section.title for section in sections],
                          staged={path.name: staged})
    os.replace(staged, path)
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
