"""PastisDataset on a small folder written in PASTIS's exact layout (np.save, a GeoJSON FeatureCollection with
ID_PATCH, Fold and dates-S2): items equal the arrays written, void 19 → −100, days by hand, the published folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnnkit.data.pastis import FOLD_SPLITS, PASTIS_CLASSES, PastisDataset, is_pastis_folder
from cnnkit.data.series import collate_series
from cnnkit.errors import CnnkitError, ShapeError


def write_pastis(root, patches, seed=0):
    """``patches``: ``[(id, fold, ["YYYYMMDD", ...]), ...]`` → the folder, and the arrays written by id."""
    rng = np.random.default_rng(seed)
    (root / "DATA_S2").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    features, arrays = [], {}
    for patch, fold, dates in patches:
        data = rng.integers(0, 3000, (len(dates), 10, 8, 8)).astype(np.int16)
        target = np.stack([rng.integers(0, 20, (8, 8)), rng.integers(0, 50, (8, 8)), rng.integers(0, 5, (8, 8))])
        np.save(root / "DATA_S2" / f"S2_{patch}.npy", data)
        np.save(root / "ANNOTATIONS" / f"TARGET_{patch}.npy", target.astype(np.uint8))
        arrays[patch] = (data, target)
        features.append({"type": "Feature", "id": str(patch),
                         "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
                         "properties": {"ID_PATCH": patch, "Fold": fold, "N_Parcel": 3, "TILE": "t30uxv",
                                        "dates-S2": {str(i): int(d) for i, d in enumerate(dates)}}})
    (root / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return arrays


PATCHES = [(10000, 1, ["20180924", "20181004", "20181203"]), (10001, 2, ["20180919", "20181029"]),
           (10002, 3, ["20180901", "20190101", "20190315", "20190601"]), (10003, 4, ["20181111"]),
           (10004, 5, ["20180924", "20190820"])]


def test_items_equal_the_arrays_and_the_folds_are_published(tmp_path):
    arrays = write_pastis(tmp_path, PATCHES)
    assert is_pastis_folder(tmp_path) and not is_pastis_folder(tmp_path / "DATA_S2")
    train, val, test = (PastisDataset(tmp_path, split) for split in ("train", "val", "test"))
    assert (train.patches, val.patches, test.patches) == (["10000", "10001", "10002"], ["10003"], ["10004"])
    assert PastisDataset(tmp_path, "test", fold=2).patches == ["10000"]  # arrangement 2 tests on fold 1
    assert FOLD_SPLITS[5] == {"train": (5, 1, 2), "val": (3,), "test": (4,)}
    assert PastisDataset(tmp_path, folds=[2, 4]).patches == ["10001", "10003"]
    series, valid, label = item = train[0]
    data, target = arrays[10000]
    np.testing.assert_array_equal(series.numpy(), data.astype(np.float32))
    assert valid.all() and valid.shape == (3, 8, 8)
    np.testing.assert_array_equal(label.numpy(), np.where(target[0] == 19, -100, target[0]))
    assert (label == -100).sum() == (target[0] == 19).sum() > 0
    assert item.days.tolist() == [23, 33, 93]  # days since 2018-09-01
    assert train[2].days.tolist() == [0, 122, 195, 273] and train.sizes == [(3, 8, 8), (2, 8, 8), (4, 8, 8)]
    assert train.dates(1).source == "metadata.geojson" and len(PASTIS_CLASSES) == 19
    batch = collate_series([train[i] for i in range(3)])
    assert batch.days.tolist() == [[23, 33, 93, 0], [18, 58, 0, 0], [0, 122, 195, 273]]
    assert batch[0].shape == (3, 4, 10, 8, 8) and not batch[1][1, 2:].any()


def test_band_statistics_from_the_norm_file(tmp_path):
    write_pastis(tmp_path, PATCHES)
    assert PastisDataset(tmp_path).band_statistics() is None
    table = {f"Fold_{k}": {"mean": [float(k)] * 10, "std": [2.0 * k] * 10} for k in range(1, 6)}
    (tmp_path / "NORM_S2_patch.json").write_text(json.dumps(table))
    mean, std = PastisDataset(tmp_path).band_statistics()  # folds 1-3
    assert mean.tolist() == [2.0] * 10 and std.tolist() == [4.0] * 10


def test_refusals_name_the_file(tmp_path):
    write_pastis(tmp_path, PATCHES)
    with pytest.raises(ShapeError, match="Unknown split 'training'"):
        PastisDataset(tmp_path, "training")
    with pytest.raises(ShapeError, match="fold must be an integer in 1–5"):
        PastisDataset(tmp_path, fold=6)
    with pytest.raises(ShapeError, match=r"folds must be a list of fold numbers in 1–5. Received folds=\[0\]"):
        PastisDataset(tmp_path, folds=[0])
    (tmp_path / "ANNOTATIONS" / "TARGET_10001.npy").unlink()
    with pytest.raises(CnnkitError, match=r"The target of patch .*TARGET_10001\.npy does not exist"):
        PastisDataset(tmp_path)[1]
    np.save(tmp_path / "DATA_S2" / "S2_10000.npy", np.zeros((4, 10, 8, 8), np.int16))
    with pytest.raises(ShapeError, match=r"S2_10000\.npy: expected T × C × H × W with T = 3"):
        PastisDataset(tmp_path)
    metadata = json.loads((tmp_path / "metadata.geojson").read_text())
    metadata["features"][0]["properties"]["dates-S2"] = {"0": 20180924, "1": 20180924, "2": 20181203, "3": 20181204}
    (tmp_path / "metadata.geojson").write_text(json.dumps(metadata))
    with pytest.raises(ShapeError, match=r"metadata\.geojson \(patch 10000\): the dates must increase\. "
                                         r"dates-S2\['1'\] \(2018-09-24\) repeats"):
        PastisDataset(tmp_path)
    metadata["features"][0]["properties"]["dates-S2"]["1"] = "Sept"
    (tmp_path / "metadata.geojson").write_text(json.dumps(metadata))
    with pytest.raises(ShapeError, match=r"\(patch 10000\) dates-S2\['1'\]: cannot parse the date 'Sept'"):
        PastisDataset(tmp_path)
    (tmp_path / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{}]}))
    with pytest.raises(CnnkitError, match=r"metadata\.geojson is not PASTIS's metadata"):
        PastisDataset(tmp_path)


def test_padded_pastis_batch_through_utae_equals_each_patch_alone(tmp_path):
    """The exactness promise on PASTIS items: patches of 3, 2 and 4 dates padded in time (float64)."""
    from cnnkit.models.utae import UTAE

    write_pastis(tmp_path, PATCHES)
    items = [PastisDataset(tmp_path)[i] for i in range(3)]
    torch.manual_seed(0)
    net = UTAE(10, 19, encoder_widths=(4, 4), num_heads=2).double()
    x, valid, _ = batch = collate_series(items)
    out = net(x.double() / 3000, valid, batch.days)
    for n, item in enumerate(items):
        alone = net(item[0][None].double() / 3000, item[1][None], item.days[None])
        torch.testing.assert_close(out[n], alone[0], rtol=1e-10, atol=1e-10)
