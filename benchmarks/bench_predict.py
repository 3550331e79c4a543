"""``cnnkit predict`` on scenes: tiled vs whole-image time, peak memory on a large scene, and MONAI's sliding window.

Rows:
* tiled prediction (512-px tiles, the default; halo from the network's receptive field) vs the whole-image
  pass of the same network on a 2048 × 2048 × 4 scene that fits in memory, both read from the same TIFF
  (goal ≤ 1.2×); the largest probability difference is printed (tiles are exact: float rounding only);
* ``cnnkit predict`` run as a command on a generated 8000 × 8000 × 4 uint16 TIFF (512 MB): its peak resident
  memory, measured by the kernel for the child process (goal ≤ 1.5 GB), and its time;
* MONAI's ``sliding_window_inference`` (overlap 0.25, Gaussian blending) on the 2048 scene: its time and its
  largest deviation from the whole-image result (if MONAI is installed).

The network is :class:`~cnnkit.models.TinySegNet` (width 16, random weights) saved as a run folder, so the
command path is the one users take. Run: ``python -m benchmarks predict``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from benchmarks._timing import command_peak
from cnnkit.models import TinySegNet
from cnnkit.predict import Predictor, Preprocessing, open_scene
from cnnkit.render.labels import DEFAULT_PALETTE
from cnnkit.train.rundir import write_manifest

BANDS, CLASSES = 4, 5


def _run_folder(folder: Path) -> Predictor:
    torch.manual_seed(0)
    model = TinySegNet(BANDS + 1, CLASSES, width=16).eval()
    prep = {"mean": [1000.0] * BANDS, "std": [300.0] * BANDS, "nodata": 0.0, "bands": None, "multiple_of": 4,
            "validity_band": True, "band_count": BANDS}
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, model, builder="TinySegNet", builder_args={"in_channels": BANDS + 1,
                                                                      "num_classes": CLASSES, "width": 16},
                   preprocessing=prep, class_names=[f"class {k}" for k in range(CLASSES)],
                   palette=DEFAULT_PALETTE[:CLASSES], ignore_index=None)
    preprocessing = Preprocessing(tuple(prep["mean"]), tuple(prep["std"]), nodata=0.0, multiple_of=4)
    return Predictor(model, preprocessing, [f"class {k}" for k in range(CLASSES)])


def _scene(path: Path, side: int, seed: int = 0) -> None:
    """A uint16 (side, side, 4) TIFF written in row blocks (never held whole in memory)."""
    rng = np.random.default_rng(seed)
    out = tifffile.memmap(path, shape=(side, side, BANDS), dtype=np.uint16, photometric="minisblack",
                          planarconfig="contig")  # one multi-band image, not a stack of single-band pages
    for top in range(0, side, 512):
        rows = min(512, side - top)
        block = rng.normal(1000, 300, (rows, side, BANDS)).clip(1, 65535).astype(np.uint16)
        out[top:top + rows] = block
    out.flush()
    del out


def _tiled_vs_whole(predictor: Predictor, path: Path) -> tuple[list[dict], torch.Tensor]:
    scene = open_scene(path, BANDS)
    image = torch.from_numpy(scene.read())
    predictor.geometry()  # traced once, as predict_scene does on its first call
    best = {"whole": float("inf"), "tiled": float("inf")}
    whole = tiled_probs = None
    for _ in range(3):
        start = time.perf_counter()
        result = predictor.predict_image(torch.from_numpy(scene.read()))
        best["whole"] = min(best["whole"], time.perf_counter() - start)
        whole = result
        probs = np.zeros((scene.height, scene.width, CLASSES), np.float32)
        start = time.perf_counter()
        predictor.predict_scene(scene, tile=512, probabilities_out=probs)
        best["tiled"] = min(best["tiled"], time.perf_counter() - start)
        tiled_probs = probs
    difference = float(np.abs(tiled_probs - whole.probabilities.permute(1, 2, 0).numpy()).max())
    del image
    return [{"benchmark": f"tiled prediction (512-px tiles, halo {predictor.geometry().halo[0]}), "
                          f"{scene.height}×{scene.width}×{BANDS}, largest probability difference {difference:.1e}",
             "baseline": "whole-image pass, same network and file", "ms": 1000 * best["tiled"],
             "baseline_ms": 1000 * best["whole"], "ratio": best["tiled"] / best["whole"], "goal": "≤ 1.2"}], \
        whole.probabilities


def _large_scene(run: Path, folder: Path, side: int = 8000) -> list[dict]:
    path = folder / "large.tif"
    _scene(path, side, seed=1)
    command = [sys.executable, "-m", "cnnkit.cli", "predict", str(run), str(path), "--out", str(folder / "out"),
               "--probabilities"]
    seconds, peak_mb, _ = command_peak(command)
    peak_text = f"{peak_mb:.0f} MiB"
    return [{"benchmark": f"cnnkit predict, {side}×{side}×{BANDS} uint16 TIFF, probabilities written, "
                          f"{seconds:.0f} s ({side * side / seconds / 1e6:.2f} Mpx/s)",
             "baseline": "memory budget 1.5 GB", "ms": peak_mb, "baseline_ms": 1536.0,
             "ratio": peak_mb / 1536.0, "goal": f"≤ 1 (peak RSS {peak_text})"}]


def _monai(predictor: Predictor, path: Path, whole: torch.Tensor) -> list[dict]:
    try:
        from monai.inferers import sliding_window_inference
    except ImportError:
        return [{"benchmark": "MONAI sliding_window_inference", "baseline": "—", "ms": "", "baseline_ms": "",
                 "ratio": "", "goal": "MONAI not installed (pip install monai) — row skipped"}]
    scene = open_scene(path, BANDS)
    x, _ = predictor.preprocessing(torch.from_numpy(scene.read()))
    with torch.no_grad():
        start = time.perf_counter()
        logits = sliding_window_inference(x[None], (1024, 1024), 1, predictor.model, overlap=0.25, mode="gaussian")
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        predictor.model(x[None])
        whole_seconds = time.perf_counter() - start
    probs = torch.softmax(logits[0], 0)
    deviation = float((probs - whole).abs().max())
    return [{"benchmark": f"MONAI sliding_window_inference (1024², overlap 0.25, gaussian), largest probability "
                          f"deviation from the whole image {deviation:.2g}",
             "baseline": "whole-image pass", "ms": 1000 * seconds, "baseline_ms": 1000 * whole_seconds,
             "ratio": seconds / whole_seconds, "goal": "— (not exact)"}]


def run(large_side: int = 8000) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        predictor = _run_folder(folder / "run")
        path = folder / "scene.tif"
        _scene(path, 2048)
        rows, whole = _tiled_vs_whole(predictor, path)
        rows += _monai(predictor, path, whole)
        rows += _large_scene(folder / "run", folder, large_side)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
