"""PASTIS-style folders (Sainte Fare Garnot & Landrieu, ICCV 2021): Sentinel-2 patch time series read as they are.

Layout (that of the published data set, github.com/VSainteuf/pastis-benchmark)::

    root/
      metadata.geojson              a FeatureCollection; each feature's properties hold ID_PATCH, Fold (1–5) and
                                    dates-S2 ({"0": 20180924, "1": 20181004, ...}: one YYYYMMDD per date)
      DATA_S2/S2_<id>.npy           T × C × H × W (10 bands, 128 × 128 px in PASTIS)
      ANNOTATIONS/TARGET_<id>.npy   3 × H × W (or H × W): channel 0 the semantic label (0 background, 1–18 crop
                                    types, 19 void)
      NORM_S2_patch.json            optional: per fold, the bands' mean and std ({"Fold_1": {"mean": [...], ...}})

Items are :class:`~cnnkit.data.series.SeriesItem` — ``(series (T, C, H, W) float32, valid (T, H, W), label (H, W)
int64)`` with the void label 19 as −100 (ignored by the losses and metrics), and the days since
:data:`REFERENCE_DATE` (2018-09-01, the one U-TAE's code uses) as ``days``. PASTIS has no cloud mask: a pixel is
valid on a date where all its bands are finite.

The split is the published five-fold one: fold arrangement ``fold`` (1–5) trains on three folds, validates on the
next and tests on the last (:data:`FOLD_SPLITS`; arrangement 1: folds 1–3 train, 4 validation, 5 test).

Examples:
    >>> FOLD_SPLITS[1], FOLD_SPLITS[2]
    ({'train': (1, 2, 3), 'val': (4,), 'test': (5,)}, {'train': (2, 3, 4), 'val': (5,), 'test': (1,)})
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit._checks import check_choice, check_int
from cnnkit.data.dates import SeriesDates, check_dates, parse_date
from cnnkit.data.series import SeriesItem
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.masking.batch import IGNORE_INDEX

__all__ = ["FOLD_SPLITS", "PASTIS_CLASSES", "REFERENCE_DATE", "VOID_LABEL", "PastisDataset", "is_pastis_folder"]

PASTIS_CLASSES = ("Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed",
                  "Spring barley", "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat",
                  "Fruits, vegetables, flowers", "Potatoes", "Leguminous fodder", "Soybeans", "Orchard", "Mixed cereal",
                  "Sorghum")
"""The 19 classes of PASTIS's semantic labels 0–18 (19, the void label, is not a class)."""

VOID_LABEL = 19
"""PASTIS's void label (field borders and unknown crops): read as −100, no label."""

REFERENCE_DATE = date(2018, 9, 1)
"""Day 0 of the items' ``days``: the start of PASTIS's season, as in U-TAE's code."""

FOLD_SPLITS = {k: {"train": tuple((k - 1 + i) % 5 + 1 for i in range(3)), "val": ((k + 2) % 5 + 1,),
                   "test": ((k + 3) % 5 + 1,)} for k in range(1, 6)}
"""The published five-fold cross-validation: arrangement ``k`` → the folds of each split."""

SPLITS = ("train", "val", "test")


def is_pastis_folder(root: str | Path) -> bool:
    """Whether ``root`` looks like a PASTIS-style folder (``metadata.geojson`` and ``DATA_S2/``)."""
    root = Path(root)
    return (root / "metadata.geojson").is_file() and (root / "DATA_S2").is_dir()


def _load(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise CnnkitError(f"{what} {path} does not exist (PASTIS layout: DATA_S2/S2_<id>.npy, "
                          "ANNOTATIONS/TARGET_<id>.npy).")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CnnkitError(f"Could not read {path}: {err}.") from err


class PastisDataset(Dataset):
    """The patches of a PASTIS-style folder in the chosen folds (the module documentation has the layout).

    Args:
        root: The folder.
        split: ``"train"``, ``"val"`` or ``"test"``: the folds of that split in arrangement ``fold``.
        fold: The five-fold arrangement, 1–5 (:data:`FOLD_SPLITS`; 1 is the one usually reported).
        folds: Explicit folds to read instead of ``split`` and ``fold`` (e.g. ``(1, 2, 3, 4, 5)``).
        reference: Day 0 of the items' ``days`` (default :data:`REFERENCE_DATE`).

    Attributes:
        patches: The patch ids read, in metadata order.
        folds: The folds read.
        sizes: ``(T, H, W)`` of every item (for :class:`~cnnkit.masking.BucketBatchSampler`).
        class_names: :data:`PASTIS_CLASSES`.
        time_axis: ``"acquisition dates (from metadata.geojson)"``.

    Raises:
        CnnkitError: a missing or unreadable file (named), metadata that is not PASTIS's GeoJSON, no patch in
            the folds.
        ShapeError: a patch's data and dates disagree in length, dates that cannot be parsed or do not increase,
            a target of another size than its data (each naming the file or patch).
    """

    time_axis = "acquisition dates (from metadata.geojson)"
    class_names = PASTIS_CLASSES

    def __init__(self, root: str | Path, split: str = "train", *, fold: int = 1, folds: Sequence[int] | None = None,
                 reference: date = REFERENCE_DATE) -> None:
        self.root = Path(root)
        check_int(fold, "fold")
        if fold > 5:
            raise ShapeError(f"fold must be an integer in 1–5 (the five-fold arrangements). Received fold={fold}.")
        if folds is None:
            folds = FOLD_SPLITS[fold][check_choice(split, SPLITS, "split")]
        elif isinstance(folds, (str, bytes)) or not isinstance(folds, Sequence) or not folds or \
                any(isinstance(f, bool) or not isinstance(f, int) or not 1 <= f <= 5 for f in folds):
            raise ShapeError(f"folds must be a list of fold numbers in 1–5. Received folds={folds!r}.")
        self.folds, self.reference = tuple(folds), reference
        metadata = self.root / "metadata.geojson"
        try:
            features = json.loads(metadata.read_text(encoding="utf-8"))["features"]
            rows = [(f["properties"]["ID_PATCH"], f["properties"]["Fold"], f["properties"]["dates-S2"])
                    for f in features]
        except FileNotFoundError as err:
            raise CnnkitError(f"{metadata} does not exist: a PASTIS-style folder needs its metadata.geojson.") from err
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise CnnkitError(f"{metadata} is not PASTIS's metadata: expected a GeoJSON FeatureCollection whose "
                              f"features' properties hold ID_PATCH, Fold and dates-S2 ({type(err).__name__}: {err}).") \
                from err
        self.patches: list[str] = []
        self._dates: list[SeriesDates] = []
        self.sizes: list[tuple[int, int, int]] = []
        for patch, patch_fold, listed in rows:
            if patch_fold not in self.folds:
                continue
            where = f"{metadata} (patch {patch})"
            if not isinstance(listed, dict):
                raise ShapeError(f"{where}: dates-S2 must map date indices to YYYYMMDD. Received "
                                 f"{type(listed).__name__}.")
            try:
                keys = sorted(listed, key=int)
            except ValueError as err:
                raise ShapeError(f"{where}: dates-S2's keys must be date indices 0, 1, …. Received "
                                 f"{sorted(listed)[:3]}.") from err
            names = [f"dates-S2[{k!r}]" for k in keys]
            dates = check_dates([parse_date(listed[k], f"{where} {n}") for k, n in zip(keys, names)], names, where)
            data = _load(self._data_path(patch), "The data of patch")
            if data.ndim != 4 or data.shape[0] != len(dates):
                raise ShapeError(f"{self._data_path(patch)}: expected T × C × H × W with T = {len(dates)} (its dates "
                                 f"in {metadata.name}). Received shape {data.shape}.")
            self.patches.append(str(patch))
            self._dates.append(SeriesDates(dates, "metadata.geojson"))
            self.sizes.append((int(data.shape[0]), int(data.shape[2]), int(data.shape[3])))
        if not self.patches:
            raise CnnkitError(f"{metadata} lists no patch in folds {self.folds}.")

    def _data_path(self, patch) -> Path:
        return self.root / "DATA_S2" / f"S2_{patch}.npy"

    def _target_path(self, patch) -> Path:
        return self.root / "ANNOTATIONS" / f"TARGET_{patch}.npy"

    def __len__(self) -> int:
        return len(self.patches)

    def dates(self, index: int) -> SeriesDates:
        """The dates of patch ``index`` (from ``metadata.geojson``)."""
        return self._dates[index]

    def index_of(self, patch) -> int:
        """The index of the patch of id ``patch`` (as in ``ID_PATCH`` or in ``S2_<id>.npy``) among those read."""
        try:
            return self.patches.index(str(patch))
        except ValueError:
            raise CnnkitError(f"{self.root / 'metadata.geojson'} lists no patch {patch} in folds {self.folds}.") \
                from None

    def data_path(self, index: int) -> Path:
        """``DATA_S2/S2_<id>.npy`` of patch ``index``."""
        return self._data_path(self.patches[index])

    def series(self, index: int) -> tuple[Tensor, Tensor]:
        """Patch ``index``'s ``(series (T, C, H, W) float32, valid (T, H, W))`` without its target (what ``cnnkit
        predict`` reads); its dates are :meth:`dates`."""
        data = _load(self._data_path(self.patches[index]), "The data of patch")
        if data.ndim != 4 or data.shape[0] != len(self._dates[index]):
            raise ShapeError(f"{self._data_path(self.patches[index])}: expected T × C × H × W with T = "
                             f"{len(self._dates[index])} (its dates in metadata.geojson). Received shape {data.shape}.")
        series = torch.from_numpy(np.asarray(data, dtype=np.float32))
        return series, torch.isfinite(series).all(dim=1)

    def __getitem__(self, index: int) -> SeriesItem:
        patch = self.patches[index]
        data = _load(self._data_path(patch), "The data of patch")
        target = _load(self._target_path(patch), "The target of patch")
        semantic = target[0] if target.ndim == 3 else target
        if semantic.shape != data.shape[2:] or not np.issubdtype(semantic.dtype, np.number):
            raise ShapeError(f"{self._target_path(patch)}: expected labels (3 × H × W, semantic in channel 0, or "
                             f"H × W) with H × W = {data.shape[2:]}. Received shape {target.shape}, dtype "
                             f"{target.dtype}.")
        series = torch.from_numpy(np.asarray(data, dtype=np.float32))
        label = np.asarray(semantic).astype(np.int64)
        label[label == VOID_LABEL] = IGNORE_INDEX
        return SeriesItem((series, torch.isfinite(series).all(dim=1), torch.from_numpy(label)),
                          days=self._dates[index].days(self.reference))

    def band_statistics(self) -> tuple[Tensor, Tensor] | None:
        """The bands' mean and std over this data set's folds from ``NORM_S2_patch.json`` (each fold's values
        averaged, as U-TAE's code does), or ``None`` without that file (then compute them with
        :func:`~cnnkit.data.series_band_statistics`)."""
        path = self.root / "NORM_S2_patch.json"
        if not path.is_file():
            return None
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
            means = np.stack([np.asarray(table[f"Fold_{f}"]["mean"], dtype=np.float64) for f in self.folds])
            stds = np.stack([np.asarray(table[f"Fold_{f}"]["std"], dtype=np.float64) for f in self.folds])
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise CnnkitError(f"{path}: expected {{'Fold_k': {{'mean': [...], 'std': [...]}}}} for folds "
                              f"{self.folds} ({type(err).__name__}: {err}).") from err
        return torch.from_numpy(means.mean(0)).float(), torch.from_numpy(stds.mean(0)).float()
