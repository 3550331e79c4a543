"""``cnnkit predict``: apply a trained run to new images and to whole scenes.

:func:`load_predictor` rebuilds a run's network from its manifest (by builder name from
:data:`cnnkit.models.MODELS` — a run folder never makes cnnkit import code) and its safetensors weights, with
the preprocessing training applied. :func:`predict_files` runs it over files, folders or globs:

* images up to ``max_pixels`` are read whole, grouped by size and run as padded batches through
  :func:`cnnkit.masked` (each result equal to that image alone);
* larger scenes are read, run and written tile by tile (:meth:`~cnnkit.predict.Predictor.predict_scene`),
  the result identical to the whole-image pass, memory following the tile, not the scene.

Per input it writes the label map (palette PNG; a Cloud-Optimized GeoTIFF too with ``tiff=True``), the image beside
its labels with the legend (``STEM_overlay.png``) and, on request, probabilities and confidence (COGs, ``uint8``
quantised or float16). The COGs lie on the input's CRS and transform.

A run trained on image time series predicts series (:func:`predict_series`, :func:`predict_series_files`): whole,
or, over ``max_pixels`` pixel-dates, in tiles in space with every date kept, equal to the whole series
(:mod:`cnnkit.predict.series`).
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import torch

from cnnkit._checks import check_int
from cnnkit._tensors import argmax
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.predict import Prediction, Predictor, Preprocessing
from cnnkit.predict.memory import release_free_memory
from cnnkit.predict.outputs import (
    PROBABILITY_DTYPES,
    Fanout,
    PalettePngWriter,
    Subsampled,
    label_cog,
    palette_png,
    save_png,
    score_cog,
    side_by_side,
)
from cnnkit.predict.scene import IMAGE_EXTENSIONS, Scene, open_scene
from cnnkit.rasters import CogWriter, Georeference, read_georeference
from cnnkit.rasters.destination import FolderLock, Staging, prepare_folder, remove_leftovers
from cnnkit.rasters.reading import is_subdataset_name, resolve_raster, subdataset_stem
from cnnkit.train.rundir import WEIGHTS, read_manifest

__all__ = ["PredictionRun", "SeriesInput", "days_reference", "expand_inputs", "expand_series_inputs", "input_stem",
           "is_series_run", "load_predictor", "load_series_model", "predict_files", "predict_series",
           "predict_series_files", "series_inputs"]

PREVIEW_SIDE = 1024
"""Overlays of scenes with a longer side are drawn at a reduced scale."""


def load_predictor(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[Predictor, dict]:
    """The run's network and preprocessing as a :class:`~cnnkit.predict.Predictor`, and its manifest.

    Raises:
        CnnkitError: no manifest (an older run, or not a run folder), an unknown builder (a network of the
            user's own: rebuild it and use :class:`~cnnkit.predict.Predictor` directly), missing or damaged
            weights.
    """
    manifest = read_manifest(run_dir)
    if is_series_run(manifest):
        raise CnnkitError(f"The run {os.fspath(run_dir)!r} was trained on image time series: it predicts from a "
                          "whole series (T dates), not from single images. Use cnnkit predict on series stacks or "
                          "per-date folders (it recognises the run), or load_series_model / predict_series_files.")
    classes, prep = manifest["classes"], manifest.get("input")
    if prep is None:
        raise CnnkitError(f"The run {os.fspath(run_dir)!r} was trained on tensors, not files: its manifest does not "
                          "say how files become the network's input. Use cnnkit.predict.Predictor in Python.")
    model = _run_network(run_dir, manifest)
    preprocessing = Preprocessing(
        mean=tuple(prep["mean"]), std=tuple(prep["std"]), nodata=prep.get("nodata"),
        bands=tuple(prep["bands"]) if prep.get("bands") is not None else None,
        multiple_of=int(prep.get("multiple_of", 1)), validity_band=bool(prep.get("validity_band", True)))
    palette = [tuple(c) for c in classes.get("palette", [])] or None
    return Predictor(model, preprocessing, classes["names"], palette=palette, device=device), manifest


def _run_network(run_dir: str | os.PathLike, manifest: dict) -> torch.nn.Module:
    """The run's network rebuilt from its manifest's spec by :func:`cnnkit.models.build`, the weights file read
    inside the run folder only (no path or link out of it), checked against the network on the meta device
    before anything is allocated, every value finite."""
    import cnnkit.keras.network  # noqa: F401  (registers KerasNetwork: a run may name a converted Keras network)
    from cnnkit.models import build

    model_info = manifest["model"]
    if model_info["spec"] is None:
        raise CnnkitError(
            f"The run {os.fspath(run_dir)!r} was trained with a network of your own, which its manifest does not "
            f"name; cnnkit does not import code named in a run folder. Build the network in Python, load {WEIGHTS} "
            "into it and use cnnkit.predict.Predictor (or register a builder with cnnkit.models.register and "
            "train with it, so that the run names it).")
    try:
        model = build(model_info["spec"], in_channels=model_info["in_channels"],
                      num_classes=model_info["num_classes"], weights=model_info["weights"], root=run_dir)
    except CnnkitError as error:
        text = f"The run {os.fspath(run_dir)!r} cannot be rebuilt: {error}"
        if isinstance(error, UnsupportedError) and "never imports code" not in text:
            text += " (cnnkit does not import code named in a run folder: only the networks it knows are rebuilt.)"
        try:
            wrapped = type(error)(text)
        except TypeError:
            wrapped = CnnkitError(text)
        raise wrapped from None
    return model.eval()


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, in name order), globs and subdataset names → image files, each once, in the
    order given.

    A subdataset named as GDAL names it (``NETCDF:"f.nc":ndvi``, ``HDF5:"f.h5"://bands``) is checked at once — its
    file must be a local regular file that lists it (:func:`~cnnkit.rasters.reading.resolve_raster`) — and given as
    the name its file lists; its outputs are named ``f_ndvi`` (:func:`input_stem`). Two inputs whose outputs would
    share a name are refused.
    """
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise CnnkitError(f"The folder {text!r} holds no image ({', '.join(IMAGE_EXTENSIONS)}).")
            found += files
        elif path.is_file():
            found.append(path)
        elif is_subdataset_name(text):
            name, _ = resolve_raster(text)
            found.append(Path(name))
        elif glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(text) if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise CnnkitError(f"The pattern {text!r} matches no image.")
            found += files
        else:
            raise CnnkitError(f"Input {text!r} does not exist.")
    unique, seen = [], set()
    for path in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    stems: dict[str, Path] = {}
    for path in unique:
        stem = input_stem(path)
        if stem in stems:
            raise CnnkitError(f"Two inputs share the name {stem!r} ({stems[stem]} and {path}); their outputs "
                              "would overwrite each other. Predict them into different --out folders.")
        stems[stem] = path
    return unique


def input_stem(path: str | os.PathLike) -> str:
    """The outputs' ``STEM`` of an input of :func:`expand_inputs`: a file's stem, or for a subdataset its file's
    stem and its name in safe characters (:func:`~cnnkit.rasters.reading.subdataset_stem`).

    Examples:
        >>> input_stem("scenes/a.tif"), input_stem('NETCDF:"scenes/f.nc":ndvi')
        ('a', 'f_ndvi')
    """
    return subdataset_stem(path) if is_subdataset_name(path) else Path(path).stem


@dataclass
class PredictionRun:
    """What :func:`predict_files` did.

    Attributes:
        files: Output files written, per input.
        pixels: Pixels predicted (with data).
        class_pixels: Pixels predicted per class.
        tiled: Inputs run tile by tile.
        seconds: Wall time.
        resumed: Inputs skipped by ``resume``: an interrupted run had finished them.
    """

    files: dict[Path, list[Path]] = field(default_factory=dict)
    pixels: int = 0
    class_pixels: np.ndarray | None = None
    tiled: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    resumed: list[Path] = field(default_factory=list)

    def summary(self, class_names: Sequence[str]) -> str:
        counts = self.class_pixels if self.class_pixels is not None else np.zeros(len(class_names))
        total = max(int(counts.sum()), 1)
        shares = ", ".join(f"{n} {100 * c / total:.1f} %" for n, c in zip(class_names, counts))
        return (f"{len(self.files)} images, {self.pixels:,} pixels with data in {self.seconds:.1f} s "
                f"({self.pixels / max(self.seconds, 1e-9) / 1e6:.2f} Mpx/s); predicted: {shares}"
                + (f"; {len(self.tiled)} run in tiles" if self.tiled else "")
                + (f"; {len(self.resumed)} finished before (--resume)" if self.resumed else ""))


def _check_out(out: Path, stems: list[str], overwrite: bool) -> None:
    """Refuse to write over files named after these output ``stems`` unless asked (nothing else in ``out`` is
    touched); ``out`` must already be prepared (:func:`~cnnkit.rasters.destination.prepare_folder`)."""
    taken = _taken(out, stems)
    if taken and not overwrite:
        raise CnnkitError(f"--out {os.fspath(out)!r} already holds predictions for these inputs ("
                          + ", ".join(sorted(taken)[:5]) + (" …" if len(taken) > 5 else "")
                          + "); pass --overwrite to replace them, or choose another --out.")


def _taken(out: Path, stems: Sequence[str]) -> list[str]:
    return [p.name for p in out.iterdir() if any(p.name.startswith(f"{stem}_") for stem in stems)]


STATE_NAME = ".cnnkit-predict.json"
"""What a ``cnnkit predict`` run into a folder has finished, and with which settings (``--resume`` reads it)."""


def _fingerprint(predictor: Predictor) -> str:
    """A digest of the network's weights, its preprocessing and classes: a resumed run must use the same."""
    import hashlib

    digest = hashlib.sha256()
    for name, value in predictor.model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(repr((predictor.preprocessing, predictor.class_names, predictor.palette,
                        predictor.ignore_value)).encode())
    return digest.hexdigest()[:32]


class _State:
    """The run's record in its output folder: settings and, per input, the outputs committed (renamed into place)."""

    def __init__(self, out: Path, settings: dict):
        self.path, self.settings, self.done = out / STATE_NAME, settings, {}

    @staticmethod
    def read(out: Path) -> dict | None:
        path = out / STATE_NAME
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not isinstance(state.get("done"), dict):
            return None
        return state

    def save(self) -> None:
        from cnnkit.rasters.destination import Staging

        with Staging() as staging:
            staging.path(self.path).write_text(json.dumps({"settings": self.settings, "done": self.done}, indent=1))

    def finish(self, stem: str, files: list[Path]) -> None:
        self.done[stem] = [f.name for f in files]
        self.save()


def _plan(out: Path, files: list[Path], settings: dict, overwrite: bool, resume: bool) -> tuple[list[Path], _State]:
    """Which inputs to predict (all of them, or with ``resume`` those an interrupted run did not finish), checked
    against what ``out`` holds; the run's state to record progress in."""
    stems = [input_stem(p) for p in files]
    previous = _State.read(out)
    state = _State(out, settings)
    if resume and previous is not None:
        if previous.get("settings") != settings:
            differ = sorted(k for k in set(settings) | set(previous.get("settings") or {})
                            if settings.get(k) != (previous.get("settings") or {}).get(k))
            raise CnnkitError(f"--resume: the run that wrote {os.fspath(out)!r} used other settings ("
                              f"{', '.join(differ)} differ); resume it with the same run and options, or pass "
                              "--overwrite to start again.")
        done = {stem: names for stem, names in previous["done"].items()
                if stem in stems and all((out / name).is_file() for name in names)}
        state.done = done
        return [p for p in files if input_stem(p) not in done], state
    taken = _taken(out, stems)
    if taken and not overwrite and not resume:
        interrupted = previous is not None and any(stem not in previous["done"] for stem in stems)
        raise CnnkitError(f"--out {os.fspath(out)!r} already holds predictions for these inputs ("
                          + ", ".join(sorted(taken)[:5]) + (" …" if len(taken) > 5 else "") + ")"
                          + ("; some are from an interrupted run: pass --resume to finish it" if interrupted else "")
                          + "; pass --overwrite to replace them, or choose another --out.")
    if previous is not None and not overwrite:
        state.done = {k: v for k, v in previous["done"].items() if k not in stems} if (
            previous.get("settings") == settings) else {}
    return files, state


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    band_count: int | None = None,
    tiff: bool = False,
    probabilities: bool = False,
    confidence: bool = False,
    max_pixels: int = 1_048_576,
    tile: int = 512,
    batch_size: int = 8,
    overwrite: bool = False,
    resume: bool = False,
    external_sources: bool = False,
    rgb_bands: Sequence[int] | None = None,
    probability_dtype: str = "uint8",
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = print,
) -> PredictionRun:
    """Predict every input image and write the outputs into ``out``.

    Args:
        predictor: From :func:`load_predictor` (or your own).
        inputs: Files, folders or glob patterns.
        out: Output folder (created). Existing outputs of the same names are refused unless ``overwrite``.
        band_count: Bands of the files the run was trained on (decides a 3-D TIFF's layout; checked).
        tiff: Also write the label map as a Cloud-Optimized GeoTIFF (on the input's CRS and transform, the palette
            as its colour table, the no-data label as its nodata, the class names in its metadata).
        probabilities: Write ``STEM_probabilities.tif``, a COG of ``K`` bands.
        confidence: Write ``STEM_confidence.tif``, a COG of the winning class's probability.
        max_pixels: Images with more pixels are run tile by tile (exactly equal to the whole pass).
        tile: Side of a tile in pixels.
        batch_size: Images per padded batch.
        overwrite: Replace outputs of the same names.
        resume: Finish what an interrupted run into ``out`` left: inputs whose outputs were all committed are
            skipped, the others predicted again (the outputs equal those of an uninterrupted run); the settings must
            be those of the interrupted run.
        external_sources: Let a VRT input read files outside its own folder (refused by default).
        rgb_bands: Bands of the input drawn as R, G, B in the overlay (default: the bands the file names red, green
            and blue, else the first three, or grey).
        probability_dtype: How probabilities and confidence are stored: ``"uint8"`` (quantised, a stored ``v``
            meaning ``v / 255``; the scale is recorded in the file) or ``"float16"``.
        progress: Called with (images done, pixels done) after each image or tile.
        log: Called with each line of text to print.

    The output folder is checked (it can be written; not under a file) before anything is read, and locked while
    the run writes into it: a second run naming it is refused, naming this one. Each input's outputs are written
    under hidden temporary names and renamed into place together when all are complete — a symlink under an output
    name is replaced, never written through; a failure (a full disk, a damaged input) leaves nothing under the final
    names. Temporary files an interrupted run left are removed.

    Raises:
        CnnkitError: an input that is damaged, contradicts its own header or exceeds the memory budget (naming it),
            an output folder that cannot be written or is in use, outputs already there (without ``overwrite`` or
            ``resume``), a full disk.
    """
    check_int(max_pixels, "max_pixels")
    check_int(tile, "tile")
    check_int(batch_size, "batch_size")
    if probability_dtype not in PROBABILITY_DTYPES:
        raise ShapeError(f"Unknown probability_dtype {probability_dtype!r}. Expected one of {PROBABILITY_DTYPES}.")
    start = time.perf_counter()
    out = prepare_folder(out)
    files = expand_inputs(inputs)
    settings = {"network": _fingerprint(predictor), "tiff": tiff, "probabilities": probabilities,
                "confidence": confidence, "probability_dtype": probability_dtype,
                "rgb_bands": list(rgb_bands) if rgb_bands is not None else None, "band_count": band_count}
    with FolderLock(out):
        remove_leftovers(out)
        todo, state = _plan(out, files, settings, overwrite, resume)
        run = _predict_into(predictor, todo, out, state, band_count=band_count, tiff=tiff,
                            probabilities=probabilities, confidence=confidence, max_pixels=max_pixels, tile=tile,
                            batch_size=batch_size, rgb_bands=rgb_bands, probability_dtype=probability_dtype,
                            progress=progress, external_sources=external_sources)
    run.resumed = [p for p in files if p not in todo]
    run.seconds = time.perf_counter() - start
    return run


def _predict_into(predictor: Predictor, files: list[Path], out: Path, state: _State | None, *,
                  band_count: int | None, tiff: bool, probabilities: bool, confidence: bool, max_pixels: int,
                  tile: int, batch_size: int, rgb_bands, probability_dtype: str,
                  progress: Callable[[int, int], None] | None, external_sources: bool = False) -> PredictionRun:
    """Predict ``files`` into the prepared, locked folder ``out``: small images in padded batches, larger ones tile
    by tile (:func:`predict_scene_into`); each input's outputs committed together, then recorded in ``state``."""
    names = predictor.class_names
    run = PredictionRun(class_pixels=np.zeros(len(names), dtype=np.int64))
    scenes = []
    try:
        for path in files:
            scenes.append(open_scene(path, band_count, external_sources=external_sources))
        for scene in scenes:
            _check_row_budget(scene, tile, max_pixels)
    except BaseException:
        for scene in scenes:
            scene.close()
        raise
    small = [s for s in scenes if s.height * s.width <= max_pixels]
    large = [s for s in scenes if s.height * s.width > max_pixels]
    done = {"images": 0, "pixels": 0}

    def step(images: int, pixels: int) -> None:
        done["images"] += images
        done["pixels"] += pixels
        if progress is not None:
            progress(done["images"], done["pixels"])

    def committed(scene: Scene, written: list[Path]) -> None:
        run.files[scene.path] = written
        if state is not None:
            state.finish(scene.stem, written)

    # whole images, in padded batches of similar sizes: read in groups so memory stays bounded
    group = max(batch_size, 4 * batch_size)
    for first in range(0, len(small), group):
        part = small[first:first + group]
        raws = []
        for s in part:
            raws.append(torch.from_numpy(s.read()))
            s.close()

        def finished(result, part=part, raws=raws):
            index = next(i for i, s in enumerate(part) if s.stem == result.name)
            with Staging() as staging:
                written = _write(part[index], raws[index].numpy(), result.labels.numpy(), result, predictor, out,
                                 run, staging, tiff=tiff, probabilities=probabilities, confidence=confidence,
                                 rgb_bands=rgb_bands, probability_dtype=probability_dtype)
            committed(part[index], written)
            step(1, int(result.valid.sum()))

        predictor.predict_images(raws, batch_size=batch_size, names=[s.stem for s in part], on_image=finished)
    # scenes larger than max_pixels: tile by tile, read ahead and written behind in background threads
    for scene in large:
        try:
            written = predict_scene_into(scene, predictor, out, run, tile=tile, tiff=tiff,
                                         probabilities=probabilities, confidence=confidence, rgb_bands=rgb_bands,
                                         probability_dtype=probability_dtype,
                                         on_pixels=lambda pixels: step(0, pixels))
        finally:
            scene.close()
        committed(scene, written)
        step(1, 0)
    return run


ROW_BUDGET = 1024 * 2**20
"""Bytes a row of tiles may hold across a scene's width (windows read, labels waiting for the PNG's rows)."""


def _check_row_budget(scene: Scene, tile: int, max_pixels: int) -> None:
    """Refuse a scene so wide that one row of tiles would not fit :data:`ROW_BUDGET`, before anything is computed."""
    if scene.height * scene.width <= max_pixels:
        return
    held = min(tile, scene.height) * scene.width * (scene.bands * 4 + 2)
    if held > ROW_BUDGET:
        raise CnnkitError(f"{scene.path} is {scene.width} pixels wide: a row of {tile}-pixel tiles over {scene.bands} "
                          f"bands would hold {held / 2**20:.0f} MiB, over the {ROW_BUDGET // 2**20} MiB budget. Pass "
                          "a smaller --tile, or check that the file is intact.")


def _label_dtype(predictor: Predictor):
    return np.uint8 if predictor.num_classes < 255 and 0 <= predictor.ignore_value <= 255 else np.int16


def predict_scene_into(scene: Scene, predictor: Predictor, out: Path, run: PredictionRun, *, tile: int, tiff: bool,
                       probabilities: bool, confidence: bool, rgb_bands, probability_dtype: str,
                       on_pixels: Callable[[int], None]) -> list[Path]:
    """One scene over ``max_pixels`` into the prepared folder ``out``: tiles read ahead, run, written behind into the
    label PNG (strip by strip) and COGs under temporary names; the overlay drawn from previews of the image and the
    labels gathered on the way (the scene is read once, its labels never held whole); every output renamed into
    place when all are complete (nothing under a final name on an error). Returns the outputs' final names."""
    stem, names, shape = scene.stem, predictor.class_names, (scene.height, scene.width)
    with Staging() as staging:
        png = PalettePngWriter(staging.path(out / f"{stem}_labels.png"), shape, predictor.num_classes,
                               predictor.palette, predictor.ignore_value)
        writers: dict[str, CogWriter | PalettePngWriter] = {"png": png}
        try:
            if tiff:
                writers["labels"] = label_cog(staging.path(out / f"{stem}_labels.tif"), shape, names,
                                              predictor.palette, predictor.ignore_value, scene.georeference)
            if probabilities:
                writers["probabilities"] = score_cog(staging.path(out / f"{stem}_probabilities.tif"),
                                                     (*shape, len(names)), "probabilities", names, probability_dtype,
                                                     scene.georeference)
            if confidence:
                writers["confidence"] = score_cog(staging.path(out / f"{stem}_confidence.tif"), shape, "confidence",
                                                  names, probability_dtype, scene.georeference)
            step = math.ceil(max(shape) / PREVIEW_SIDE)
            preview = np.zeros((scene.bands, math.ceil(shape[0] / step), math.ceil(shape[1] / step)), np.float32)
            small_labels = Subsampled(shape, step, _label_dtype(predictor))

            def on_read(rows: slice, cols: slice, raw: np.ndarray) -> None:  # every step-th pixel, on the scene's grid
                r, c = -(-rows.start // step) * step, -(-cols.start // step) * step
                part = raw[:, r - rows.start::step, c - cols.start::step]
                preview[:, r // step:r // step + part.shape[1], c // step:c // step + part.shape[2]] = part

            labels = Fanout(png, small_labels, writers.get("labels"))
            _, counts = predictor.predict_scene(scene, tile=tile, labels_out=labels,
                                                probabilities_out=writers.get("probabilities"),
                                                confidence_out=writers.get("confidence"), on_tile=on_pixels,
                                                on_read=on_read)
            # every window is read: the reader's blocks (two rows of blocks across the scene, 90 MB for a
            # 10,980-px-wide uint16 × 4 scene) and GDAL's cached blocks of the file go before the COG copies and the
            # overlay, not after them
            scene.close()
            release_free_memory()  # what the reading, computing and writing threads freed, before the copies
            for writer in writers.values():
                writer.close()
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        _overlay(scene, preview, small_labels.array, predictor, out, rgb_bands, step, staging)
        written = staging.finals
    run.pixels += int(counts.sum())
    run.class_pixels += counts.numpy()
    run.tiled.append(scene.path)
    return written


def _write_labels(scene: Scene, labels: np.ndarray, predictor: Predictor, out: Path, tiff: bool,
                  staging: Staging) -> None:
    stem = scene.stem
    palette_png(staging.path(out / f"{stem}_labels.png"), labels, predictor.num_classes, predictor.palette,
                predictor.ignore_value)
    if tiff:
        with label_cog(staging.path(out / f"{stem}_labels.tif"), labels.shape, predictor.class_names,
                       predictor.palette, predictor.ignore_value, scene.georeference) as cog:
            cog[:, :] = labels


def _overlay(scene: Scene, image: np.ndarray, labels: np.ndarray, predictor: Predictor, out: Path, rgb_bands,
             step: int, staging: Staging) -> None:
    from PIL import Image

    bands = rgb_bands if rgb_bands is not None else scene.rgb_bands
    picture = side_by_side(image, labels, predictor.class_names, predictor.palette, predictor.ignore_value, bands)
    del image
    path = out / (f"{scene.stem}_overlay.png" if step == 1 else f"{scene.stem}_overlay_1to{step}.png")
    save_png(Image.fromarray(picture), staging.path(path))


def _write_scores(result: Prediction, out: Path, stem: str, class_names: Sequence[str], georeference: Georeference,
                  *, probabilities: bool, confidence: bool, dtype: str, staging: Staging) -> None:
    """``STEM_probabilities.tif`` and ``STEM_confidence.tif`` (COGs; 0 where there is no data), as asked."""
    height, width = result.valid.shape
    if probabilities:
        with score_cog(staging.path(out / f"{stem}_probabilities.tif"), (height, width, len(class_names)),
                       "probabilities", class_names, dtype, georeference) as cog:
            cog[:, :] = result.probabilities.permute(1, 2, 0).numpy()
    if confidence:
        with score_cog(staging.path(out / f"{stem}_confidence.tif"), (height, width), "confidence", class_names,
                       dtype, georeference) as cog:
            cog[:, :] = result.confidence.numpy()


def _write(scene: Scene, raw: np.ndarray, labels: np.ndarray, result, predictor: Predictor, out: Path,
           run: PredictionRun, staging: Staging, *, tiff: bool, probabilities: bool, confidence: bool, rgb_bands,
           probability_dtype: str) -> list[Path]:
    """One whole image's outputs under ``staging``'s temporary names; returns their final names."""
    labels = labels.astype(_label_dtype(predictor))
    _write_labels(scene, labels, predictor, out, tiff, staging)
    stem = scene.stem
    _write_scores(result, out, stem, predictor.class_names, scene.georeference, probabilities=probabilities,
                  confidence=confidence, dtype=probability_dtype, staging=staging)
    step = math.ceil(max(scene.height, scene.width) / PREVIEW_SIDE)
    _overlay(scene, raw[:, ::step, ::step], labels[::step, ::step], predictor, out, rgb_bands, step, staging)
    run.pixels += int(result.valid.sum())
    run.class_pixels += result.class_pixels(predictor.num_classes).numpy()
    return staging.finals


# -- image time series -------------------------------------------------------------------------------

def is_series_run(manifest: dict) -> bool:
    """Whether a run manifest (:func:`~cnnkit.train.rundir.read_manifest`) is one of image time series."""
    return manifest.get("task") == "series-segmentation"


def load_series_model(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """A series run's network (eval mode, weights loaded) and its manifest.

    Raises:
        CnnkitError: not a series run, an unknown builder, missing or damaged weights.
    """
    manifest = read_manifest(run_dir)
    if not is_series_run(manifest):
        raise CnnkitError(f"The run {os.fspath(run_dir)!r} is a {manifest.get('task')!r} run, not one of image time "
                          "series.")
    prep = manifest.get("input") or {}
    if not {"mean", "std", "band_count"} <= set(prep):
        raise CnnkitError(f"The series run {os.fspath(run_dir)!r} lacks its band statistics (input.mean, input.std, "
                          "input.band_count). Train the run again.")
    return _run_network(run_dir, manifest).to(device), manifest


def expand_series_inputs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Series inputs: a stack file, a folder of per-date images (one series), a data folder with ``series/`` (each
    of its entries), or a glob; each series once, in the order given."""
    found: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir() and (path / "series").is_dir():
            found += sorted(p for p in (path / "series").iterdir() if not p.name.startswith("."))
        elif path.exists():
            found.append(path)
        elif glob.has_magic(text):
            matched = sorted(Path(p) for p in glob.glob(text))
            if not matched:
                raise CnnkitError(f"The pattern {text!r} matches no series.")
            found += matched
        else:
            raise CnnkitError(f"Input {text!r} does not exist.")
    stems: dict[str, Path] = {}
    for path in found:
        stem = _series_stem(path)
        if stem in stems and stems[stem].resolve() != path.resolve():
            raise CnnkitError(f"Two inputs share the name {stem!r} ({stems[stem]} and {path}); their outputs would "
                              "overwrite each other. Predict them into different --out folders.")
        stems[stem] = path
    return list(dict.fromkeys(stems.values()))


def _series_stem(path: Path) -> str:
    """The outputs' name of a series: a folder's name, a stack file's stem."""
    return path.name if path.is_dir() else path.stem


def _series_georeference(path: Path) -> Georeference:
    """Where a series lies: its stack's CRS and transform, or its folder's first GeoTIFF date's (none for others)."""
    if path.is_dir():
        path = min((p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(".")),
                   default=path)
    return read_georeference(path)


def _series_mask(path: Path) -> Path | None:
    """``masks/STEM.*`` beside the ``series/`` folder that holds ``path``, as training reads it, if there is one."""
    masks = path.parent.parent / "masks"
    if path.parent.name != "series" or not masks.is_dir():
        return None
    found = sorted(masks.glob(f"{_series_stem(path)}.*"))
    return found[0] if found else None


def days_reference(prep: dict) -> date | None:
    """Day 0 of the days the run was trained with (``input.days_reference``, e.g. PASTIS's 2018-09-01), or ``None``:
    January 1 of each series' first year, as :class:`~cnnkit.data.SeriesFolder` counts them."""
    text = prep.get("days_reference")
    if text is None:
        return None
    try:
        if isinstance(text, str) and len(text) == 10:
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise CnnkitError(f"The run's manifest.json: input.days_reference must be a date YYYY-MM-DD (day 0 of the "
                      f"acquisition days). Received {text!r}.")


@dataclass(frozen=True)
class SeriesInput:
    """One series for :func:`predict_series`.

    Attributes:
        name: The outputs' ``STEM``.
        path: The file or folder it comes from (named in messages).
        read: Called with the run manifest's ``input`` object; returns ``(series (T, C, H, W) float32 as stored,
            valid (T, H, W) bool, days (T,) int64)`` — the days counted as training counted them.
        georeference: Where the outputs lie (default: the stack's, or a per-date folder's first GeoTIFF's).
        windows: Called with the manifest's ``input`` object; returns the series opened for reading window by
            window (:class:`~cnnkit.data.series.SeriesWindows`, its days from :func:`days_reference`) or ``None``
            where it is read whole only. A series over ``max_pixels`` is then read tile by tile, never whole.
    """

    name: str
    path: Path
    read: Callable[[dict], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    georeference: Callable[[], Georeference] | None = None
    windows: Callable[[dict], object | None] | None = None


def series_inputs(inputs: Sequence[str | os.PathLike]) -> list[SeriesInput]:
    """:func:`expand_series_inputs` as :class:`SeriesInput`: each read with :func:`~cnnkit.data.series.read_series`
    (the run's band count and nodata, a data folder's ``masks/STEM.*``), its days from its dates; TIFF stacks and
    folders of per-date TIFFs can also be read window by window (:func:`~cnnkit.data.series.open_series`)."""
    from cnnkit.data.series import open_series, read_series

    def reader(path: Path):
        def read(prep: dict):
            series, valid, dates = read_series(path, band_count=int(prep["band_count"]), nodata=prep.get("nodata"),
                                               mask=_series_mask(path), with_dates=True)
            return series, valid, dates.days(days_reference(prep))
        return read

    def windows(path: Path):
        def opened(prep: dict):
            return open_series(path, band_count=int(prep["band_count"]), nodata=prep.get("nodata"),
                               mask=_series_mask(path))
        return opened

    return [SeriesInput(_series_stem(path), path, reader(path), lambda path=path: _series_georeference(path),
                        windows(path)) for path in expand_series_inputs(inputs)]


def predict_series_files(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                         **options) -> PredictionRun:
    """:func:`predict_series` on series stacks, per-date folders, data folders with ``series/`` or globs
    (:func:`expand_series_inputs`); ``options`` as :func:`predict_series` takes them."""
    return predict_series(run_dir, lambda: series_inputs(inputs), out, **options)


def predict_series(
    run_dir: str | os.PathLike,
    inputs: Sequence[SeriesInput] | Callable[[], Sequence[SeriesInput]],
    out: str | os.PathLike,
    *,
    device: str = "cpu",
    tiff: bool = True,
    probabilities: bool = False,
    confidence: bool = False,
    overwrite: bool = False,
    probability_dtype: str = "uint8",
    max_pixels: int = 1_048_576,
    tile: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> PredictionRun:
    """Label maps of series with a series run: ``STEM_labels.png`` (palette PNG) and ``STEM_labels.tif`` (a
    Cloud-Optimized GeoTIFF on the CRS and transform of the stack, or of a folder's first date, when they are
    GeoTIFFs); on request ``STEM_probabilities.tif`` (``(H, W, K)`` softmax) and ``STEM_confidence.tif`` (the
    winning class's probability), COGs stored as ``probability_dtype`` says (``uint8`` quantised to 1/255, or
    ``float16``), 0 where a pixel has no valid date, georeferenced the same way.

    Every series is standardised with the run's band mean and std and called with its acquisition days, as in
    training. A series of more than ``max_pixels`` pixel-dates (``T × H × W``) runs in tiles of ``tile`` pixels a
    side, every date in each tile, with the halo and grid traced from the network
    (:func:`~cnnkit.predict.series.tiled_series_forward`): the result equals the whole series' (for a ConvLSTM
    the halo grows with T; see :mod:`cnnkit.predict.series`) while the network's memory follows the tile. A pixel
    without any valid date gets the label 255 (no data).

    Args:
        run_dir: A series run folder.
        inputs: The series (:func:`series_inputs`), or a function returning them, called after the run is read.
        out: Output folder (created); outputs of the same names are refused unless ``overwrite``.
        device: Where the network runs.
        tiff, probabilities, confidence, probability_dtype: Which outputs, as above.
        max_pixels: Series with more pixel-dates run in tiles.
        tile: Interior side of a tile in pixels (rounded up to the network's grid).
        progress: Called with the series done and the pixels predicted so far.
    """
    check_int(max_pixels, "max_pixels")
    check_int(tile, "tile", 8)
    start = time.perf_counter()
    out = prepare_folder(out)
    model, manifest = load_series_model(run_dir, device)
    prep, classes = manifest["input"], manifest["classes"]
    items = list(inputs() if callable(inputs) else inputs)
    with FolderLock(out):
        remove_leftovers(out)
        _check_out(out, [item.name for item in items], overwrite)
        run = _predict_series_into(model, items, out, prep, classes, device=device, tiff=tiff,
                                   probabilities=probabilities, confidence=confidence,
                                   probability_dtype=probability_dtype, max_pixels=max_pixels, tile=tile,
                                   progress=progress)
    run.seconds = time.perf_counter() - start
    return run


def _tiled_from_windows(model, source, reference, mean: torch.Tensor, std: torch.Tensor, tile: int,
                        geometries) -> tuple[torch.Tensor, np.ndarray]:
    """A series opened by windows (:class:`~cnnkit.data.series.SeriesWindows`) run in tiles: ``(logits (K, H, W), seen
    (H, W))``, ``seen`` True where any date is valid (gathered from the windows read)."""
    from cnnkit.predict.series import tiled_series_windows

    days = source.dates.days(reference)
    seen = np.zeros((source.height, source.width), dtype=bool)

    def read(rows: slice, cols: slice):
        series, valid = source.read(rows, cols)
        seen[rows, cols] = valid.any(0).numpy()  # overlapping windows write the same values
        return torch.where(valid[:, None], (series - mean) / std, torch.zeros(())), valid

    logits = tiled_series_windows(model, read, (source.height, source.width), source.bands, days[None], tile=tile,
                                  geometry=geometries(days))[0].to("cpu")
    return logits, seen


def _predict_series_into(model, items: list[SeriesInput], out: Path, prep: dict, classes: dict, *, device: str,
                         tiff: bool, probabilities: bool, confidence: bool, probability_dtype: str, max_pixels: int,
                         tile: int, progress: Callable[[int, int], None] | None) -> PredictionRun:
    """Each series of ``items`` into the prepared, locked folder ``out`` (each one's outputs committed together)."""
    from cnnkit.predict.series import SeriesGeometries, tiled_series_forward

    mean = torch.tensor(prep["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(prep["std"], dtype=torch.float32)[:, None, None]
    palette = [tuple(c) for c in classes.get("palette", [])] or None
    run = PredictionRun(class_pixels=np.zeros(len(classes["names"]), np.int64))
    geometries = SeriesGeometries(model, len(prep["mean"]))  # per number of dates: a ConvLSTM's halo grows with T
    for index, item in enumerate(items):
        source = item.windows(prep) if item.windows is not None else None
        if source is not None and source.steps * source.height * source.width <= max_pixels:
            source.close()  # small enough to read whole
            source = None
        if source is not None:  # over max_pixels, on disk by windows: each tile's window and halo read, never all
            try:
                logits, seen = _tiled_from_windows(model, source, days_reference(prep), mean, std, tile, geometries)
            finally:
                source.close()
            run.tiled.append(item.path)
        else:
            series, valid, days = item.read(prep)
            x = torch.where(valid[:, None], (series - mean) / std, torch.zeros(()))
            del series
            steps, height, width = valid.shape
            if steps * height * width > max_pixels:  # the series stays in host memory, each window goes to the device
                logits = tiled_series_forward(model, x[None], valid[None], days[None], tile=tile,
                                              geometry=geometries(days))[0].to("cpu")
                run.tiled.append(item.path)
            else:
                with torch.no_grad():
                    logits = model(x[None].to(device), valid[None].to(device), days[None].to(device))[0].to("cpu")
            del x
            seen = valid.any(0).numpy()
            del valid
        labels = argmax(logits, 0).numpy()
        labels = np.where(seen, labels, 255).astype(np.uint8)  # palette_png refuses runs of over 255 classes
        stem = item.name
        where = Georeference()
        if tiff or probabilities or confidence:
            where = item.georeference() if item.georeference is not None else _series_georeference(item.path)
        with Staging() as staging:
            palette_png(staging.path(out / f"{stem}_labels.png"), labels, len(classes["names"]), palette)
            if tiff:
                with label_cog(staging.path(out / f"{stem}_labels.tif"), labels.shape, classes["names"], palette, 255,
                               where) as cog:
                    cog[:, :] = labels
            if probabilities or confidence:
                valid_pixels = torch.from_numpy(seen)
                result = Prediction(torch.from_numpy(labels),
                                    torch.softmax(logits, 0).masked_fill(~valid_pixels, 0.0), valid_pixels, 255, stem)
                _write_scores(result, out, stem, classes["names"], where, probabilities=probabilities,
                              confidence=confidence, dtype=probability_dtype, staging=staging)
            written = staging.finals
        run.files[item.path] = written
        run.pixels += int(seen.sum())
        run.class_pixels += np.bincount(labels[seen].ravel(), minlength=len(classes["names"]))[: len(classes["names"])]
        if progress is not None:
            progress(index + 1, run.pixels)
    return run
