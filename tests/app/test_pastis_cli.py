"""PASTIS-layout folders through ``cnnkit train --fold`` and ``cnnkit predict``: a tiny folder written in the
published layout (np.save'd T × C × H × W int16 patches, TARGET arrays, a GeoJSON FeatureCollection with ID_PATCH,
Fold and dates-S2) trains two epochs on the folds of arrangement 2 and predicts its test fold; the statistics are
those of the training folds (numpy, by hand), the labels those of the network run by hand with the days since
2018-09-01 counted by hand; a wrong fold and damaged metadata are refused naming the argument or the file."""

from __future__ import annotations

import json
import shutil
from datetime import date

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cnnkit.cli.main import app
from cnnkit.data.pastis import PASTIS_CLASSES
from cnnkit.models.utae import UTAE

runner = CliRunner()
ENV = {"COLUMNS": "200"}
SIZE = 32


def write_pastis(root, per_fold=2, seed=0):
    """Two patches per fold, 32 × 32, 3–5 dates: ``{id: (fold, data (T, 10, H, W) int16, dates)}``."""
    rng = np.random.default_rng(seed)
    (root / "DATA_S2").mkdir(parents=True)
    (root / "ANNOTATIONS").mkdir()
    features, patches = [], {}
    patch = 30000
    for fold in range(1, 6):
        for _ in range(per_fold):
            steps = 3 + patch % 3
            offsets = np.sort(rng.choice(300, steps, replace=False))
            dates = [date.fromordinal(date(2018, 9, 1).toordinal() + int(d)) for d in offsets]
            label = rng.integers(0, 20, (SIZE, SIZE))
            data = (rng.normal(1000, 300, (steps, 10, SIZE, SIZE)) + 80 * label).astype(np.int16)
            np.save(root / "DATA_S2" / f"S2_{patch}.npy", data)
            np.save(root / "ANNOTATIONS" / f"TARGET_{patch}.npy", np.stack([label] * 3).astype(np.uint8))
            features.append({"type": "Feature", "id": str(patch), "geometry": None,
                             "properties": {"ID_PATCH": patch, "Fold": fold,
                                            "dates-S2": {str(i): int(d.strftime("%Y%m%d")) for i, d in
                                                         enumerate(dates)}}})
            patches[patch] = (fold, data, dates)
            patch += 1
    (root / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return patches


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("pastis")
    root, run = base / "PASTIS", base / "run"
    patches = write_pastis(root)
    done = runner.invoke(app, ["train", str(root), "--out", str(run), "--fold", "2", "--epochs", "2", "--crop-size",
                               "16", "--batch-size", "4", "--model", "UTAE", "--model-args",
                               '{"encoder_widths": [8, 8], "num_heads": 2}', "--threads", "1"], env=ENV)
    assert done.exit_code == 0, done.output
    return root, run, patches, done.output


def _network(run):
    manifest = json.loads((run / "manifest.json").read_text())
    net = UTAE(10, 19, **manifest["model"]["spec"]["args"])
    net.load_state_dict(load_file(run / "model.safetensors"))
    return net.eval(), manifest


def _by_hand(net, manifest, data, dates):
    """The labels of one patch: standardised with the run's statistics, days since 2018-09-01 counted by hand."""
    series = torch.from_numpy(data.astype(np.float32))
    mean = torch.tensor(manifest["input"]["mean"])[:, None, None]
    std = torch.tensor(manifest["input"]["std"])[:, None, None]
    days = torch.tensor([[(d - date(2018, 9, 1)).days for d in dates]])
    valid = torch.ones(series.shape[0], SIZE, SIZE, dtype=torch.bool)
    with torch.no_grad():
        return net(((series - mean) / std)[None], valid[None], days)[0].argmax(0).numpy()


def test_train_uses_the_published_folds_of_the_arrangement(trained):
    """Arrangement 2 (U-TAE's fold_sequence[1]): train on folds 2, 3, 4, validation fold 5 not read, test fold 1
    held out; the band statistics are those of folds 2–4's patches (numpy, float64)."""
    _, run, patches, output = trained
    assert "trained on folds 2, 3, 4; evaluated on test fold 1 (validation fold 5 not read)" in output
    assert "6 training and 2 test patches" in output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["series"]["pastis"] == {"fold": 2, "train_folds": [2, 3, 4], "val_folds": [5], "test_folds": [1],
                                            "heldout": ["30000", "30001"]}
    assert manifest["input"]["days_reference"] == "2018-09-01" and manifest["input"]["band_count"] == 10
    assert manifest["classes"]["names"] == list(PASTIS_CLASSES) and manifest["classes"]["ignore_index"] == 19
    train = [data for fold, data, _ in patches.values() if fold in (2, 3, 4)]
    pixels = np.concatenate([d.transpose(1, 0, 2, 3).reshape(10, -1) for d in train], 1).astype(np.float64)
    np.testing.assert_allclose(manifest["input"]["mean"], pixels.mean(1), rtol=1e-5)
    np.testing.assert_allclose(manifest["input"]["std"], pixels.std(1), rtol=1e-3)
    assert (run / "report" / "report.html").is_file()


def test_predict_a_fold_and_single_patches_with_the_metadata_dates(trained, tmp_path):
    """--fold 2 predicts the two test patches (fold 1) and nothing else; labels == the network by hand; a single
    DATA_S2/S2_<id>.npy in tiles (--max-pixels) gives the same labels; the whole folder predicts every patch."""
    root, run, patches, _ = trained
    net, manifest = _network(run)
    done = runner.invoke(app, ["predict", str(run), str(root), "--fold", "2", "--out", str(tmp_path / "fold"),
                               "--probabilities"], env=ENV)
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "fold").iterdir() if not p.name.startswith(".")) == sorted(
        f"S2_{i}_{kind}" for i in (30000, 30001) for kind in ("labels.png", "labels.tif", "probabilities.tif"))
    for patch in (30000, 30001):
        _, data, dates = patches[patch]
        labels = tifffile.imread(tmp_path / "fold" / f"S2_{patch}_labels.tif")
        np.testing.assert_array_equal(labels, _by_hand(net, manifest, data, dates))
    single = runner.invoke(app, ["predict", str(run), str(root / "DATA_S2" / "S2_30001.npy"), "--out",
                                 str(tmp_path / "one"), "--max-pixels", "100", "--tile", "8"], env=ENV)
    assert single.exit_code == 0, single.output
    assert "1 run in tiles" in single.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "one" / "S2_30001_labels.tif"),
                                  tifffile.imread(tmp_path / "fold" / "S2_30001_labels.tif"))
    every = runner.invoke(app, ["predict", str(run), str(root / "DATA_S2"), "--out", str(tmp_path / "all")], env=ENV)
    assert every.exit_code == 0, every.output
    assert len(list((tmp_path / "all").glob("S2_*_labels.tif"))) == len(patches) == 10
    _, data, dates = patches[30007]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "all" / "S2_30007_labels.tif"),
                                  _by_hand(net, manifest, data, dates))


def test_wrong_folds_and_damaged_metadata_are_refused_naming_them(trained, tmp_path):
    root, run, _, _ = trained
    wrong = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "r6"), "--fold", "6"], env=ENV)
    assert wrong.exit_code != 0
    assert "--fold must be one of the published five-fold arrangements 1, 2, 3, 4, 5" in wrong.output
    assert "Received fold=6" in wrong.output and not (tmp_path / "r6").exists()
    fixed = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "rh"), "--heldout-fraction", "0.5"],
                          env=ENV)
    assert fixed.exit_code != 0 and "--heldout-fraction 0.5: a PASTIS folder fixes its split (--fold)" in fixed.output
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    notpastis = runner.invoke(app, ["train", str(plain), "--out", str(tmp_path / "rp"), "--fold", "1"], env=ENV)
    assert notpastis.exit_code != 0 and "is not one (it needs metadata.geojson and DATA_S2/)" in notpastis.output
    zero = runner.invoke(app, ["predict", str(run), str(root), "--fold", "0", "--out", str(tmp_path / "p0")], env=ENV)
    assert zero.exit_code != 0 and "Received fold=0" in zero.output
    other = runner.invoke(app, ["predict", str(run), str(root / "DATA_S2" / "S2_30004.npy"), "--fold", "2", "--out",
                                str(tmp_path / "po")], env=ENV)
    assert other.exit_code != 0 and "lists no patch 30004 in folds (1,)" in other.output
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, np.ones((3, 10, 8, 8), np.float32), photometric="minisblack")
    mixed = runner.invoke(app, ["predict", str(run), str(root), str(stack), "--out", str(tmp_path / "pm")], env=ENV)
    assert mixed.exit_code != 0 and "is not in a PASTIS folder" in mixed.output
    # damaged metadata: not JSON, a feature without dates, a fold arrangement whose test fold has no patch
    damaged = tmp_path / "damaged"
    shutil.copytree(root, damaged)
    metadata = damaged / "metadata.geojson"
    good = json.loads(metadata.read_text())
    metadata.write_text("{not json")
    for args in (["train", str(damaged), "--out", str(tmp_path / "rd")],
                 ["predict", str(run), str(damaged), "--out", str(tmp_path / "pd")]):
        result = runner.invoke(app, args, env=ENV)
        assert result.exit_code != 0 and "metadata.geojson is not PASTIS's metadata" in result.output, result.output
        assert str(metadata) in result.output.replace("\n", "")
    del good["features"][3]["properties"]["dates-S2"]
    metadata.write_text(json.dumps(good))
    result = runner.invoke(app, ["train", str(damaged), "--out", str(tmp_path / "rk")], env=ENV)
    assert result.exit_code != 0 and "KeyError: 'dates-S2'" in result.output
    good = json.loads((root / "metadata.geojson").read_text())
    good["features"] = [f for f in good["features"] if f["properties"]["Fold"] != 5]
    metadata.write_text(json.dumps(good))
    result = runner.invoke(app, ["predict", str(run), str(damaged), "--fold", "1", "--out", str(tmp_path / "pe")],
                           env=ENV)
    assert result.exit_code != 0 and "lists no patch in folds (5,)" in result.output
    assert not list(tmp_path.glob("p*/*_labels*"))
