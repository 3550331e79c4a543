"""The training demo: its data set (against hand-checked properties) and a shortened run end to end."""

from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from cnnkit.app import majority_baseline, run_training_demo
from cnnkit.cli.main import app
from cnnkit.data import CLASS_NAMES, RARE_CLASS, SyntheticLandCover
from cnnkit.errors import ShapeError
from cnnkit.metrics import mean_iou


def test_dataset_is_deterministic_for_a_seed():
    a, b, c = SyntheticLandCover(6, seed=3), SyntheticLandCover(6, seed=3), SyntheticLandCover(6, seed=4)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.sizes != c.sizes or not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c))


def test_dataset_sizes_clouds_unlabelled_and_rare_class():
    data = SyntheticLandCover(60, seed=0)
    heights = [h for h, _ in data.sizes]
    widths = [w for _, w in data.sizes]
    assert max(heights) >= 2 * min(heights) and max(widths) >= 2 * min(widths)  # several-fold in both
    assert all(h % 4 == 0 and w % 4 == 0 and 32 <= h <= 96 and 32 <= w <= 96 for h, w in data.sizes)
    cloudy = 0
    for (image, label), cloud in zip(data, data.clouds):
        assert image.shape == (5, *label.shape) and image.dtype == torch.float32 and label.dtype == torch.int64
        assert torch.equal(image[-1], (~cloud).float())  # the validity band
        assert (image[:4, cloud] == 0).all()  # no data under clouds
        assert (label[cloud] == -100).all()  # no labels under clouds
        assert set(label.unique().tolist()) <= {-100, 0, 1, 2, 3, 4}
        cloudy += bool(cloud.any())
    assert 10 <= cloudy < 60
    labels = torch.cat([y.flatten() for _, y in data])
    clear = torch.cat([(~c).flatten() for c in data.clouds])
    assert ((labels == -100) & clear).any()  # unlabelled pixels that are not clouds
    counted = labels[labels >= 0]
    share = (counted == RARE_CLASS).float().mean().item()
    assert 0 < share < 0.03
    assert all((counted == k).float().mean() > 0.15 for k in range(4))


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ShapeError, match=r"num_images must be an integer >= 1\. Received num_images=0"):
        SyntheticLandCover(0)
    with pytest.raises(ShapeError, match="min_size and max_size"):
        SyntheticLandCover(2, min_size=64, max_size=32)


def test_majority_baseline_matches_hand_computed_iou():
    data = [(None, torch.tensor([[0, 0, 1, -100]])), (None, torch.tensor([[2, 0, 0, 0]]))]
    # predicting 0 everywhere: IoU(0) = 5 / 7, classes 1 and 2 are true but never predicted: IoU 0
    result = majority_baseline(0, data, 3)
    assert result["mean_iou"].item() == pytest.approx((5 / 7) / 3)
    assert result["mean_iou"].item() == pytest.approx(mean_iou(result["confusion_matrix"]).item())


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []
        self.rows: list[str] = []
        self.sections: dict[str, str] = {}
        self.cells: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.sources.append(a["src"])
            if a.get("data-kind") == "image":
                self.rows.append(a["alt"].removesuffix(": image"))
        if tag == "section":
            self.sections[a["id"]] = a["data-present"]
        if tag == "td" and a.get("data-key"):
            self.cells[a["data-key"]] = a["data-value"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    buffer = io.StringIO()
    result = run_training_demo(out, epochs=2, n_train=16, n_heldout=8, width=8, progress=False,
                               console=Console(file=buffer, width=160, color_system=None))
    return out, result, buffer.getvalue()


def test_short_demo_writes_a_report_whose_images_exist(short_run):
    out, result, _ = short_run
    assert result.report == out / "report" / "report.html" and result.report.is_file()
    page = _Images()
    page.feed(result.report.read_text(encoding="utf-8"))
    assert len(page.sources) > 5
    for src in page.sources:
        assert (result.report.parent / src).is_file(), src
    assert "greenhouse" in result.report.read_text(encoding="utf-8")  # class names reach the report
    for section in ("data", "heldout", "curves", "evolution", "summary", "filters", "activations",
                    "gradcam", "tsne", "predictions"):
        assert page.sections[section] == "yes", section
    assert "iou" not in page.sections  # the held-out table replaces the last validation row's
    # one row per held-out scene, named like the TIFF the demo writes for it
    assert page.rows == [f"heldout_{i:02d}.tif" for i in range(8)]
    assert all((out / "samples" / name).is_file() for name in page.rows)
    # the numbers the command prints are the report's
    assert float(page.cells["heldout/network IoU/mean IoU"]) == result.mean_iou
    assert float(page.cells["heldout/majority-class IoU/mean IoU"]) == result.baseline_mean_iou
    assert float(page.cells[f"data/loss weight/{RARE_CLASS}: greenhouse"]) == result.class_weight[RARE_CLASS]
    assert result.rare_classes == [RARE_CLASS]
    # how the run was made: the built-in data, its cloud and unlabelled shares counted here from the generator
    train = SyntheticLandCover(16, seed=0)
    labels = [label for _, label in train]
    pixels = sum(label.numel() for label in labels)
    cloudy = sum(int(cloud.sum()) for cloud in train.clouds)
    unlabelled = sum(int((label == -100).sum()) for label in labels)
    assert page.cells["run/value/data"] == "built-in synthetic land cover (16 scenes, seed 0)"
    assert page.cells["run/value/bands"] == "blue, green, red, NIR, validity"
    assert float(page.cells["run/value/no-data share"]) == pytest.approx(cloudy / pixels, abs=1e-12)
    assert float(page.cells["run/value/unlabelled share"]) == pytest.approx(unlabelled / pixels, abs=1e-12)
    assert 0 < cloudy < pixels and 0 < unlabelled < pixels


def test_short_demo_prints_and_returns_iou_and_baseline(short_run):
    _, result, text = short_run
    assert 0 <= result.mean_iou <= 1 and 0 <= result.baseline_mean_iou <= 1
    assert len(result.iou) == len(CLASS_NAMES)
    assert re.search(rf"held-out mean IoU:\s+{result.mean_iou:.3f}", text)
    assert re.search(rf"majority-class baseline IoU:\s+{result.baseline_mean_iou:.3f}", text)
    assert "report:" in text and "elapsed:" in text
    assert result.padding_bucketed < result.padding_random
    assert result.class_weight[RARE_CLASS] > max(result.class_weight[:RARE_CLASS])


def test_cli_demo_shapes_and_bad_device(tmp_path):
    runner = CliRunner()
    shapes = runner.invoke(app, ["demo", "--shapes", "--height", "32", "--width", "48"])
    assert shapes.exit_code == 0, shapes.output
    assert "kernel (16, 36, 4), bias (4, 4, 4)" in shapes.output
    bad = runner.invoke(app, ["demo", "--out", str(tmp_path), "--device", "tpu"])
    assert bad.exit_code == 2
    assert "Unknown device 'tpu'" in bad.output


def test_chromium_renders_the_demo_report(short_run, open_in_chromium):
    _, result, _ = short_run
    open_in_chromium(result.report)


def test_cli_demo_into_its_earlier_run_folder_points_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "cnnkit-demo"
    (earlier / "report").mkdir(parents=True)
    (earlier / "cnnkit-run.json").write_text("{}")
    (earlier / "report" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--epochs", "1"], terminal_width=300)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "'cnnkit-demo' is not empty (it holds report)" in text and "--overwrite replaces that run's" in text
    assert (earlier / "report" / "notes.txt").read_text() == "mine"


def test_quiet_output_one_line_per_epoch(tmp_path):
    """No Lightning banner, tip or known-harmless warning reaches the user; each epoch gets one line."""
    import subprocess
    import sys

    code = (
        "import io, sys\n"
        "from rich.console import Console\n"
        "from cnnkit.app import run_training_demo\n"
        "console = Console(file=sys.stdout, width=80, color_system=None)\n"
        f"run_training_demo({str(tmp_path / 'run')!r}, epochs=2, n_train=12, n_heldout=6, console=console,"
        " progress=False)\n"
    )
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    for noise in ("GPU available", "TPU available", "litlogger", "Loading `train_dataloader`", "LeafSpec",
                  "Trainer.fit stopped", "v_num", "FLOPs"):
        assert noise not in text, noise
    # the demo validates every other epoch: held-out figures on epoch 2 only
    assert re.search(r"^epoch 1/2  train loss [0-9.]+  [0-9.]+ s$", text, re.M), text
    assert re.search(r"^epoch 2/2  train loss [0-9.]+  val loss [0-9.]+  val mean IoU [0-9.]+  [0-9.]+ s$", text,
                     re.M), text
