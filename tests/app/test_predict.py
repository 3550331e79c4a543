"""``cnnkit predict`` end to end: a demo run and a ``cnnkit train`` run reproduce their held-out IoU from files,
batches equal single images, tiles equal the whole image, outputs are COGs on the input's CRS, nothing is
overwritten."""

from __future__ import annotations

import json
import re
from pathlib import Path

import lightning.pytorch  # noqa: F401  (see tests/app/test_train.py)
import numpy as np
import pytest
import rasterio
import tifffile
import torch
from affine import Affine
from PIL import Image
from typer.testing import CliRunner

from cnnkit.app import load_predictor, train_demo
from cnnkit.app import predict_distributed as distributed
from cnnkit.cli.main import app
from cnnkit.data import CLASS_NAMES, SyntheticLandCover

runner = CliRunner()


def _mean_iou(predicted: list[np.ndarray], truth: list[np.ndarray], num_classes: int) -> float:
    """Mean IoU by numpy counting over labelled pixels (truth ≥ 0), classes with an empty union left out."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, t in zip(predicted, truth):
        keep = t >= 0
        np.add.at(confusion, (t[keep], p[keep]), 1)
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = train_demo(out, epochs=2, n_train=12, n_heldout=10, progress=False, log=lambda line: None)
    return out, result


def _heldout_tiffs(folder: Path, seed: int = 1, count: int = 10) -> tuple[list[Path], list[np.ndarray]]:
    """The demo's held-out scenes as a user would have them: 4-band float TIFFs with NaN under clouds."""
    data = SyntheticLandCover(count, seed=seed)
    folder.mkdir(parents=True)
    paths, labels = [], []
    for i, (image, label) in enumerate(data):
        bands = image[:-1].masked_fill(image[-1:] == 0, float("nan")).numpy()
        path = folder / f"scene_{i:02d}.tif"
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
        paths.append(path)
        labels.append(label.numpy())
    return paths, labels


def test_manifest_and_weights(demo_run):
    out, _ = demo_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == {"spec": {"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 16}},
                                 "in_channels": 5, "num_classes": 5, "weights": "model.safetensors"}
    assert manifest["classes"]["names"] == list(CLASS_NAMES)
    assert manifest["input"]["multiple_of"] == 4 and manifest["input"]["band_count"] == 4
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir())[:2] == ["heldout_00.tif", "heldout_01.tif"]


def test_demo_run_reproduces_its_heldout_iou(demo_run, tmp_path):
    out, result = demo_run
    paths, truth = _heldout_tiffs(tmp_path / "scenes")
    done = runner.invoke(app, ["predict", str(out), str(tmp_path / "scenes"), "--out", str(tmp_path / "pred")])
    assert done.exit_code == 0, done.output
    assert "10 images" in done.output and "Mpx/s" in done.output
    predicted = [np.array(Image.open(tmp_path / "pred" / f"{p.stem}_labels.png")) for p in paths]
    for p, t in zip(predicted, truth):
        assert p.shape == t.shape
    assert _mean_iou(predicted, truth, 5) == pytest.approx(result.mean_iou, abs=1e-6)
    assert (tmp_path / "pred" / "scene_00_overlay.png").is_file()


def test_batched_equals_one_at_a_time_and_tiled_equals_whole(demo_run, tmp_path):
    out, _ = demo_run
    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(50):
        h, w = rng.integers(9, 70, 2)
        image = rng.normal(0, 1, (int(h), int(w), 4)).astype(np.float32)
        image[rng.random((int(h), int(w))) < 0.1] = np.nan
        tifffile.imwrite(folder / f"img_{i:02d}.tif", image, photometric="minisblack")
    args = ["predict", str(out), str(folder)]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b8"), "--batch-size", "8"]).exit_code == 0
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "b1"), "--batch-size", "1"]).exit_code == 0
    done = runner.invoke(app, [*args, "--out", str(tmp_path / "tiled"), "--max-pixels", "100", "--tile", "16"])
    assert done.exit_code == 0, done.output
    assert "run in tiles" in done.output
    for i in range(50):
        name = f"img_{i:02d}_labels.png"
        one = np.array(Image.open(tmp_path / "b1" / name))
        assert np.array_equal(np.array(Image.open(tmp_path / "b8" / name)), one), name
        assert np.array_equal(np.array(Image.open(tmp_path / "tiled" / name)), one), name
    # and one at a time equals plain torch on the preprocessed image
    predictor, _ = load_predictor(out)
    image = tifffile.imread(folder / "img_07.tif").transpose(2, 0, 1)
    x, valid = predictor.preprocessing(torch.from_numpy(image))
    with torch.no_grad():
        logits = predictor.model(x[None])[0, :, :image.shape[1], :image.shape[2]]
    expected = np.where(valid.numpy(), logits.argmax(0).numpy(), 255)
    assert np.array_equal(np.array(Image.open(tmp_path / "b1" / "img_07_labels.png")), expected)


def _assert_argmax_of(labels: np.ndarray, scores: torch.Tensor, margin: float = 1e-4) -> None:
    """``labels`` is the argmax of the float32 ``scores`` (H, W, C) at every pixel whose two top scores differ by
    more than ``margin``; elsewhere (a float-sum-order tie: hosts differ) it is one of the tied classes."""
    top2 = scores.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1] > margin).numpy()
    expected = scores.argmax(-1).numpy()
    np.testing.assert_array_equal(labels[clear], expected[clear])
    tied = np.take_along_axis(scores.numpy(), labels[..., None].astype(np.int64), -1)[..., 0]
    assert np.all(tied[~clear] >= top2[..., 0].numpy()[~clear] - margin)
    assert clear.mean() > 0.9  # the check above is not vacuous


def _geotiff(path: Path, image: np.ndarray, **profile) -> None:
    """A (H, W, C) image as a GeoTIFF on UTM zone 33N, 10 m pixels, written by rasterio (GDAL)."""
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[1], height=image.shape[0], count=image.shape[2],
                       dtype=image.dtype, crs=CRS, transform=TRANSFORM, **profile) as dst:
        dst.write(image.transpose(2, 0, 1))


CRS = "EPSG:32633"
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)


def test_outputs_are_cogs_on_the_input_crs(demo_run, tmp_path):
    out, _ = demo_run
    image = np.random.default_rng(1).normal(0, 1, (40, 36, 4)).astype(np.float32)
    _geotiff(tmp_path / "geo.tif", image, nodata=-9999)  # a nodata no pixel holds: all pixels are data
    predictor, _ = load_predictor(out)
    x, valid = predictor.preprocessing(torch.from_numpy(image.transpose(2, 0, 1)))
    assert bool(valid.all())
    with torch.no_grad():
        reference = predictor.model(x[None])[0, :, :40, :36].permute(1, 2, 0).float()  # (H, W, classes) float32
    softmax = reference.softmax(-1).numpy()
    for extra in ([], ["--max-pixels", "500", "--tile", "16"]):
        target = tmp_path / f"out{len(extra)}"
        done = runner.invoke(app, ["predict", str(out), str(tmp_path / "geo.tif"), "--out", str(target), "--tiff",
                                   "--probabilities", "--confidence", *extra])
        assert done.exit_code == 0, done.output
        for name in ("geo_labels.tif", "geo_probabilities.tif", "geo_confidence.tif"):
            with rasterio.open(target / name) as ds:
                assert ds.crs == rasterio.crs.CRS.from_string(CRS) and ds.transform == TRANSFORM, name
                assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG", name
                # the input's nodata (-9999) says nothing of these files' values: the label map declares its own
                # no-data label, the probabilities (0 where there is no data, a real probability too) none
                assert ds.nodata == (255 if name == "geo_labels.tif" else None), name
        with rasterio.open(target / "geo_probabilities.tif") as ds:
            assert ds.count == 5 and ds.dtypes[0] == "uint8" and ds.scales == (1 / 255,) * 5
            assert list(ds.descriptions) == list(CLASS_NAMES)
            probabilities = ds.read().transpose(1, 2, 0)
        np.testing.assert_allclose(probabilities / 255, softmax, atol=0.5 / 255 + 1e-4)  # round(p * 255)
        with rasterio.open(target / "geo_confidence.tif") as ds:
            np.testing.assert_allclose(ds.read(1) / 255, softmax.max(-1), atol=0.5 / 255 + 1e-4)
        with rasterio.open(target / "geo_labels.tif") as ds:
            labels = ds.read(1)
        # labels come from the network's float32 scores, never from the quantised file (two top classes can round
        # to one value): the reference is the network run by hand on the preprocessed image
        _assert_argmax_of(labels, reference)
        half = tmp_path / f"half{len(extra)}"  # float16 on request; confidence alone: no probabilities file at all
        done = runner.invoke(app, ["predict", str(out), str(tmp_path / "geo.tif"), "--out", str(half),
                                   "--confidence", "--probability-dtype", "float16", *extra])
        assert done.exit_code == 0, done.output
        assert not (half / "geo_probabilities.tif").exists()
        with tifffile.TiffFile(half / "geo_confidence.tif") as tif:  # tifffile: an independent reader of the header
            assert tif.pages[0].dtype == np.float16
        with rasterio.open(half / "geo_confidence.tif") as ds:
            np.testing.assert_allclose(ds.read(1), softmax.max(-1), atol=1e-3)


def test_label_cog_is_valid_with_palette_and_overviews(demo_run, tmp_path):
    """A scene over 512 px, tiled: its label COG validates (rio-cogeo), lies where the input does, carries the palette
    as its colour table (no data transparent), the class names, and internal overviews."""
    from rio_cogeo.cogeo import cog_validate

    out, _ = demo_run
    rng = np.random.default_rng(3)
    image = rng.normal(0, 1, (700, 600, 4)).astype(np.float32)
    image[100:140, 200:260] = np.nan  # no data
    _geotiff(tmp_path / "big.tif", image, tiled=True, blockxsize=128, blockysize=128, compress="deflate")
    done = runner.invoke(app, ["predict", str(out), str(tmp_path / "big.tif"), "--out", str(tmp_path / "pred"),
                               "--tiff", "--max-pixels", "100000", "--tile", "128"])
    assert done.exit_code == 0, done.output
    assert "run in tiles" in done.output
    path = tmp_path / "pred" / "big_labels.tif"
    valid, errors, _ = cog_validate(str(path), quiet=True)
    assert valid, errors
    _, manifest = load_predictor(out)
    palette = [tuple(c) for c in manifest["classes"]["palette"]]
    with rasterio.open(path) as ds, rasterio.open(tmp_path / "big.tif") as source:
        assert ds.crs == source.crs and ds.transform == source.transform
        assert ds.overviews(1), "no internal overviews"
        colours = ds.colormap(1)
        assert [colours[k][:3] for k in range(len(palette))] == palette
        assert colours[255] == (0, 0, 0, 0)
        assert json.loads(ds.tags()["class_names"]) == list(CLASS_NAMES)
        labels = ds.read(1)
    assert (labels[100:140, 200:260] == 255).all() and (labels[:100] < 5).all()
    png = np.array(Image.open(tmp_path / "pred" / "big_labels.png"))
    assert np.array_equal(labels, png)


def test_train_run_reproduces_its_heldout_iou(tmp_path, tiff_scenes):
    """A cnnkit train run over a folder of TIFFs: predicting its held-out files gives the IoU training printed."""
    root = tmp_path / "data"
    truth = tiff_scenes(root, SyntheticLandCover(10, seed=5, min_size=24, max_size=48), name="s{}", held_from=7,
                        odd_sizes=True, scale=1000.0, offset=3000.0)  # odd sizes: rounded up by the pipeline
    run = tmp_path / "run"
    done = runner.invoke(app, ["train", str(root), "--out", str(run), "--heldout", str(root / "held"), "--epochs", "2",
                               "--classes", ",".join(CLASS_NAMES), "--ignore-index", "255"])
    assert done.exit_code == 0, done.output
    printed = float(re.search(r"held-out mean IoU:\s+([0-9.]+)", done.output).group(1))
    assert "no data (NaN, ±inf)" in done.output and "unlabelled (ignore_index=255)" in done.output
    done = runner.invoke(app, ["predict", str(run), str(root / "held" / "images"), "--out", str(tmp_path / "pred")])
    assert done.exit_code == 0, done.output
    stems = sorted(truth)
    predicted = [np.array(Image.open(tmp_path / "pred" / f"{s}_labels.png")).astype(np.int64) for s in stems]
    assert _mean_iou(predicted, [truth[s] for s in stems], 5) == pytest.approx(printed, abs=5e-4)


def test_refusals(demo_run, tmp_path):
    out, _ = demo_run
    first = runner.invoke(app, ["predict", str(out), str(out / "samples" / "heldout_00.tif"), "--out",
                                str(tmp_path / "p")])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["predict", str(out), str(out / "samples" / "heldout_00.tif"), "--out",
                                str(tmp_path / "p")])
    text = " ".join(again.output.split())
    assert again.exit_code == 2 and "already holds predictions" in text and "--overwrite" in text
    resumed = runner.invoke(app, ["predict", str(out), str(out / "samples" / "heldout_00.tif"), "--out",
                                  str(tmp_path / "p"), "--resume"])  # everything finished: nothing to redo
    assert resumed.exit_code == 0 and "0 images" in resumed.output and "1 finished before (--resume)" in " ".join(
        resumed.output.split()), resumed.output
    empty = runner.invoke(app, ["predict", str(out), str(out / "samples"), "--out", ""])
    assert empty.exit_code == 2 and "--out must name a folder. Received out=''" in " ".join(empty.output.split())
    old = tmp_path / "old-run"
    (old / "checkpoints").mkdir(parents=True)
    done = runner.invoke(app, ["predict", str(old), str(out / "samples"), "--out", str(tmp_path / "q")])
    text = " ".join(done.output.split())
    assert done.exit_code == 2 and "has no manifest.json" in text and "older cnnkit" in text
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["model"] = {"builder": "os.system", "args": {}, "weights": "model.safetensors"}  # the older form
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "manifest.json").write_text(json.dumps(manifest))
    done = runner.invoke(app, ["predict", str(custom), str(out / "samples"), "--out", str(tmp_path / "r")])
    assert done.exit_code == 2 and "does not import code named in a run folder" in " ".join(done.output.split())
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((3, 20, 20), np.float32), photometric="minisblack")
    done = runner.invoke(app, ["predict", str(out), str(wrong), "--out", str(tmp_path / "s")])
    assert done.exit_code == 2 and "has 3 bands; the network was trained on 4" in " ".join(done.output.split())


def test_devices_two_writes_the_files_of_one_process(demo_run, tmp_path, monkeypatch):
    """``cnnkit predict --devices 2`` (two gloo processes, one thread each; whole images shared by read groups, a
    scene's tiles dealt round the ranks) writes the files of ``--devices 1 --threads 1``, byte for byte."""
    out, _ = demo_run
    rng = np.random.default_rng(3)
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(5):
        image = rng.normal(0, 1, (4, 20 + 3 * i, 30 - 2 * i)).astype(np.float32)
        tifffile.imwrite(folder / f"img_{i}.tif", image, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(folder / "scene.tif", rng.normal(0, 1, (4, 90, 70)).astype(np.float32),
                     photometric="minisblack", planarconfig="separate")
    args = ["predict", str(out), str(folder), "--tiff", "--confidence", "--max-pixels", "2000", "--tile", "32"]
    threads = torch.get_num_threads()
    try:
        one = runner.invoke(app, [*args, "--out", str(tmp_path / "one"), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    started = []  # the processes the command started: two ranks, not this process alone
    launch = distributed._launch
    monkeypatch.setattr(distributed, "_launch", lambda config, inputs, processes: started.append(processes)
                        or launch(config, inputs, processes))
    two = runner.invoke(app, [*args, "--out", str(tmp_path / "two"), "--devices", "2"])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert started == [2]
    assert "1 run in tiles" in two.output
    written = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir() if not p.name.startswith(".")}
    assert len(written) == 6 * 4  # labels PNG and COG, overlay, confidence for each input
    assert {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir() if not p.name.startswith(".")} == written
