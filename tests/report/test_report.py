"""``cnnkit.report``: a tiny real training run, its HTML parsed, its images opened, and (if installed) Chromium."""

from __future__ import annotations

import csv
import re
import textwrap
import warnings
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

import cnnkit.report
from cnnkit import CnnkitError
from cnnkit.cli.main import app
from cnnkit.report import read_metrics, write_report
from cnnkit.train import FilterEvolutionCallback, SegmentationTask, fit

CLASS_NAMES = ["background", "road", "car <&>"]  # markup in a name must come out escaped
SECTIONS = ("curves", "iou", "evolution", "summary", "filters", "activations", "gradcam", "tsne", "predictions")


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 3, 1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of SegmentationTask on generated 3 × 16 × 16 images, with a FilterEvolutionCallback."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.8).long()
    y[:, 0] = -100  # an unlabelled row
    data = DataLoader(TensorDataset(x, y), batch_size=8)
    net = _net()
    task = SegmentationTask(net, num_classes=3, lr=0.05, class_names=CLASS_NAMES)
    run_dir = tmp_path_factory.mktemp("run")
    fit(task, data, data, run_dir=run_dir, max_epochs=2, progress=False, enable_model_summary=False,
        callbacks=[FilterEvolutionCallback(nn.Conv2d, every_n_steps=1)])
    samples = [(x[i], y[i]) for i in range(8)]
    path = write_report(run_dir, model=net, input_shape=(3, 16, 16), samples=samples, class_names=CLASS_NAMES,
                        title="tiny <run> & co")
    return run_dir, path, net, samples


class _Page(HTMLParser):
    """Collects images, links, sections and IoU cells of the report."""

    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.links: list[str] = []
        self.sections: dict[str, str] = {}
        self.cells: dict[str, dict[str, str]] = {}

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])
        if tag == "section":
            self.sections[a["id"]] = a["data-present"]
        if tag == "td" and a.get("data-key"):
            self.cells[a["data-key"]] = a


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_public_names():
    assert set(cnnkit.report.__all__) == {
        "REPORT_DIR", "ReportSection", "RunRecipe", "data_section", "evaluation_section", "frames_section",
        "load_run_weights", "maps_section", "profiles_section", "read_metrics", "recipe_section",
        "series_data_section", "series_evaluation_section", "write_report"}
    assert all(hasattr(cnnkit.report, name) for name in cnnkit.report.__all__)


def test_recipe_section_states_how_the_run_was_made(tmp_path):
    """Every setting of a RunRecipe is in the written page, numbers exact in data-value, with where it came from."""
    from cnnkit.report import RunRecipe, recipe_section

    recipe = RunRecipe(data="/data/fields", split="2 of 9 images held out at random (seed 3)",
                       band_names=["blue", "green", "red", "nir", "validity"], bands=["blue", "green", "red", 3],
                       nodata="NaN, ±inf, or 0", ignore_index=255, network="Unet / resnet18", encoder="resnet18",
                       weights="imagenet", epochs=7, batch_size=4, lr=3e-4, lr_source="--lr", schedule="cosine",
                       options=[("warm-up epochs", 2, "default of the 'convolutional' family")],
                       nodata_share=1 / 3, unlabelled_share=0.125, seed=3)
    with pytest.warns(UserWarning, match="no logs"):
        path = write_report(tmp_path, sections=[recipe_section(recipe)])
    page = _parse(path)
    assert next(iter(page.sections)) == "run" and page.sections["run"] == "yes"
    cells = {key: cell["data-value"] for key, cell in page.cells.items()}
    assert cells["run/value/data"] == "/data/fields" and cells["run/value/network"] == "Unet / resnet18"
    assert cells["run/value/bands"] == "blue, green, red, nir, validity"
    assert cells["run/value/bands kept"] == "blue, green, red, 3" and cells["run/value/encoder"] == "resnet18"
    assert cells["run/value/no data"] == "NaN, ±inf, or 0" and cells["run/value/initial weights"] == "imagenet"
    assert float(cells["run/value/learning rate"]) == 3e-4 and cells["run/from/learning rate"] == "--lr"
    assert float(cells["run/value/warm-up epochs"]) == 2
    assert cells["run/from/warm-up epochs"] == "default of the 'convolutional' family"
    assert float(cells["run/value/no-data share"]) == 1 / 3 and float(cells["run/value/unlabelled share"]) == 0.125
    assert float(cells["run/value/ignore value"]) == 255 and float(cells["run/value/epochs"]) == 7
    text = path.read_text(encoding="utf-8")
    assert ">255<" in text and ">7<" in text  # integers shown as they are, not with four decimals
    assert "33.3 % of the training pixels hold no data" in text


def test_report_is_one_file_with_valid_relative_pngs(run):
    run_dir, path, _, _ = run
    assert path == run_dir / "report" / "report.html"
    page = _parse(path)
    assert len(page.images) >= 10
    for img in page.images:
        src = img["src"]
        assert not Path(src).is_absolute() and "/" not in src and ":" not in src, src
        assert img["alt"].strip(), f"{src} has no alt text"
        with Image.open(path.parent / src) as image:
            assert image.format == "PNG" and image.size[0] > 0 and image.size[1] > 0
    assert not [link for link in page.links if re.match(r"(https?:)?//", link)]
    html = path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "@import" not in html


def test_every_section_is_present(run):
    _, path, _, _ = run
    page = _parse(path)
    assert page.sections == dict.fromkeys(SECTIONS, "yes")


def test_user_strings_are_escaped(run):
    _, path, _, _ = run
    html = path.read_text(encoding="utf-8")
    assert "tiny &lt;run&gt; &amp; co" in html and "<run>" not in html
    assert "car &lt;&amp;&gt;" in html and "car <&>" not in html


def test_iou_table_equals_the_last_validation_row(run):
    run_dir, path, _, _ = run
    with (run_dir / "logs" / "version_0" / "metrics.csv").open(newline="") as f:
        last = [row for row in csv.DictReader(f) if row["val/mean_iou"]][-1]
    cells = _parse(path).cells
    keys = [f"val/iou/{name}" for name in CLASS_NAMES] + ["val/mean_iou", "val/pixel_accuracy"]
    for key in keys:
        assert float(cells[key]["data-value"]) == float(last[key]), key
    text = path.read_text(encoding="utf-8")
    for key in keys:
        assert f">{float(last[key]):.4f}</td>" in text, key


def test_resumed_run_is_read_as_one_history(tmp_path):
    for k, rows in enumerate([["0,1,0.9"], ["1,2,0.8", "1,3,0.7"]]):
        folder = tmp_path / "logs" / f"version_{k}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("epoch,step,val/loss\n" + "\n".join(rows) + "\n")
    assert [(r["step"], r["version"]) for r in read_metrics(tmp_path)] == [(1, 0), (2, 1), (3, 1)]
    path = write_report(tmp_path)
    page = _parse(path)
    assert page.sections["curves"] == "yes" and page.sections["evolution"] == "no"
    assert "1 restart(s)" in path.read_text(encoding="utf-8")


def test_model_without_samples_notes_what_is_missing(tmp_path):
    with pytest.warns(UserWarning, match="no logs/version_\\*/metrics.csv"):
        path = write_report(tmp_path, model=_net(), input_shape=(3, 8, 8))
    page = _parse(path)
    assert page.sections["summary"] == "yes" and page.sections["filters"] == "yes"
    assert page.sections["curves"] == "no" and page.sections["gradcam"] == "no"
    assert "No samples given" in path.read_text(encoding="utf-8")


def test_sections_of_your_own_come_first_with_their_figures_and_exact_numbers(tmp_path):
    from matplotlib.figure import Figure

    from cnnkit.report import ReportSection

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    data = ReportSection("Data <summary>", "Sizes & shares.", figures=[(fig, "a line")], id="data",
                         columns=["class", "share", "note"],
                         rows=[("water", 1 / 3, "common"), ("reed", 0.0125, "rare")])
    with pytest.warns(UserWarning, match="no logs"):
        path = write_report(tmp_path, sections=[data, ReportSection("Second")])
    page = _parse(path)
    assert list(page.sections)[:2] == ["data", "extra-1"] and page.sections["data"] == "yes"
    assert float(page.cells["data/share/water"]["data-value"]) == 1 / 3  # exact, not the 4 shown decimals
    assert page.cells["data/note/reed"]["data-value"] == "rare"
    assert (path.parent / page.images[0]["src"]).is_file() and page.images[0]["alt"] == "a line"
    assert "Data &lt;summary&gt;" in path.read_text(encoding="utf-8")


def test_report_section_checks_its_table_and_id():
    from cnnkit.report import ReportSection

    with pytest.raises(ValueError, match=r"one cell per column \(2\)\. Received row lengths \[3\]"):
        ReportSection("t", columns=["a", "b"], rows=[(1, 2, 3)])
    with pytest.raises(ValueError, match="id must start with a letter"):
        ReportSection("t", id="1 bad")
    with pytest.raises(TypeError, match=r"sections must hold cnnkit\.report\.ReportSection"):
        write_report(Path("."), sections=["text"])


def test_classification_samples_get_a_true_vs_predicted_table(tmp_path):
    from cnnkit.models import TinyResNet

    torch.manual_seed(0)
    net = TinyResNet(in_channels=3, num_classes=4, width=4)
    images = torch.randn(5, 3, 16, 16)
    samples = [(images[i], i % 4) for i in range(5)]
    with pytest.warns(UserWarning, match="no logs"):
        path = write_report(tmp_path, model=net, samples=samples, class_names=["a", "b", "c", "d"])
    page = _parse(path)
    with torch.no_grad():
        predicted = net.eval()(images).argmax(1).tolist()
    for i in range(5):
        assert page.cells[f"predictions/true/{i}"]["data-value"] == f"{i % 4}: {'abcd'[i % 4]}"
        assert page.cells[f"predictions/predicted/{i}"]["data-value"] == f"{predicted[i]}: {'abcd'[predicted[i]]}"
    assert page.sections["gradcam"] == "yes" and page.sections["tsne"] == "yes"


def test_model_state_is_left_alone(run):
    run_dir, _, net, samples = run
    net.train()
    before = [p.grad for p in net.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(run_dir, model=net, samples=samples[:2])
    assert net.training and [p.grad for p in net.parameters()] == before


def test_errors_name_the_run_dir(tmp_path):
    with pytest.raises(CnnkitError, match=f"Nothing to report in run_dir '{re.escape(str(tmp_path))}'"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="run_dir must be an existing folder"):
        write_report(tmp_path / "nope")


def test_cli_report(run, tmp_path):
    run_dir, _, _, _ = run
    factory = tmp_path / "tinynet.py"
    factory.write_text(textwrap.dedent("""
        from torch import nn

        def build():
            return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(6, 3, 1))
    """))
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run_dir), "--model", f"{factory}:build", "--input", "3x16x16"])
    assert result.exit_code == 0, result.output
    assert f"wrote {run_dir / 'report' / 'report.html'}" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["report", str(empty)])
    assert result.exit_code == 2 and "Nothing to report" in result.output and "metrics.csv" in result.output
    model_only = tmp_path / "model_only"
    model_only.mkdir()
    result = runner.invoke(app, ["report", str(model_only), "--model", f"{factory}:build", "--input", "3x16x16"])
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "has no logs/version_*/metrics.csv" in result.output


def test_chromium_renders_every_image_without_console_errors(run, open_in_chromium):
    from PIL import Image

    _, path, _, _ = run
    shot, states = open_in_chromium(path)
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
    assert len(states) == len(_parse(path).images)


def test_rewriting_a_report_removes_only_its_own_files(tmp_path):
    import json

    net = _net()
    first = write_report(tmp_path, model=net, input_shape=(3, 8, 8))
    assert sorted(p.name for p in first.parent.iterdir()) == ["cnnkit-report.json", "filters_0.png", "report.html"]
    (first.parent / "filters_0.png").unlink()  # the user replaces a picture of the report by one of theirs
    mine = {"notes.txt": b"mine", "filters_0.png": b"\x89PNG mine"}
    for name, data in mine.items():
        (first.parent / name).write_bytes(data)
    second = write_report(tmp_path, model=net, input_shape=(3, 8, 8))
    for name, data in mine.items():
        assert (second.parent / name).read_bytes() == data, name  # kept, and never written over
    listed = json.loads((second.parent / "cnnkit-report.json").read_text())["files"]
    assert sorted(listed) == ["filters_0_2.png", "report.html"]
    assert 'src="filters_0_2.png"' in second.read_text()


def test_a_report_cnnkit_did_not_write_is_kept(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.html").write_text("<p>mine</p>")
    with pytest.raises(CnnkitError, match=r"report\.html' exists and is not on the list of files cnnkit wrote"):
        write_report(tmp_path, model=_net(), input_shape=(3, 8, 8))
    assert (tmp_path / "report" / "report.html").read_text() == "<p>mine</p>"
    path = write_report(tmp_path, model=_net(), input_shape=(3, 8, 8), report_dir=tmp_path / "other")
    assert path == tmp_path / "other" / "report.html" and path.is_file()


def test_a_richer_report_is_kept(tmp_path):
    section = cnnkit.report.ReportSection("Data", "the data")
    rich = write_report(tmp_path, model=_net(), input_shape=(3, 8, 8), sections=[section])
    before = {p.name: p.read_bytes() for p in rich.parent.iterdir()}
    with pytest.raises(CnnkitError, match=r"holds sections that this report cannot write \('Data'"):
        write_report(tmp_path, model=_net(), input_shape=(3, 8, 8))
    assert {p.name: p.read_bytes() for p in rich.parent.iterdir()} == before
    write_report(tmp_path, model=_net(), input_shape=(3, 8, 8), sections=[section])  # the same sections: replaced


class _Look(HTMLParser):
    """Legend swatches (by legend kind) and sample panels (by kind) of a report."""

    def __init__(self):
        super().__init__()
        self.legend: str | None = None
        self.swatches: dict[str, list[tuple[tuple[int, ...], str]]] = {}
        self.panels: list[dict[str, str]] = []
        self._swatch: tuple[int, ...] | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "div" and "data-legend" in a:
            self.legend = a["data-legend"]
            self.swatches[self.legend] = []
        if tag == "span" and "data-rgb" in a:
            self._swatch = tuple(int(v) for v in a["data-rgb"].split(","))
        if tag == "img" and a.get("data-kind") in ("image", "labels", "errors", "confidence"):
            self.panels.append(a)

    def handle_data(self, data):
        if self._swatch is not None and data.strip():
            self.swatches[self.legend].append((self._swatch, data.strip()))
            self._swatch = None


def _look(path: Path) -> _Look:
    page = _Look()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _pixels(path: Path):
    import numpy as np

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def label_colours_outside_legend(html: Path) -> dict[str, set[tuple[int, ...]]]:
    """For every label and error panel of the page, the colours it uses that its legend does not list."""
    page = _look(html)
    legend = {kind: {color for color, _ in entries} for kind, entries in page.swatches.items()}
    stray = {}
    for panel in page.panels:
        if panel["data-kind"] not in ("labels", "errors"):
            continue
        used = {tuple(int(v) for v in c) for c in _pixels(html.parent / panel["src"]).reshape(-1, 3)}
        stray[panel["src"]] = used - legend.get(panel["data-kind"], set())
    return stray


def test_label_panels_use_exactly_the_legend_colours(run, tmp_path):
    """Every colour of every label / error panel is a legend swatch; class k's swatch is tab10's colour k; each
    labelled pixel has its class's swatch and each unlabelled one the 'unlabelled' swatch."""
    import numpy as np

    run_dir, _, net, samples = run
    path = write_report(run_dir, model=net, samples=samples, class_names=CLASS_NAMES, report_dir=tmp_path / "r")
    page = _look(path)
    tab10 = {0: (31, 119, 180), 1: (255, 127, 14), 2: (44, 160, 44)}  # matplotlib's tab10, written out
    by_name = {text: color for color, text in page.swatches["labels"]}
    assert {k: by_name[f"{k}: {name}"] for k, name in enumerate(CLASS_NAMES)} == tab10
    stray = label_colours_outside_legend(path)
    assert len(stray) == 2 * 8 + 8  # true, predicted and errors of 8 rows
    assert not any(stray.values()), stray
    for i, (_, label) in enumerate(samples):
        true = next(p for p in page.panels if p["alt"] == f"sample {i}: true labels")
        drawn = _pixels(path.parent / true["src"])
        expected = np.array([by_name["unlabelled"] if v == -100 else tab10[v] for v in label.flatten().tolist()])
        assert (drawn.reshape(-1, 3) == expected).all(), i


def test_label_colour_check_catches_blended_overlays(tmp_path):
    """The check above fails on a label picture blended into the image (the former overlays)."""
    from cnnkit.render import overlay, save_png

    (tmp_path / "p.png").write_bytes(b"")
    save_png(overlay(torch.rand(3, 4, 4), torch.zeros(4, 4, dtype=torch.long), alpha=0.5), tmp_path / "p.png")
    (tmp_path / "r.html").write_text('<div data-legend="labels"><span data-rgb="31,119,180"></span>0: a</div>'
                                     '<img data-kind="labels" src="p.png" alt="x">')
    assert label_colours_outside_legend(tmp_path / "r.html")["p.png"]


def test_rows_are_named_and_samples_may_differ_in_size(tmp_path):
    """Rows follow sample_names; a validity band's 0 pixels are 'no data' in every panel; filters name it."""
    import numpy as np

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    samples = []
    for h, w in ((8, 12), (10, 6)):
        image = torch.randn(3, h, w)
        image[-1] = 1.0
        image[-1, :2, :3] = 0.0  # no data
        label = (image[0] > 0).long()
        label[:2, :3] = -100
        samples.append((image, label))
    with pytest.warns(UserWarning, match="no logs"):
        path = write_report(tmp_path, model=net, samples=samples, class_names=["dry", "wet"],
                            sample_names=["a.tif", "b.tif"], validity_band=True)
    page = _look(path)
    assert [p["alt"] for p in page.panels if p["data-kind"] == "image"] == ["a.tif: image", "b.tif: image"]
    nodata = dict((text, color) for color, text in page.swatches["labels"])["no data"]
    assert dict((text, color) for color, text in page.swatches["errors"])["no data"] == nodata
    for panel in page.panels:
        drawn = _pixels(path.parent / panel["src"])
        assert drawn.shape[:2] == samples[0 if panel["alt"].startswith("a") else 1][1].shape, panel["alt"]
        assert (drawn[:2, :3] == np.array(nodata)).all(), panel["alt"]
        assert not (drawn[2:, 3:] == np.array(nodata)).all(axis=-1).any() or panel["data-kind"] == "image"
    assert not any(label_colours_outside_legend(path).values())
    text = path.read_text(encoding="utf-8")
    assert "the last (validity) is the validity band" in text
    with pytest.raises(ValueError, match=r"sample_names must hold one name per sample \(2\)\. Received 1 names"):
        write_report(tmp_path, model=net, samples=samples, sample_names=["a"], report_dir=tmp_path / "x")


def test_a_large_scene_is_drawn_as_its_central_crop_and_the_page_says_so(tmp_path):
    """A 530 × 40 segmentation sample is run and drawn as its central 512 rows (rows 9 to 520: the true-label panel's
    rows follow the label map's bands from row 9 on); the row and the intro say so; a small sample is left whole."""
    import numpy as np

    from cnnkit.report.sections import MAX_SIDE

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    big = torch.randn(3, MAX_SIDE + 18, 40)
    rows = torch.arange(MAX_SIDE + 18)
    big_label = ((rows // 7) % 2)[:, None].expand(-1, 40).clone()  # bands of 7 rows: shows where the crop starts
    small = torch.randn(3, 12, 10)
    with pytest.warns(UserWarning, match="no logs"):
        path = write_report(tmp_path, model=net, samples=[(big, big_label), (small, (small[0] > 0).long())],
                            class_names=["dry", "wet"], sample_names=["scene.tif", "chip.tif"])
    page = _look(path)
    colour = {text: np.array(color) for color, text in page.swatches["labels"]}
    true_panels = {p["alt"]: _pixels(path.parent / p["src"]) for p in page.panels if p["alt"].endswith("true labels")}
    drawn = true_panels["scene.tif: true labels"]
    assert drawn.shape[:2] == (MAX_SIDE, 40)
    expected = big_label[9:9 + MAX_SIDE, 0].numpy()
    for r in (0, 1, 5, 6, 300, MAX_SIDE - 1):
        assert (drawn[r, 0] == colour[f"{expected[r]}: {['dry', 'wet'][expected[r]]}"]).all(), r
    assert true_panels["chip.tif: true labels"].shape[:2] == (12, 10)
    text = path.read_text(encoding="utf-8")
    assert f"{MAX_SIDE}×40 px (the central crop of {MAX_SIDE + 18}×40)" in text
    assert f"as their central {MAX_SIDE}×{MAX_SIDE} crop" in text


def test_sections_without_a_model_keep_working(tmp_path):
    """What a run without an image model writes: its own sections and the training curves."""
    folder = tmp_path / "logs" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,train/loss\n0,1,0.9\n0,2,0.7\n")
    own = [cnnkit.report.ReportSection("Series", "per date", columns=["date", "valid"], rows=[("d1", 0.5)],
                                       id="series")]
    path = write_report(tmp_path, model=None, sections=own, title="series run")
    page = _parse(path)
    assert list(page.sections)[:2] == ["series", "curves"] and page.sections["curves"] == "yes"
    assert page.sections["model"] == "no" and float(page.cells["series/valid/d1"]["data-value"]) == 0.5


def test_a_section_may_replace_a_built_in_one(run, tmp_path):
    run_dir, _, _, _ = run
    own = cnnkit.report.ReportSection("Held-out", "the same IoU, measured apart", replaces=("iou",))
    path = write_report(run_dir, sections=[own], report_dir=tmp_path / "r")
    assert "iou" not in _parse(path).sections
    with pytest.raises(ValueError, match=r"replaces must list ids of built-in sections"):
        cnnkit.report.ReportSection("x", replaces=("nope",))


@pytest.mark.parametrize("kill_at", [1, 2])
def test_a_report_killed_while_written_is_replaced_by_the_next(tmp_path, monkeypatch, kill_at):
    """A report killed while it is written (1: its list being renamed into place; 2: its page) leaves no page that
    its list does not name, so the next report of the run (what --resume writes) replaces it instead of refusing."""
    import cnnkit.report.page as page
    from cnnkit.report import ReportSection

    section = ReportSection("Data", "d", columns=["class", "share"], rows=[("water", 0.5)], id="data")
    replace, calls = page.os.replace, []

    def killed(src, dst):
        calls.append(dst)
        if len(calls) == kill_at:
            raise KeyboardInterrupt  # the process stops here
        return replace(src, dst)

    monkeypatch.setattr(page.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="no logs"):
        write_report(tmp_path, sections=[section])
    monkeypatch.setattr(page.os, "replace", replace)
    assert not (tmp_path / "report" / "report.html").exists()
    with pytest.warns(UserWarning, match="no logs"):
        path = write_report(tmp_path, sections=[section])
    assert float(_parse(path).cells["data/share/water"]["data-value"]) == 0.5
    assert sorted(p.name for p in path.parent.iterdir()) == ["cnnkit-report.json", "report.html"]
