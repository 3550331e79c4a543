"""PASTIS-layout folders through ``cnnkit train`` and ``cnnkit predict``: the published folds, the metadata's dates.

``cnnkit train PASTIS_ROOT --out RUN --fold K`` (:func:`train_pastis`) trains a series network on the training folds
of the published five-fold arrangement ``K`` (:data:`~cnnkit.data.pastis.FOLD_SPLITS`, U-TAE's ``fold_sequence``:
arrangement 1 trains on folds 1–3, validates on 4, tests on 5) and evaluates it on the **test** fold: that is the
held-out evaluation of the run's report and manifest. The validation fold is not read: the series workflow keeps the
last epoch's weights (no model selection), so there is nothing to select on it. The acquisition days are counted
from :data:`~cnnkit.data.pastis.REFERENCE_DATE` (2018-09-01, U-TAE's), recorded as the manifest's
``input.days_reference`` so that predict counts them alike.

``cnnkit predict RUN PASTIS_ROOT [--fold K]`` (:func:`predict_pastis`) predicts the patches of a PASTIS folder —
every patch, or with ``--fold K`` the test patches of arrangement ``K`` (those ``cnnkit train --fold K`` held out) —
or single patches (``PASTIS_ROOT/DATA_S2/S2_<id>.npy``), each with its dates from ``metadata.geojson``; outputs are
named ``S2_<id>_labels.png`` and so on, as for any series (:func:`cnnkit.app.predict.predict_series`).

Examples:
    >>> split_text(1)
    'PASTIS fold arrangement 1: trained on folds 1, 2, 3; evaluated on test fold 5 (validation fold 4 not read)'
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from cnnkit.app.predict import PredictionRun, SeriesInput, days_reference, predict_series
from cnnkit.app.settings import pop_settings
from cnnkit.app.timeseries import SeriesRun, series_spec, train_series
from cnnkit.data.pastis import FOLD_SPLITS, PASTIS_CLASSES, REFERENCE_DATE, VOID_LABEL, PastisDataset, is_pastis_folder
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.rasters import Georeference
from cnnkit.train.rundir import check_run_dir

__all__ = ["is_pastis_input", "pastis_inputs", "predict_pastis", "split_text", "train_pastis"]

ALL_FOLDS = (1, 2, 3, 4, 5)


def _check_fold(fold) -> int:
    if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= 5:
        raise ShapeError(f"--fold must be one of the published five-fold arrangements 1, 2, 3, 4, 5 (arrangement "
                         f"K trains on three folds, validates on the next and tests on the last). Received "
                         f"fold={fold!r}.")
    return fold


def split_text(fold: int) -> str:
    """How arrangement ``fold`` splits the folds, in words (for the log, the report and the docs)."""
    split = FOLD_SPLITS[_check_fold(fold)]
    return (f"PASTIS fold arrangement {fold}: trained on folds {', '.join(map(str, split['train']))}; evaluated on "
            f"test fold {split['test'][0]} (validation fold {split['val'][0]} not read)")


def train_pastis(root: str | os.PathLike, out: str | os.PathLike = "cnnkit-run", *, fold: int = 1,
                 **kwargs) -> SeriesRun:
    """:func:`~cnnkit.app.timeseries.train_series` on a PASTIS-layout folder, fold arrangement ``fold``.

    Args:
        root: The folder (``metadata.geojson``, ``DATA_S2/``, ``ANNOTATIONS/``; :mod:`cnnkit.data.pastis`).
        out: Run folder.
        fold: The published arrangement 1–5 (:data:`~cnnkit.data.pastis.FOLD_SPLITS`): its training folds train,
            its test fold is the held-out evaluation.
        kwargs: Further options of :func:`~cnnkit.app.timeseries.train_series` (``model_spec``, ``epochs``, …); the
            classes (PASTIS's 19), the void label (19) and the split are PASTIS's and cannot be given.

    Raises:
        ShapeError: ``fold`` not in 1–5, an option PASTIS fixes.
        CnnkitError: a missing or damaged ``metadata.geojson`` or patch file (named), no patch in a split's folds.
    """
    _check_fold(fold)
    fixed = sorted(set(kwargs) & {"class_names", "num_classes", "ignore_index", "heldout", "preprocessing",
                                  "manifest_extra", "recipe"})
    if fixed:
        raise ShapeError(f"{', '.join(fixed)}: set by the PASTIS layout (19 classes, void label 19, the published "
                         f"folds). Received {', '.join(fixed)} for the PASTIS folder {os.fspath(root)!r}.")
    settings = pop_settings("series", kwargs)
    log = settings.log
    series_spec(kwargs.get("model_spec"), settings.width, settings.hidden,
                settings.kernel_size)  # the cheap checks first, before the folder is read
    check_run_dir(out, overwrite=settings.overwrite, resume=settings.resume)
    train = PastisDataset(root, "train", fold=fold)
    test = PastisDataset(root, "test", fold=fold)
    split = FOLD_SPLITS[fold]
    text = split_text(fold)
    log(f"PASTIS folder {os.fspath(root)!r}: {text}; {len(train)} training and {len(test)} test patches")
    return train_series(
        train, test, len(PASTIS_CLASSES), out, settings=settings, class_names=PASTIS_CLASSES, ignore_index=VOID_LABEL,
        title=kwargs.pop("title", f"cnnkit train: PASTIS {Path(root).resolve().name}, fold arrangement {fold}"),
        preprocessing={"nodata": None, "days_reference": REFERENCE_DATE.isoformat()},
        manifest_extra={"pastis": {"fold": fold, "train_folds": list(split["train"]), "val_folds": list(split["val"]),
                                   "test_folds": list(split["test"]), "heldout": list(test.patches)}},
        recipe={"data": f"PASTIS folder {os.fspath(root)}", "split": text,
                "nodata": "non-finite band values (PASTIS has no cloud mask)"},
        **kwargs)


def _pastis_root_of(path: Path) -> Path | None:
    """The PASTIS folder ``path`` is, or whose ``DATA_S2/`` it is or lies in."""
    for candidate in (path, path.parent, path.parent.parent):
        if is_pastis_folder(candidate) and (candidate == path or (candidate / "DATA_S2") in (path, path.parent)):
            return candidate
    return None


def is_pastis_input(item: str | os.PathLike) -> bool:
    """Whether a ``cnnkit predict`` input is (in) a PASTIS folder: its root, its ``DATA_S2/``, a ``DATA_S2/S2_<id>.npy``
    file, or a pattern matching such files."""
    text = os.fspath(item)
    paths = [Path(p) for p in glob.glob(text)] if glob.has_magic(text) else [Path(text)]
    return bool(paths) and all(_pastis_root_of(p) is not None for p in paths)


def _reader(dataset: PastisDataset, index: int):
    def read(prep: dict):
        series, valid = dataset.series(index)
        bands = int(prep["band_count"])
        if series.shape[1] != bands:
            raise ShapeError(f"{dataset.data_path(index)}: the run was trained on {bands} bands per date. Received "
                             f"{series.shape[1]} (shape {tuple(series.shape)}).")
        if prep.get("nodata") is not None:
            valid &= ~(series == prep["nodata"]).any(dim=1)
        return series, valid, dataset.dates(index).days(days_reference(prep))
    return read


def pastis_inputs(inputs: Sequence[str | os.PathLike], fold: int | None = None) -> list[SeriesInput]:
    """The patches ``inputs`` name, as :class:`~cnnkit.app.predict.SeriesInput` with their dates from
    ``metadata.geojson``: a PASTIS root or its ``DATA_S2/`` → its patches (every fold, or with ``fold`` the test
    fold of that arrangement); ``DATA_S2/S2_<id>.npy`` files or patterns → those patches. Each patch once.

    Raises:
        CnnkitError: an input that is not in a PASTIS folder, a file no patch of ``metadata.geojson`` names, a
            missing or damaged metadata or patch file (named); ShapeError: ``fold`` not in 1–5.
    """
    folds = ALL_FOLDS if fold is None else FOLD_SPLITS[_check_fold(fold)]["test"]
    datasets: dict[Path, PastisDataset] = {}

    def dataset(root: Path) -> PastisDataset:
        if root not in datasets:
            datasets[root] = PastisDataset(root, folds=folds)
        return datasets[root]

    found: dict[tuple[Path, str], SeriesInput] = {}
    for item in inputs:
        text = os.fspath(item)
        paths = sorted(Path(p) for p in glob.glob(text)) if glob.has_magic(text) else [Path(text)]
        if not paths:
            raise CnnkitError(f"The pattern {text!r} matches no PASTIS patch.")
        for path in paths:
            root = _pastis_root_of(path)
            if root is None:
                raise CnnkitError(f"Input {text!r} is not in a PASTIS folder (metadata.geojson and DATA_S2/ beside "
                                  "it); give PASTIS folders and their DATA_S2/S2_<id>.npy files, or other series in "
                                  "another call.")
            data = dataset(root)
            if path.is_file():
                if not (path.name.startswith("S2_") and path.suffix == ".npy"):
                    raise CnnkitError(f"{path}: a PASTIS patch is DATA_S2/S2_<id>.npy.")
                indices = [data.index_of(path.stem[3:])]
            else:
                indices = range(len(data))
            for index in indices:
                key = (root.resolve(), data.patches[index])
                found.setdefault(key, SeriesInput(data.data_path(index).stem, data.data_path(index),
                                                  _reader(data, index), Georeference))
    names = [i.name for i in found.values()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise CnnkitError(f"Patches of two PASTIS folders share the names {twice[:3]}; their outputs would overwrite "
                          "each other. Predict them into different --out folders.")
    return list(found.values())


def predict_pastis(run_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                   fold: int | None = None, **options) -> PredictionRun:
    """:func:`~cnnkit.app.predict.predict_series` on PASTIS patches (:func:`pastis_inputs`); ``options`` as it
    takes them. The outputs carry no georeference: PASTIS's arrays have none."""
    if fold is not None:
        _check_fold(fold)
    return predict_series(run_dir, lambda: pastis_inputs(inputs, fold), out, **options)
