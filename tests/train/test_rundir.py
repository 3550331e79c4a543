"""The run folder: nothing the user put there is deleted; --overwrite, --resume and damaged checkpoints."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import lightning.pytorch  # noqa: F401  (see test_pipeline.py: Lightning's log handler and CliRunner)
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from cnnkit import CnnkitError, ShapeError
from cnnkit.cli.main import app
from cnnkit.train import SegmentationTask, fit
from cnnkit.train.rundir import MARKER, prepare_run_dir, write_report_manifest

runner = CliRunner()


def _user_files(out: Path) -> dict[Path, bytes]:
    """Files of the user's own in the places cnnkit writes to (and beside them)."""
    files = {
        out / "logs" / "notes.txt": b"my notes",
        out / "logs" / "version_0" / "plot.py": b"print('mine')",
        out / "report" / "figure.png": b"\x89PNG mine",
        out / "checkpoints" / "pretrained.pt": b"weights of mine",
        out / "thesis.tex": b"\\section{mine}",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def _assert_intact(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        assert path.read_bytes() == data, path


def _data(root: Path, n: int = 4, size: int = 16) -> Path:
    """A tiny folder of RGB PNGs and label masks with two classes."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = rng.integers(1, 255, (size, size, 3), dtype=np.uint8)
        mask = (image[..., 0] > 128).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


def _text(result) -> str:
    """The output with Rich's line wrapping undone (words joined by single spaces)."""
    return " ".join(result.output.split())


def _train(data: Path, out: Path, *flags: str, epochs: int = 1):
    return runner.invoke(app, ["train", str(data), "--out", str(out), "--epochs", str(epochs), "--width", "2",
                               "--batch-size", "2", "--num-classes", "2", *flags])


# --- prepare_run_dir without training --------------------------------------------------------------------


def test_a_folder_with_user_files_is_refused_and_named(tmp_path):
    files = _user_files(tmp_path)
    with pytest.raises(CnnkitError, match=r"is not empty \(it holds checkpoints, logs, report, thesis\.tex\); "
                                          r"cnnkit never deletes files it did not write"):
        prepare_run_dir(tmp_path)
    with pytest.raises(CnnkitError, match=rf"--overwrite: .* has no {MARKER}.*nothing was deleted"):
        prepare_run_dir(tmp_path, overwrite=True)
    with pytest.raises(CnnkitError, match=r"--resume: .* is not a cnnkit run folder"):
        prepare_run_dir(tmp_path, resume=True)
    _assert_intact(files)


def test_overwrite_removes_only_what_cnnkit_writes(tmp_path):
    files = _user_files(tmp_path)
    (tmp_path / MARKER).write_text("{}")
    ours = [tmp_path / "logs" / "version_0" / "metrics.csv", tmp_path / "logs" / "version_1" / "hparams.yaml",
            tmp_path / "checkpoints" / "last.ckpt", tmp_path / "checkpoints" / "best.ckpt",
            tmp_path / "tensorboard" / "version_0" / "events.out.tfevents.1.host",
            tmp_path / "report" / "report.html", tmp_path / "report" / "curves.png"]
    for path in ours:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("cnnkit")
    write_report_manifest(tmp_path / "report", ["report.html", "curves.png"], [])
    lines = []
    prepare_run_dir(tmp_path, overwrite=True, log=lines.append)
    _assert_intact(files)
    assert not any(p.exists() for p in ours)
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "logs" / "version_1").exists()
    assert "logs/notes.txt" in lines[0] and "report/figure.png" in lines[0] and "kept" in lines[0]


def test_resume_needs_a_last_checkpoint_and_flags_are_checked(tmp_path):
    (tmp_path / MARKER).write_text("{}")
    with pytest.raises(CnnkitError, match=r"has no checkpoints/last\.ckpt to continue from"):
        prepare_run_dir(tmp_path, resume=True)
    with pytest.raises(ShapeError, match=r"overwrite and resume exclude each other"):
        prepare_run_dir(tmp_path, overwrite=True, resume=True)
    with pytest.raises(ShapeError, match=r"overwrite must be True or False\. Received overwrite='yes'"):
        prepare_run_dir(tmp_path, overwrite="yes")
    assert prepare_run_dir(tmp_path) == tmp_path  # the marker alone: an empty run folder
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShapeError, match=r"out must be a folder"):
        prepare_run_dir(tmp_path / "file")


# --- through the command line ------------------------------------------------------------------------------


def test_cli_train_refuses_a_users_folder_and_overwrite_keeps_the_users_files(tmp_path):
    data = _data(tmp_path / "data")
    out = tmp_path / "run"
    files = _user_files(out)
    for flags in ((), ("--overwrite",), ("--resume",)):
        result = _train(data, out, *flags)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output and "Traceback" not in result.output
        _assert_intact(files)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of cnnkit train into a new folder."""
    root = tmp_path_factory.mktemp("rundir")
    data = _data(root / "data")
    out = root / "run"
    result = _train(data, out)
    assert result.exit_code == 0, result.output
    return data, out


def _epochs(out: Path) -> list[int]:
    epochs = set()
    for path in sorted((out / "logs").rglob("metrics.csv")):
        with path.open() as f:
            epochs |= {int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch")}
    return sorted(epochs)


def test_cli_rerun_overwrite_and_resume(trained, tmp_path):
    data, out = trained
    assert (out / MARKER).is_file() and (out / "report" / "report.html").is_file()
    again = _train(data, out)
    assert again.exit_code == 2
    assert "holds an earlier cnnkit run: --overwrite" in _text(again) and "--resume" in _text(again)

    files = _user_files(out)
    overwritten = _train(data, out, "--overwrite")
    assert overwritten.exit_code == 0, overwritten.output
    _assert_intact(files)
    assert _epochs(out) == [0]  # the earlier run's logs are gone: one fresh run of one epoch
    assert (out / "report" / "report.html").is_file()

    resumed = _train(data, out, "--resume", epochs=2)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in _text(resumed)
    assert _epochs(out) == [0, 1]  # the second epoch continued the first
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    _assert_intact(files)


def test_cli_report_keeps_the_richer_report_of_a_train_run(trained, tmp_path):
    _, out = trained
    report = out / "report"
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    assert any(name.endswith(".png") for name in before)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2, result.output
    assert "holds sections that this report cannot write" in _text(result) and "'Data'" in _text(result)
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    elsewhere = tmp_path / "plain"
    result = runner.invoke(app, ["report", str(out), "--out", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "report.html").is_file()
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before


# --- damaged checkpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_last_checkpoint_is_named(tmp_path, damage):
    x = torch.randn(4, 1, 4, 4)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=2)
    run = tmp_path / "run"
    fit(SegmentationTask(torch.nn.Conv2d(1, 2, 1), 2), loader, run_dir=run, max_epochs=1, progress=False,
        enable_model_summary=False)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(range(256)) * 40)
    (run / MARKER).write_text("{}")

    with pytest.raises(CnnkitError, match=rf"checkpoint '{re.escape(str(last))}' is damaged.*move it away"):
        fit(SegmentationTask(torch.nn.Conv2d(1, 2, 1), 2), loader, run_dir=run, max_epochs=2, progress=False,
            enable_model_summary=False)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is damaged or not a PyTorch checkpoint" in _text(result) and "last.ckpt" in result.output.replace("\n", "")
    assert "The report reads the filter history" in _text(result)
