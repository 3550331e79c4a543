"""Every script in examples/ runs on CPU, exits 0 and prints / writes its answer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))

# Key lines (substrings of stdout) and PNG files each example must produce. A new example is run
# automatically; it only needs an entry here to have its output checked too.
EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    "01": (["valid: 28 -> 24", " same: 28 -> 28", " full: 28 -> 32", "output (32, 32, 32)"], []),
    "02": (["limit = sqrt(6/(75+800)) = 0.0828", "inside the limit: True", "all 32 filters differ: True"],
           ["glorot_filters.png"]),
    "03": (["test accuracy after training", "mean relative change"], ["filter_evolution.png"]),
    "04": (["recorded gradient == conv.weight.grad: True", "weight gradients (8, 1, 3, 3)"],
           ["weights.png", "weight_grads.png", "activations.png"]),
    "05": (["CNN batched == one-at-a-time: True", "LSTM final state batched == one-at-a-time: True",
            "padding positions exactly zero: True"], []),
    "06": (["masked pixels keep their previous ConvLSTM state: True",
            "largest gradient at unlabelled or invalid pixels = 0.0", "loss decreased: True"], []),
    "07": (["median-frequency class weights", "unweighted", "weighted", "rare-class IoU"], []),
    "08": (["kernel (16, 36, 4), bias (4, 4, 4)", "= 1,612,800", "(match: True)"], []),
    "09": (["TextCNN", "Total params: 5,110", "Keras kernel (4, 5, 2)"], []),
    "10": (["torch weight (4800, 2000)", "Keras kernel (2000, 4800)", "y = x·kernel + b matches nn.Linear: True"], []),
    "11": (["sums to 1 per pixel: True"], ["labels.png", "overlay.png", "legend.png"]),
    "12": (["torch weight (111, 300, 5)", "Keras kernel (5, 300, 111)", "166,611"], []),
}


def test_every_example_has_expectations():
    assert SCRIPTS, f"no examples found in {EXAMPLES}"
    assert sorted(EXPECTED) == sorted(p.name[:2] for p in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs(script: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    lines, pngs = EXPECTED.get(script.name[:2], ([], []))
    for line in lines:
        assert line in result.stdout, f"{script.name}: {line!r} not in output:\n{result.stdout}"
    for name in pngs:
        path = tmp_path / name
        assert path.is_file(), f"{script.name} did not write {name}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
    assert (script.read_text(encoding="utf-8").lstrip().startswith('"""')), f"{script.name} needs a docstring"
