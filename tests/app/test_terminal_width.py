"""What ``cnnkit demo``, ``demo --time-series``, ``train`` and ``predict`` print fits an 80-column terminal.

The commands run for real on tiny data (one epoch, a few images) with ``COLUMNS=80``; only the HTML report is
left out (it is tested elsewhere and takes most of a short run's time). Lines are counted in characters.
"""

from __future__ import annotations

import io
from pathlib import Path

# Imported here, Lightning's log handler writes to pytest's stream, not to the stream of the first CliRunner
# call (closed by the second).
import lightning.pytorch  # noqa: F401
import pytest
from rich.console import Console
from typer.testing import CliRunner

import cnnkit.app.timeseries
import cnnkit.app.train
from cnnkit.app.console import console_log, wrap_line
from cnnkit.app.train import SegmentationRun
from cnnkit.cli.main import app
from cnnkit.data import SyntheticLandCover

WIDTH = 80


def too_long(text: str, width: int = WIDTH) -> list[str]:
    return [line for line in text.splitlines() if len(line) > width]


@pytest.fixture
def no_report(monkeypatch):
    """The applications without their HTML report: the path it would have, nothing written."""

    def write_report(out, **kwargs):
        return Path(out) / "report" / "report.html"

    monkeypatch.setattr(cnnkit.app.train, "write_report", write_report)
    monkeypatch.setattr(cnnkit.app.timeseries, "write_report", write_report)


@pytest.fixture
def columns(monkeypatch):
    """A terminal of WIDTH columns, as the commands' consoles read it (rich takes COLUMNS from the environment)."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, color_system=None), buffer


def test_wrap_line_keeps_every_word_in_order_and_aligns_values():
    line = ("class weights (enet, images and crops): water 4.19, forest 4.43, cropland 4.04, urban 4.17, "
            "greenhouse 40.69")
    wrapped = wrap_line(line, WIDTH).split("\n")
    assert wrapped == ["class weights (enet, images and crops): water 4.19, forest 4.43, cropland 4.04,",
                       "  urban 4.17, greenhouse 40.69"]  # a log line: continued two spaces in
    aligned = "per-class IoU:                 " + ", ".join(f"class{k} 0.{k}{k}{k}" for k in range(9))
    wrapped = wrap_line(aligned, WIDTH).split("\n")
    assert not too_long("\n".join(wrapped)) and len(wrapped) == 3
    assert " ".join(wrapped).split() == aligned.split()
    for rest in wrapped[1:]:
        assert rest.startswith(" " * 31 + "class") and rest.endswith(("0.888", ","))  # under the value, pairs whole
    assert wrap_line("short", WIDTH) == "short"
    assert not too_long(wrap_line("report: " + "/x" * 100, WIDTH))  # a word longer than a line is cut


def test_result_lines_fit_however_long_the_names(columns):
    console, buffer = _console()
    names = tuple(f"a-class-with-a-long-name-{k}" for k in range(6))
    run = SegmentationRun(report=Path("/" + "/deep" * 30) / "report.html", mean_iou=0.9, baseline_mean_iou=0.1,
                          iou=[0.5] * 6, baseline_iou=[0.0] * 6, class_names=names, class_share=[1 / 6] * 6,
                          class_weight=[1.0] * 6, rare_classes=[], padding_bucketed=0.1, padding_random=0.5,
                          sizes=[(32, 32)], majority=0, seconds=1.0)
    log = console_log(console)
    for line in run.lines():
        log(line)
    text = buffer.getvalue()
    assert not too_long(text), too_long(text)
    assert all(name in " ".join(text.split()) for name in names)


def test_demo_prints_lines_that_fit(columns, no_report, tmp_path):
    from cnnkit.app import run_training_demo

    console, buffer = _console()
    run_training_demo(tmp_path / "run", epochs=1, n_train=4, n_heldout=2, width=4, progress=False, console=console)
    text = buffer.getvalue()
    assert not too_long(text), too_long(text)
    for piece in ("data: 4 training", "class weights", "per-class IoU", "majority-class baseline IoU"):
        assert piece in text  # the lines that were longer than 80 columns are there, wrapped
    assert any(line.startswith("  ") for line in text.splitlines())


def test_series_demo_prints_lines_that_fit(columns, no_report, tmp_path):
    from cnnkit.app import run_series_demo

    console, buffer = _console()
    run_series_demo(tmp_path / "run", epochs=1, n_train=2, n_heldout=1, width=2, hidden=2, progress=False,
                    console=console)
    text = buffer.getvalue()
    assert not too_long(text), too_long(text)
    assert "single-date baseline IoU" in text and "per-class IoU" in text


def test_demo_shapes_prints_lines_that_fit():
    result = CliRunner().invoke(app, ["demo", "--shapes"], env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert not too_long(result.output), too_long(result.output)
    assert "Keras glorot_uniform" in result.output


def test_train_and_predict_print_lines_that_fit(no_report, tmp_path, tiff_scenes):
    root = tmp_path / "data"
    tiff_scenes(root, SyntheticLandCover(6, seed=3))  # six 4-band TIFF scenes, NaN under clouds, and their masks
    env = {"COLUMNS": str(WIDTH), "NO_COLOR": "1"}
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "run"), "--epochs", "1", "--width", "2",
                                  "--ignore-index", "255", "--classes", "water,forest,cropland,urban,greenhouse"],
                            env=env)
    assert trained.exit_code == 0, trained.output
    assert not too_long(trained.output), too_long(trained.output)
    assert "band mean" in trained.output and "training pixels" in trained.output
    predicted = runner.invoke(app, ["predict", str(tmp_path / "run"), str(root / "images"), "--out",
                                    str(tmp_path / "predictions")], env=env)
    assert predicted.exit_code == 0, predicted.output
    assert not too_long(predicted.output), too_long(predicted.output)
    assert "predicted: water" in " ".join(predicted.output.split())


def test_a_log_keeps_its_lines_whole(monkeypatch):
    """Written to a file or a pipe without COLUMNS (a log, not a terminal), a line stays one line to grep for."""
    monkeypatch.delenv("COLUMNS", raising=False)
    console, buffer = _console()
    line = "data: " + ", ".join(f"'class {k}' {k}.00 %" for k in range(20))
    console_log(console)(line)
    assert buffer.getvalue() == line + "\n"
