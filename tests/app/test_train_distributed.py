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

import os
import re
import subprocess
import sys
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
