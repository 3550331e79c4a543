"""``cnnkit train`` on generated folders of PNG and multi-band TIFF files, end to end through the CLI.

The scenes come from :class:`cnnkit.data.SyntheticLandCover` (clouds, unlabelled areas, a rare class),
written to disk the way a user's data looks: uint8 RGB PNGs with 0 for "no data" and palette masks with
255 for "not labelled", or float32 4-band TIFFs with NaN under clouds. Sizes are cut to odd values so the
pipeline must round them up. The majority-class baseline in the report is checked against numpy counts.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

# Imported here, Lightning's log handler writes to pytest's stream, not to the stream of the first CliRunner
# call (closed by the second).
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from cnnkit.cli.main import app
from cnnkit.data import CLASS_NAMES, SyntheticLandCover

NAMES = ",".join(CLASS_NAMES)


def _write(root: Path, data: SyntheticLandCover, kind: str) -> list[np.ndarray]:
    """Write ``data`` under root/images and root/masks; return the label maps as written (255 = unlabelled)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    written = []
    for i, ((image, label), cloud) in enumerate(zip(data, data.clouds)):
        cut = (i % 3, (2 * i) % 4)  # odd sizes: the pipeline rounds them up to multiples of 4
        h, w = label.shape[0] - cut[0], label.shape[1] - cut[1]
        bands = image[:4, :h, :w].numpy()
        mask = label[:h, :w].numpy().copy()
        mask[mask < 0] = 255
        mask = mask.astype(np.uint8)
        if kind == "png":
            rgb = np.clip(bands[[2, 1, 0]] * 400 + 1, 1, 255).astype(np.uint8)  # 0 is kept for "no data"
            rgb[:, cloud[:h, :w].numpy()] = 0
            Image.fromarray(rgb.transpose(1, 2, 0)).save(root / "images" / f"scene_{i:02d}.png")
            palette = Image.fromarray(mask, mode="P")
            palette.putpalette([0, 0, 255, 0, 128, 0, 255, 255, 0, 128, 128, 128, 255, 0, 255] + [0] * 753)
            palette.save(root / "masks" / f"scene_{i:02d}.png")
        else:
            bands = bands.astype(np.float32)
            bands[:, cloud[:h, :w].numpy()] = np.nan
            tifffile.imwrite(root / "images" / f"scene_{i:02d}.tif", bands, photometric="minisblack",
                             planarconfig="separate")
            tifffile.imwrite(root / "masks" / f"scene_{i:02d}.tif", mask)
        written.append(mask)
    return written


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cells: dict[str, str] = {}
        self.sections: dict[str, str] = {}
        self.images: list[str] = []
        self.rows: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img" and a.get("data-kind") == "image":
            self.rows.append(a["alt"].removesuffix(": image"))
        if tag == "td" and a.get("data-key"):
            self.cells[a["data-key"]] = a["data-value"]
        if tag == "section":
            self.sections[a["id"]] = a["data-present"]
        if tag == "img":
            self.images.append(a["src"])


def _parse(path: Path) -> _Cells:
    page = _Cells()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _baseline(train_masks, heldout_masks, num_classes: int) -> tuple[int, list[float], float]:
    """Majority class of the training masks and the IoU of predicting it everywhere on the held-out ones."""
    counts = np.bincount(np.concatenate([m[m != 255] for m in train_masks]), minlength=num_classes)
    majority = int(counts.argmax())
    held = np.concatenate([m[m != 255] for m in heldout_masks])
    iou = []
    for k in range(num_classes):
        true, predicted = (held == k).sum(), held.size if k == majority else 0
        both = true if k == majority else 0
        union = true + predicted - both
        iou.append(float(both / union) if union else float("nan"))
    return majority, iou, float(np.nanmean(iou))


def test_tiff_folder_with_a_heldout_folder(tmp_path):
    train_masks = _write(tmp_path / "train", SyntheticLandCover(10, seed=5, max_size=64), "tif")
    held_masks = _write(tmp_path / "held", SyntheticLandCover(4, seed=6, max_size=64), "tif")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", str(tmp_path / "train"), "--heldout", str(tmp_path / "held"), "--out", str(out), "--epochs", "2",
        "--width", "4", "--classes", NAMES, "--ignore-index", "255",
    ])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "folder" in text and "5 classes" in text and "held-out folder" in text
    assert "rare classes (< 5 %): greenhouse" in text
    report = out / "report" / "report.html"
    assert f"report:                        {report}" in text
    page = _parse(report)
    assert page.sections["data"] == page.sections["heldout"] == "yes"
    assert all((report.parent / src).is_file() for src in page.images)
    assert page.rows == [f"scene_{i:02d}.tif" for i in range(4)]  # one row per held-out file, named by it

    majority, iou, mean = _baseline(train_masks, held_masks, len(CLASS_NAMES))
    assert f"(predicting '{CLASS_NAMES[majority]}'" in text
    for k, name in enumerate(CLASS_NAMES):
        value = float(page.cells[f"heldout/majority-class IoU/{k}: {name}"])
        assert value == pytest.approx(iou[k], abs=1e-6) or (np.isnan(value) and np.isnan(iou[k]))
    assert float(page.cells["heldout/majority-class IoU/mean IoU"]) == pytest.approx(mean, abs=1e-6)
    printed = float(re.search(r"held-out mean IoU:\s+([0-9.]+)", text).group(1))
    assert float(page.cells["heldout/network IoU/mean IoU"]) == pytest.approx(printed, abs=5e-4)
    shares = np.bincount(np.concatenate([m[m != 255] for m in train_masks]), minlength=5) / sum(
        (m != 255).sum() for m in train_masks)
    for k, name in enumerate(CLASS_NAMES):
        assert float(page.cells[f"data/share of labelled pixels/{k}: {name}"]) == pytest.approx(shares[k], abs=1e-9)

    # How this run was made: the data, its missing values, the network and the rate, counted here from the files
    missing = unlabelled = total = 0
    for path in sorted((tmp_path / "train" / "images").iterdir()):
        gone = np.isnan(tifffile.imread(path)).any(0)
        mask = tifffile.imread(tmp_path / "train" / "masks" / path.name)
        missing, unlabelled, total = missing + gone.sum(), unlabelled + ((mask == 255) & ~gone).sum(), total + gone.size
    assert page.sections["run"] == "yes"
    assert page.cells["run/value/data"] == str(tmp_path / "train")
    assert page.cells["run/value/held-out split"] == f"held-out folder {str(tmp_path / 'held')!r}"
    assert page.cells["run/value/network"] == "TinySegNet" and page.cells["run/value/encoder"] == "none"
    assert float(page.cells["run/value/ignore value"]) == 255 and page.cells["run/value/initial weights"] == "random"
    assert float(page.cells["run/value/epochs"]) == 2
    assert float(page.cells["run/value/learning rate"]) == 0.01  # TinySegNet's family default, not given
    assert page.cells["run/from/learning rate"] == "default of the 'cnnkit' family"
    assert float(page.cells["run/value/no-data share"]) == pytest.approx(missing / total, abs=1e-12)
    assert float(page.cells["run/value/unlabelled share"]) == pytest.approx(unlabelled / total, abs=1e-12)
    assert 0 < missing < total and 0 < unlabelled < total  # both shares are measured, not zero by construction


def _heldout_iou_one_image_at_a_time(train_root: Path, held_root: Path, run: Path, width: int) -> float:
    """The network's held-out mean IoU recomputed without the pipeline: numpy band statistics over the
    training files, each held-out image standardised, padded and run alone, confusion counted in numpy."""
    import torch

    from cnnkit.models import TinySegNet
    from cnnkit.report import load_run_weights

    def read(root):
        for path in sorted((root / "images").iterdir()):
            yield tifffile.imread(path).astype(np.float64), tifffile.imread(root / "masks" / path.name)

    pixels = np.concatenate([x[:, np.isfinite(x).all(0)] for x, _ in read(train_root)], axis=1)
    mean, std = pixels.mean(1), pixels.std(1)
    net = TinySegNet(5, 5, width)
    load_run_weights(net, run)
    net.eval()
    confusion = np.zeros((5, 5), np.int64)
    for x, mask in read(held_root):
        valid = np.isfinite(x).all(0)
        h, w = mask.shape
        H, W = -(-h // 4) * 4, -(-w // 4) * 4
        image = np.zeros((5, H, W), np.float32)
        image[:4, :h, :w] = np.where(valid, (x - mean[:, None, None]) / std[:, None, None], 0)
        image[4, :h, :w] = valid
        with torch.no_grad():
            predicted = net(torch.from_numpy(image)[None])[0, :, :h, :w].argmax(0).numpy()
        counted = valid & (mask != 255)
        np.add.at(confusion, (mask[counted].astype(np.int64), predicted[counted]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float(np.nanmean(np.where(union > 0, tp / np.maximum(union, 1), np.nan)))


def test_network_iou_equals_running_each_heldout_image_alone(tmp_path):
    _write(tmp_path / "train", SyntheticLandCover(8, seed=8, max_size=48), "tif")
    _write(tmp_path / "held", SyntheticLandCover(4, seed=9, max_size=48), "tif")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(tmp_path / "train"), "--heldout", str(tmp_path / "held"),
                                      "--out", str(out), "--epochs", "2", "--width", "4", "--ignore-index", "255",
                                      "--num-classes", "5"])
    assert result.exit_code == 0, result.output
    reported = float(_parse(out / "report" / "report.html").cells["heldout/network IoU/mean IoU"])
    expected = _heldout_iou_one_image_at_a_time(tmp_path / "train", tmp_path / "held", out, width=4)
    assert reported == pytest.approx(expected, abs=2e-3)


def test_png_folder_with_a_random_split(tmp_path):
    _write(tmp_path / "data", SyntheticLandCover(10, seed=7, max_size=64), "png")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", str(tmp_path / "data"), "--out", str(out), "--epochs", "1", "--width", "4",
        "--ignore-index", "255", "--nodata", "0", "--heldout-fraction", "0.3",
    ])
    assert result.exit_code == 0, result.output
    assert "3 of 10 images held out at random (seed 0)" in result.output
    assert "5 classes" in result.output  # largest label + 1
    page = _parse(out / "report" / "report.html")
    assert "heldout/network IoU/0: class 0" in page.cells
    held = re.findall(r"scene_\d\d\.png", result.output) or None
    assert len(page.rows) == 3 and all(re.fullmatch(r"scene_\d\d\.png", name) for name in page.rows), page.rows
    assert held is None or set(page.rows) <= set(held)


@pytest.mark.parametrize(("args", "message"), [
    (["--heldout-fraction", "1.5"], "heldout_fraction must be in (0, 1)"),
    (["--bands", "0,x"], "'x' does not name a band"),  # a name: the PNGs name no band
    (["--classes", "a,b"], "labels must be class indices in [0, 2) or -100"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    _write(tmp_path / "data", SyntheticLandCover(3, seed=1, max_size=40), "png")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                                      "--ignore-index", "255", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_missing_folder_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["train", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "images folder does not exist" in result.output


def _described_geotiffs(root: Path, seed: int, count: int) -> None:
    """``count`` 5-band float32 GeoTIFFs whose band descriptions are blue, green, red, nir, swir, and their masks."""
    import rasterio

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(count):
        image = rng.normal(size=(5, 24, 20)).astype(np.float32)
        with rasterio.open(root / "images" / f"s{k}.tif", "w", driver="GTiff", width=20, height=24, count=5,
                           dtype="float32") as dst:
            dst.write(image)
            dst.descriptions = ("blue", "green", "red", "nir", "swir")
        tifffile.imwrite(root / "masks" / f"s{k}.tif", rng.integers(0, 3, (24, 20), dtype=np.uint8))


def test_bands_by_name_composite_by_name_and_training_options(tmp_path):
    """--bands by the files' band names (the manifest records their indices), the report's composite from the bands
    named red, green, blue (not the first three), the training options in the log and the report."""
    import json

    _described_geotiffs(tmp_path / "train", 1, 3)
    _described_geotiffs(tmp_path / "held", 2, 1)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", str(tmp_path / "train"), "--heldout", str(tmp_path / "held"), "--out", str(out), "--epochs", "2",
        "--width", "4", "--num-classes", "3", "--bands", "nir,Blue,GREEN,2", "--warmup-epochs", "1",
        "--accumulate-grad-batches", "2", "--batch-size", "1"])
    assert result.exit_code == 0, result.output
    assert "1-epoch warm-up (--warmup-epochs), gradients accumulated over 2 batches (--accumulate-grad-batches)" \
        in " ".join(result.output.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["bands"] == [3, 0, 1, 2]
    page = _parse(out / "report" / "report.html")
    assert page.cells["run/value/bands"] == "nir, blue, green, red, validity"
    assert page.cells["run/value/bands kept"] == "nir, Blue, GREEN, 2"
    assert float(page.cells["run/value/warm-up epochs"]) == 1 and page.cells["run/from/warm-up epochs"] == \
        "--warmup-epochs"
    assert float(page.cells["run/value/batches per optimizer step"]) == 2
    text = (out / "report" / "report.html").read_text(encoding="utf-8")
    assert "Image: bands: red, green, blue as red, green, blue" in text  # bands 3, 2, 1 of the network's input

    refused = CliRunner().invoke(app, ["train", str(tmp_path / "train"), "--out", str(tmp_path / "other"),
                                       "--freeze-encoder", "1"])
    assert refused.exit_code == 2 and "--freeze-encoder needs a network with an encoder" in refused.output
    assert "folder" not in refused.output and "band mean" not in refused.output  # refused before reading the data
    assert not (tmp_path / "other").exists()


def _small_tiffs(root: Path, seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` 2-band float32 TIFFs of 16 × 20 with NaN holes, uint8 masks of 3 balanced classes (255: no label)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for k in range(count):
        image = rng.normal(3.0, 2.0, (2, 16, 20)).astype(np.float32)
        image[:, rng.random((16, 20)) < 0.05] = np.nan
        mask = rng.integers(0, 3, (16, 20), dtype=np.uint8)
        mask[rng.random((16, 20)) < 0.05] = 255
        tifffile.imwrite(root / "images" / f"s{k}.tif", image, photometric="minisblack", planarconfig="separate")
        tifffile.imwrite(root / "masks" / f"s{k}.tif", mask)
        pairs.append((image, mask))
    return pairs


def test_train_folder_reads_the_training_split_once_before_training(tmp_path, monkeypatch):
    """#30: band statistics, class weights and the no-data and unlabelled counts come from one pass (each training
    item decoded once before the epoch), equal to numpy over the files; a skipped entry is named in the log."""
    import json

    from cnnkit.app.train import train_folder
    from cnnkit.data import SegmentationFolder

    pairs = _small_tiffs(tmp_path / "train", 21, 4)
    _small_tiffs(tmp_path / "held", 22, 1)
    tifffile.imwrite(tmp_path / "train" / "masks" / "orphan.tif", np.zeros((16, 20), np.uint8))
    reads: dict[tuple[str, int], int] = {}
    original = SegmentationFolder.__getitem__

    def counted(self, index):
        key = (self.root.name, int(index))
        reads[key] = reads.get(key, 0) + 1
        return original(self, index)

    monkeypatch.setattr(SegmentationFolder, "__getitem__", counted)
    lines: list[str] = []
    run = train_folder(tmp_path / "train", tmp_path / "run", heldout=tmp_path / "held", num_classes=3, epochs=1,
                       width=4, ignore_index=255, rare_below=0.0, progress=False, log=lines.append)
    # each training item: once for the statistics, once in the one epoch (item 0 also gives the channel count)
    assert [reads[("train", k)] for k in range(1, 4)] == [2, 2, 2], reads

    valid = [np.isfinite(image).all(0) for image, _ in pairs]
    pixels = np.concatenate([image[:, ok].astype(np.float64) for (image, _), ok in zip(pairs, valid)], axis=1)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    np.testing.assert_allclose(manifest["input"]["mean"], pixels.mean(1), rtol=1e-12)
    np.testing.assert_allclose(manifest["input"]["std"], pixels.std(1), rtol=1e-12)
    labels = np.concatenate([mask[ok & (mask != 255)] for (_, mask), ok in zip(pairs, valid)])
    counts = np.bincount(labels, minlength=3).astype(np.float64)
    enet = 1.0 / np.log(1.02 + counts / counts.sum())  # train_segmentation's default weighting
    np.testing.assert_allclose(run.class_weight, enet, rtol=1e-6)
    missing = sum(int((~ok).sum()) for ok in valid)
    unlabelled = sum(int(((mask == 255) & ok).sum()) for (_, mask), ok in zip(pairs, valid))
    total = 4 * 16 * 20
    text = "\n".join(lines)
    assert f"training pixels: {total:,}; no data (NaN, ±inf): {missing:,} " in text
    assert f"unlabelled (ignore_index=255): {unlabelled:,} ({100 * unlabelled / total:.1f} %)" in text
    from cnnkit.data.folder import EXTENSIONS

    assert any(line.startswith("skipped ") and line.endswith("orphan.tif: a mask without an image (no "
                                                              "orphan{" + ",".join(EXTENSIONS) + "} in "
                                                              f"{tmp_path / 'train' / 'images'})") for line in lines)


def test_train_folder_refuses_a_mismatched_pair_before_decoding_any_pixel(tmp_path, monkeypatch):
    """#25: the header check comes before the statistics and the class weights: with decoding made to fail, the
    mismatch is what is refused, naming both files."""
    import cnnkit.data.folder as folder_module
    from cnnkit.app.train import train_folder
    from cnnkit.errors import ShapeError

    _small_tiffs(tmp_path / "train", 23, 3)
    tifffile.imwrite(tmp_path / "train" / "masks" / "s1.tif", np.zeros((16, 19), np.uint8))

    def never(*args, **kwargs):
        raise AssertionError("a pixel was decoded")

    monkeypatch.setattr(folder_module, "_read", never)
    with pytest.raises(ShapeError, match=r"images.s1\.tif has shape \(16, 20\), mask .*masks.s1\.tif has shape "
                                         r"\(16, 19\)"):
        train_folder(tmp_path / "train", tmp_path / "run", num_classes=3, epochs=1, width=4, log=lambda line: None)
    assert not (tmp_path / "run").exists()


def test_rgb_geotiffs_without_descriptions_are_named_by_their_colour_interpretation(tmp_path):
    """Bands by the colour interpretation GDAL reads (red, green, blue; no band descriptions): selected by name
    (the manifest records their indices), named in the log, and the report's composite drawn from them."""
    import json

    import rasterio

    from cnnkit.app.train import train_folder

    rng = np.random.default_rng(24)
    for part, count in (("train", 3), ("held", 1)):
        (tmp_path / part / "images").mkdir(parents=True)
        (tmp_path / part / "masks").mkdir()
        for k in range(count):
            with rasterio.open(tmp_path / part / "images" / f"s{k}.tif", "w", driver="GTiff", width=20, height=16,
                               count=3, dtype="uint8", photometric="RGB") as dst:
                dst.write(rng.integers(0, 256, (3, 16, 20), dtype=np.uint8))
            tifffile.imwrite(tmp_path / part / "masks" / f"s{k}.tif", rng.integers(0, 3, (16, 20), dtype=np.uint8))
    lines: list[str] = []
    train_folder(tmp_path / "train", tmp_path / "run", heldout=tmp_path / "held", num_classes=3, epochs=1, width=4,
                 bands=("Blue", "green", "red"), progress=False, log=lines.append)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["input"]["bands"] == [2, 1, 0]
    assert "band names (the files' band descriptions or colour interpretation): blue, green, red" in lines
    text = (tmp_path / "run" / "report" / "report.html").read_text(encoding="utf-8")
    assert "Image: bands: red, green, blue as red, green, blue" in text  # the network's bands 2, 1, 0
