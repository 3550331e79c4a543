"""``cnnkit train --devices 2 --strategy ddp`` trains the weights of ``--devices 1``: the command-line half of
cnnkit's promise that N processes give the weights of one process with the same global batch.

Lightning's ``ddp`` starts the second process by running the same command again, so these tests run the CLI in a
real subprocess (CPU, gloo backend) with a hard timeout (``subprocess.run(timeout=...)``): a hang fails instead
of blocking. The reference is the
one-process run of the same command; ``--precision 64-true`` keeps float rounding (the order of the all-reduced
sums) far below the 1e-5 tolerance, so a real difference — every process seeing every batch, a per-process loss
mean, unsynchronised batch norm — fails it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cnnkit.cli.main import app
from cnnkit.data import SyntheticLandCover

TIMEOUT = 240
"""Seconds a training subprocess may take before the test fails (a hang, not a slow machine: ~10–20 s each)."""

_LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                       "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS",
                       "SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_NODEID", "SLURM_LOCALID")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiff_scenes) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp-data")
    tiff_scenes(root / "train", SyntheticLandCover(9, seed=11, min_size=16, max_size=40))
    tiff_scenes(root / "held", SyntheticLandCover(3, seed=12, min_size=16, max_size=40))
    return root / "train", root / "held"


def _train(folders: tuple[Path, Path], out: Path, devices: int) -> str:
    """Run ``cnnkit train`` in a subprocess (Lightning's ddp re-runs it for rank 1); its output."""
    train, held = folders
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    env.update(COLUMNS="200", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "cnnkit", "train", str(train), "--heldout", str(held), "--out", str(out),
               "--epochs", "2", "--seed", "3", "--batch-size", "5", "--width", "4", "--ignore-index", "255",
               "--precision", "64-true", "--threads", "1", "--devices", str(devices), "--strategy", "ddp"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"cnnkit train --devices {devices} did not finish in {TIMEOUT} s (a hang?):\n{error.stdout}"
                    f"\n{error.stderr}")
    assert done.returncode == 0, f"cnnkit train --devices {devices} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _iou(output: str) -> list[str]:
    return re.findall(r"held-out mean IoU:\s+(\S+)", output)


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(folders, tmp_path):
    one = _train(folders, tmp_path / "one", devices=1)
    two = _train(folders, tmp_path / "two", devices=2)

    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    assert any(key.endswith("running_var") for key in weights_one), "the masked batch norm's statistics are compared"
    for key, a in weights_one.items():
        b = weights_two[key]
        assert a.shape == b.shape, key
        if a.is_floating_point():
            a64, b64 = a.double(), b.double()
            scale = a64.abs().max().clamp_min(1e-12)
            assert (a64 - b64).abs().max() <= 1e-5 * scale, f"{key}: {(a64 - b64).abs().max()} vs scale {scale}"
        else:
            assert torch.equal(a, b), key  # num_batches_tracked: the same number of steps

    assert len(_iou(one)) == 1 and _iou(one) == _iou(two), (one, two)  # printed once, by rank 0
    assert two.count("band mean") == 1 and two.count("epoch 2/2") == 1, two
    assert (tmp_path / "two" / "report" / "report.html").is_file()


def test_more_processes_than_exist_is_refused_before_anything(tmp_path):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    many = str(max(64, cores + 1))
    out = tmp_path / "run"
    missing = tmp_path / "no-such-folder"  # the check comes before the data is read
    result = CliRunner().invoke(app, ["train", str(missing), "--out", str(out), "--devices", many])
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert f"--devices {many} asks for {many} CPU processes per node" in text and f"{cores} CPU cores" in text, text
    assert not out.exists()

    result = CliRunner().invoke(app, ["train", str(missing), "--out", str(out), "--devices", "0"])
    assert result.exit_code != 0 and "--devices must be an integer >= 1 or 'auto'" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["train", str(missing), "--out", str(out), "--strategy", "fsdp"])
    assert result.exit_code != 0 and "Unknown strategy 'fsdp'" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["train", str(missing), "--out", str(out), "--strategy", "ddp_spawn"])
    assert result.exit_code != 0 and "Use --strategy ddp" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["train", str(missing), "--out", str(out), "--precision", "half"])
    assert result.exit_code != 0 and "Unknown precision 'half'" in " ".join(result.output.split())
    assert not out.exists()


def _damage(path: Path) -> None:
    """Cut a TIFF in half: its header still reads, its pixels do not (a copy or sync that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damaged_run(write_tiff_scenes, root: Path, wait_for: str, victim: int,
                 epochs: int) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``cnnkit train --devices 2`` on a fresh folder, one training image damaged as soon as ``out/<wait_for>``
    appears; the run, its folder and the damaged file."""
    write_tiff_scenes(root / "train", SyntheticLandCover(6, seed=11, min_size=16, max_size=24))
    write_tiff_scenes(root / "held", SyntheticLandCover(2, seed=12, min_size=16, max_size=24))
    damaged, out = sorted((root / "train" / "images").glob("*.tif"))[victim], root / "run"
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    env.update(COLUMNS="200", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "cnnkit", "train", str(root / "train"), "--heldout", str(root / "held"),
               "--out", str(out), "--epochs", str(epochs), "--batch-size", "3", "--width", "4", "--ignore-index",
               "255", "--threads", "1", "--devices", "2", "--strategy", "ddp"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / wait_for).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        _damage(damaged)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the ranks did not stop within 60 s of the damage (a hang?)")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing of the run may outlive it
        proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), out, damaged


@pytest.mark.parametrize(("wait_for", "victim", "epochs"), [
    ("run-options.json", 2, 1),        # rank 0 read it whole; rank 1, started inside fit, reads it damaged
    ("checkpoints/last.ckpt", 3, 3),   # damaged while the ranks train: the rank whose share holds it fails
], ids=["rank-1-statistics", "training-step"])
def test_one_ranks_damaged_file_stops_every_rank_with_its_error(tiff_scenes, tmp_path, wait_for, victim, epochs):
    done, out, damaged = _damaged_run(tiff_scenes, tmp_path, wait_for, victim, epochs)
    # before: rank 0 SIGKILLed by Lightning's observer (exit code -9), or failing with gloo's "Connection closed
    # by peer" (exit code 1) while the other rank's error went by
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(damaged) in errors[0] and "damaged or truncated" in errors[0], done.stderr
    assert "Connection closed by peer" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    for final in ("model.safetensors", "manifest.json", "report"):
        assert not (out / final).exists(), final
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "train")], capture_output=True, text=True).stdout
    assert not left.strip(), f"ranks still running: {left}"
