"""The image time-series pipeline end to end: `cnnkit train` on a folder of cloudy TIFF stacks with one-hot `.npy`
labels (all-zero = no label), its report in headless Chromium, its numbers against an independent evaluation of
each held-out series alone, and the task's per-pixel weights against a hand-written cross-entropy."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from cnnkit.cli.main import app
from cnnkit.data import crop_series
from cnnkit.models import SeriesSegNet

runner = CliRunner()


def _write_folder(root, count=7, seed=3):
    """TIFF stacks T × C × H × W with NaN clouds, one-hot (H, W, K) labels with all-zero unlabelled pixels."""
    (root / "series").mkdir(parents=True)
    (root / "labels").mkdir()
    scenes = crop_series(count, seed=seed, steps=(3, 6), sides=(14, 22))
    for i, (series, label) in enumerate(scenes):
        tifffile.imwrite(root / "series" / f"field_{i:02d}.tif", series.numpy(), photometric="minisblack")
        onehot = np.zeros((*label.shape, 5), np.uint8)
        ys, xs = np.nonzero(label.numpy() >= 0)
        onehot[ys, xs, label.numpy()[ys, xs]] = 1
        np.save(root / "labels" / f"field_{i:02d}.npy", onehot)
    return scenes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("series-data")
    scenes = _write_folder(root)
    assert any(bool(torch.isnan(s).any()) for s, _ in scenes) and any(bool((y < 0).any()) for _, y in scenes)
    out = root.parent / f"{root.name}-run"
    result = runner.invoke(app, ["train", str(root), "--out", str(out), "--epochs", "2", "--width", "4",
                                 "--hidden", "4", "--crop-size", "12", "--batch-size", "4", "--threads", "1"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return root, out, result.output, scenes


def test_cnnkit_train_recognises_a_series_folder(trained):
    _, out, output, _ = trained
    assert "image time series" in output and "single-date baseline IoU" in output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "series-segmentation" and manifest["kind"] == "series"
    assert manifest["model"]["spec"]["architecture"] == "SeriesSegNet" and manifest["model"]["in_channels"] == 7
    html = (out / "report" / "report.html").read_text()
    for title in ("Series and clouds", "Held-out evaluation", "Predicted vs true", "Pixels over time",
                  "A series, date by date"):
        assert title in html


def _reference_iou(net, manifest, root, num_classes=5):
    """Each held-out series alone, standardised by hand, confusion matrix counted with NumPy."""
    mean = torch.tensor(manifest["input"]["mean"])
    std = torch.tensor(manifest["input"]["std"])
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for name in manifest["series"]["heldout"]:
        stack = torch.from_numpy(tifffile.imread(root / "series" / name))
        onehot = np.load(root / "labels" / name.replace(".tif", ".npy"))
        valid = torch.isfinite(stack).all(1)
        x = torch.nan_to_num((stack - mean[:, None, None]) / std[:, None, None])
        with torch.no_grad():
            predicted = net(x[None], valid[None])[0].argmax(0).numpy()
        labelled = onehot.sum(-1) > 0
        truth = onehot.argmax(-1)
        np.add.at(confusion, (truth[labelled], predicted[labelled]), 1)
    tp = np.diag(confusion).astype(float)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou))


def test_reported_iou_equals_each_heldout_series_alone(trained):
    from safetensors.torch import load_file

    root, out, _, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    net = SeriesSegNet(manifest["model"]["in_channels"], manifest["model"]["num_classes"],
                       **manifest["model"]["spec"]["args"])
    net.load_state_dict(load_file(out / "model.safetensors"))
    net.eval()
    expected = _reference_iou(net, manifest, root)
    assert manifest["series"]["heldout_mean_iou"] == pytest.approx(expected, abs=1e-6)


def test_chromium_renders_the_series_report(trained, open_in_chromium):
    _, out, _, _ = trained
    open_in_chromium(out / "report" / "report.html")


def test_time_series_flag_on_an_image_folder_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    result = runner.invoke(app, ["train", str(tmp_path), "--time-series", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "series folder does not exist" in result.output


def test_pixel_weights_reach_the_loss():
    """The task's loss with per-pixel weights equals a hand-written weighted cross-entropy."""
    from cnnkit.train.series_task import SeriesSegmentationTask

    torch.manual_seed(0)
    net = SeriesSegNet(2, 3, width=4, hidden=4).double()
    class_weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    task = SeriesSegmentationTask(net, 3, class_weight=class_weight)
    x, valid = torch.randn(2, 4, 2, 6, 5, dtype=torch.float64), torch.rand(2, 4, 6, 5) > 0.3
    labels = torch.randint(0, 3, (2, 6, 5))
    labels[0, 0] = -100
    pixel = torch.rand(2, 6, 5, dtype=torch.float64)
    loss, logged, _, n = task._step(((x, valid), labels, pixel))
    counted = labels != -100
    per_pixel = F.cross_entropy(net(x, valid), labels.clamp_min(0), reduction="none")
    w = class_weight[labels.clamp_min(0)] * pixel * counted
    torch.testing.assert_close(loss, (per_pixel * w).sum() / w.sum(), rtol=1e-12, atol=1e-12)
    assert n == 2 and torch.equal(logged, loss.detach())  # one process: the loss is the logged weighted mean
    unweighted, _, _, _ = task._step(((x, valid), labels))
    assert not torch.allclose(loss, unweighted)


def test_cnnkit_predict_on_a_series_run(trained, tmp_path):
    """`cnnkit predict` recognises a series run: label TIFFs equal the network run by hand on each series alone;
    the single-image API refuses the run with a message naming what to do."""
    from safetensors.torch import load_file

    from cnnkit.app.predict import load_predictor
    from cnnkit.errors import CnnkitError

    root, out, _, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(p.name for p in (root / "series").iterdir())[:2]
    # one stack as written (T, C, H, W), one rewritten as (T, H, W, C): the band count tells them apart
    stack = tifffile.imread(root / "series" / names[1])
    tifffile.imwrite(tmp_path / "last.tif", np.moveaxis(stack, 1, -1), photometric="minisblack",
                     planarconfig="contig")
    result = runner.invoke(app, ["predict", str(out), str(root / "series" / names[0]), str(tmp_path / "last.tif"),
                                 "--out", str(tmp_path / "pred")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2 series" in result.output
    net = SeriesSegNet(manifest["model"]["in_channels"], manifest["model"]["num_classes"],
                       **manifest["model"]["spec"]["args"])
    net.load_state_dict(load_file(out / "model.safetensors"))
    net.eval()
    mean, std = torch.tensor(manifest["input"]["mean"]), torch.tensor(manifest["input"]["std"])
    for name, written in ((names[0], Path(names[0]).stem), (names[1], "last")):
        series = torch.from_numpy(tifffile.imread(root / "series" / name))
        valid = torch.isfinite(series).all(1)
        with torch.no_grad():
            expected = net(torch.nan_to_num((series - mean[:, None, None]) / std[:, None, None])[None],
                           valid[None])[0].argmax(0).numpy()
        expected = np.where(valid.any(0).numpy(), expected, 255)
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "pred" / f"{written}_labels.tif"), expected)
        assert (tmp_path / "pred" / f"{written}_labels.png").is_file()
    with pytest.raises(CnnkitError, match="trained on image time series"):
        load_predictor(out)


@pytest.mark.slow
def test_demo_time_series_beats_the_single_date_baseline(tmp_path):
    """`cnnkit demo --time-series`, shortened to 8 epochs (192 steps of its 432): both baselines printed, and the
    ConvLSTM over every date beats the same network on the least cloudy date by ≥ 0.20 held-out mean IoU (the full
    demo: ≥ 0.80, see docs/benchmarks.md). A single date carries no class information by construction."""
    import re

    result = runner.invoke(app, ["demo", "--time-series", "--epochs", "8", "--out", str(tmp_path / "run"),
                                 "--threads", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output

    def number(label):
        return float(re.search(label + r":\s+([0-9.]+)", result.output).group(1))

    series, single, majority = (number("held-out mean IoU"), number("single-date baseline IoU"),
                                number("majority-class baseline IoU"))
    assert series >= single + 0.20, result.output
    assert single < 0.25 and majority < 0.25  # neither baseline can know the crop
    assert (tmp_path / "run" / "report" / "report.html").is_file()


def test_label_panels_are_opaque_in_the_legend_colours():
    """Every pixel inside a drawn label panel has exactly a legend colour (class or "no label"): no blending."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401

    from cnnkit.render.labels import DEFAULT_PALETTE
    from cnnkit.render.series import NO_LABEL_COLOR, label_maps_figure

    label = torch.arange(4).repeat_interleave(5).repeat(20, 1)  # four vertical bands of classes 0–3
    label[:5] = -100
    fig = label_maps_figure([("true", label), ("copy", label)], ["a", "b", "c", "d"])
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    allowed = {tuple(c) for c in DEFAULT_PALETTE[:4]} | {NO_LABEL_COLOR}
    ax = fig.axes[0]
    x0, y0, x1, y1 = ax.get_window_extent().bounds[0], ax.get_window_extent().bounds[1], \
        sum(ax.get_window_extent().bounds[::2]), sum(ax.get_window_extent().bounds[1::2])
    height = image.shape[0]
    inner = image[int(height - y1) + 3 : int(height - y0) - 3, int(x0) + 3 : int(x1) - 3].reshape(-1, 3)
    found = {tuple(int(v) for v in c) for c in np.unique(inner, axis=0)}
    assert found <= allowed and len(found) == 5, found - allowed


def test_manifest_kind_follows_the_task_and_unknown_tasks_are_refused(tmp_path):
    from cnnkit.errors import CnnkitError, ShapeError
    from cnnkit.train.rundir import read_manifest, write_manifest

    net = SeriesSegNet(2, 3, width=2, hidden=2)
    common = dict(builder="SeriesSegNet", builder_args={}, preprocessing=None, class_names=["a", "b", "c"],
                  palette=[(0, 0, 0)] * 3, ignore_index=None)
    write_manifest(tmp_path, net, task="series-segmentation", **common)
    assert read_manifest(tmp_path)["kind"] == "series"
    write_manifest(tmp_path, net, **common)
    assert read_manifest(tmp_path)["kind"] == "images"
    with pytest.raises(ShapeError, match="Unknown task 'video'"):
        write_manifest(tmp_path, net, task="video", **common)
    data = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "task": "video"}))
    with pytest.raises(CnnkitError, match="'task' must be one of"):
        read_manifest(tmp_path)


def test_pixel_weight_maps_train_end_to_end(tmp_path):
    """A folder with weights/: the pipeline trains on 4-item series (weights through the crops and the loss)."""
    from cnnkit.app.timeseries import train_series_folder

    root = tmp_path / "data"
    scenes = _write_folder(root, count=3)
    (root / "weights").mkdir()
    for i, (_, label) in enumerate(scenes):
        np.save(root / "weights" / f"field_{i:02d}.npy", np.full(label.shape, 2.0, np.float32))
    run = train_series_folder(root, tmp_path / "run", epochs=1, width=2, hidden=2, crop_size=8, batch_size=2,
                              single_date_baseline=False, progress=False, log=lambda _: None)
    assert run.single_date_mean_iou is None and (tmp_path / "run" / "report" / "report.html").is_file()


def test_series_predict_reads_masks_refuses_overwrites_and_unsupported_options(trained, tmp_path):
    """A data folder's masks/ counts in predict as in training; outputs of a dotted stem are not overwritten
    without --overwrite; image-only options are refused rather than ignored; probabilities and confidence equal
    the network's softmax."""
    from safetensors.torch import load_file

    from cnnkit.data.series import read_series

    root, out, _, _ = trained
    manifest = json.loads((out / "manifest.json").read_text())
    data = tmp_path / "data"
    (data / "series").mkdir(parents=True)
    (data / "masks").mkdir()
    stack = tifffile.imread(sorted((root / "series").iterdir())[0])
    tifffile.imwrite(data / "series" / "S2.2020.tif", stack, photometric="minisblack")
    mask = np.ones((stack.shape[0], *stack.shape[2:]), np.uint8)
    mask[:, : stack.shape[2] // 2] = 0  # the top half is cloudy on every date, by the mask only
    np.save(data / "masks" / "S2.2020.npy", mask)
    result = runner.invoke(app, ["predict", str(out), str(data), "--out", str(tmp_path / "p")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "p" / "S2.2020_labels.tif")
    assert (labels[: stack.shape[2] // 2] == 255).all()  # masked everywhere: no valid date
    net = SeriesSegNet(manifest["model"]["in_channels"], manifest["model"]["num_classes"],
                       **manifest["model"]["spec"]["args"])
    net.load_state_dict(load_file(out / "model.safetensors"))
    net.eval()
    series = torch.from_numpy(stack)
    valid = torch.isfinite(series).all(1) & torch.from_numpy(mask != 0)
    mean, std = torch.tensor(manifest["input"]["mean"]), torch.tensor(manifest["input"]["std"])
    x = torch.where(valid[:, None], (series - mean[:, None, None]) / std[:, None, None], torch.zeros(()))
    with torch.no_grad():
        expected = net(x[None], valid[None])[0].argmax(0).numpy()
    np.testing.assert_array_equal(labels, np.where(valid.any(0).numpy(), expected, 255))
    before = (tmp_path / "p" / "S2.2020_labels.tif").read_bytes()
    again = runner.invoke(app, ["predict", str(out), str(data), "--out", str(tmp_path / "p")], env={"COLUMNS": "200"})
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert (tmp_path / "p" / "S2.2020_labels.tif").read_bytes() == before
    refused = runner.invoke(app, ["predict", str(out), str(data), "--out", str(tmp_path / "q"), "--devices", "2"],
                            env={"COLUMNS": "200"})
    assert refused.exit_code != 0 and "--devices" in refused.output and "time series" in refused.output
    # probabilities and confidence: the softmax of the network run by hand, 0 where no date is valid
    done = runner.invoke(app, ["predict", str(out), str(data), "--out", str(tmp_path / "pc"), "--probabilities",
                               "--confidence", "--probability-dtype", "float16"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    # a COG with the floating-point predictor: read through GDAL (tifffile needs imagecodecs for it); GDAL gives the
    # half floats (NBITS=16) as float32
    import rasterio

    with rasterio.open(tmp_path / "pc" / "S2.2020_probabilities.tif") as ds:
        probabilities = ds.read().transpose(1, 2, 0)
        assert ds.tags(1, "IMAGE_STRUCTURE").get("NBITS") == "16"
    with rasterio.open(tmp_path / "pc" / "S2.2020_confidence.tif") as ds:
        confidence = ds.read(1)
    classes = len(manifest["classes"]["names"])
    assert probabilities.shape == (*stack.shape[2:], classes)
    np.testing.assert_array_equal(probabilities.astype(np.float16).astype(np.float32), probabilities)  # half floats
    with torch.no_grad():
        want = torch.softmax(net(x[None], valid[None])[0], 0).permute(1, 2, 0).numpy()
    seen = valid.any(0).numpy()
    np.testing.assert_allclose(probabilities[seen].astype(np.float32), want[seen], atol=1e-3)
    assert (probabilities[~seen] == 0).all() and (~seen).any()
    np.testing.assert_array_equal(confidence, probabilities.max(-1))
    # a folder of per-date images with bands: the axis of the bands must be said
    dates = tmp_path / "dates"
    dates.mkdir()
    for t in range(2):
        tifffile.imwrite(dates / f"d{t}.tif", stack[t], photometric="minisblack")
    with pytest.raises(ValueError, match="band_count"):
        read_series(dates)
    assert read_series(dates, band_count=stack.shape[1])[0].shape == (2, *stack.shape[1:])


def test_series_label_tiffs_carry_the_inputs_georeferencing(trained, tmp_path):
    """A GeoTIFF stack, and a folder of GeoTIFF dates, give label TIFFs with the same georeferencing tags (pixel
    scale, tie point) and the same labels as the untagged stack, their nodata the label 255 rather than the input's
    -9999; a stack without tags gives no georeferencing (and the same nodata label)."""
    root, out, _, _ = trained
    stack = tifffile.imread(sorted((root / "series").iterdir())[0])  # (T, C, H, W)
    tags = [(33550, "d", 3, (10.0, 10.0, 0.0), True),
            (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True),
            (42113, "s", 0, "-9999", True)]
    inputs = tmp_path / "in"
    (inputs / "dated").mkdir(parents=True)
    tifffile.imwrite(inputs / "geo.tif", stack, photometric="minisblack", extratags=tags)
    tifffile.imwrite(inputs / "plain.tif", stack, photometric="minisblack")
    for t, frame in enumerate(stack):
        tifffile.imwrite(inputs / "dated" / f"2020-0{t + 1}.tif", frame, photometric="minisblack", extratags=tags)
    result = runner.invoke(app, ["predict", str(out), str(inputs / "geo.tif"), str(inputs / "plain.tif"),
                                 str(inputs / "dated"), "--out", str(tmp_path / "p")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    plain = tifffile.imread(tmp_path / "p" / "plain_labels.tif")
    for stem in ("geo", "dated"):
        with tifffile.TiffFile(tmp_path / "p" / f"{stem}_labels.tif") as tif:
            page = tif.pages[0]
            assert page.tags[33550].value == (10.0, 10.0, 0.0), stem
            assert page.tags[33922].value == (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), stem
            assert page.tags[42113].value == "255", stem  # the label map's own no-data label, not the input's
            np.testing.assert_array_equal(page.asarray(), plain)
    with tifffile.TiffFile(tmp_path / "p" / "plain_labels.tif") as tif:
        assert not any(code in tif.pages[0].tags for code in (33550, 33922))
        assert tif.pages[0].tags[42113].value == "255"


def test_a_series_network_chosen_by_name_trains_through_the_same_workflow(tmp_path):
    """--model UTAE on a series folder: built from its spec, called with the days, recorded in the manifest and
    the report; options a series network cannot take are refused before the folder is read."""
    root = tmp_path / "data"
    scenes = _write_folder(root, count=3)
    dates = {f"field_{i:02d}": [f"2024-{2 + 2 * t:02d}-{1 + 3 * i:02d}" for t in range(len(s))]
             for i, (s, _) in enumerate(scenes)}
    (root / "series" / "dates.json").write_text(json.dumps(dates))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(root), "--out", str(out), "--epochs", "1", "--model", "UTAE",
                                 "--model-args", '{"encoder_widths": [4, 4], "num_heads": 2}', "--crop-size", "12",
                                 "--batch-size", "4", "--threads", "1"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "(UTAE over every date, clouds masked)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["spec"] == {"library": "cnnkit", "architecture": "UTAE",
                                         "args": {"encoder_widths": [4, 4], "num_heads": 2}}
    html = (out / "report" / "report.html").read_text()
    assert 'data-key="run/value/network" data-value="UTAE"' in html
    assert "default of the &#39;attention-series&#39; family" in html  # the learning rate's source (UTAE's family)
    # predict calls the network with the series' acquisition days, as training did (not 0 … T-1)
    from cnnkit.app.predict import load_series_model
    from cnnkit.data.series import read_series

    done = runner.invoke(app, ["predict", str(out), str(root / "series" / "field_01.tif"), "--out",
                               str(tmp_path / "pred")])
    assert done.exit_code == 0, done.output
    net, manifest = load_series_model(out)
    prep = manifest["input"]
    series, valid, found = read_series(root / "series" / "field_01.tif", band_count=prep["band_count"],
                                       with_dates=True)
    assert found.days().tolist() == [(date(2024, 2 + 2 * t, 4) - date(2024, 1, 1)).days for t in range(len(series))]
    x = torch.where(valid[:, None], (series - torch.tensor(prep["mean"])[:, None, None])
                    / torch.tensor(prep["std"])[:, None, None], torch.zeros(()))
    with torch.no_grad():
        logits = net(x[None], valid[None], found.days()[None])[0]
    expected = np.where(valid.any(0).numpy(), logits.argmax(0).numpy(), 255)
    assert np.array_equal(np.array(Image.open(tmp_path / "pred" / "field_01_labels.png")), expected)
    refused = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "other"), "--freeze-encoder", "1"])
    assert refused.exit_code == 2 and "--freeze-encoder needs a network with an encoder" in refused.output
    assert not (tmp_path / "other").exists() and "folder" not in refused.output
