"""``cnnkit predict`` on a Sentinel-2-sized GeoTIFF read through GDAL: peak memory, and time against the same
network on the same pixels already in memory.

Rows (one run, one machine):

* a generated 10,980 × 10,980 × 4 uint16 GeoTIFF, 512-tiled and deflate-compressed (the size of one Sentinel-2
  tile), predicted by the ``cnnkit predict`` command (label PNG, label COG, overlay) with a demo-sized network
  (:class:`~cnnkit.models.TinySegNet`, width 16, random weights, saved as a run folder): its peak resident memory
  measured by the kernel for the child process (goal ≤ 1.0 GB: 10^9 bytes, 953.7 MiB), and its wall time against
  the baseline (goal ≤ 1.2);
* the same for the same pixels stored uncompressed (512-tiled);
* the baseline: :meth:`~cnnkit.predict.Predictor.predict_scene` over the same pixels held in memory as a NumPy
  array, same tiles, nothing written — the network's time alone.

Both sides use 256-px tiles (see :data:`TILE`).

Run: ``python -m benchmarks rasters`` (several minutes: each prediction runs the network over 120 Mpx).
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.windows import Window

from benchmarks._timing import command_peak
from benchmarks.bench_predict import BANDS, _run_folder
from cnnkit.predict import Predictor, Scene

SIDE = 10_980
GOAL_BYTES = 1_000_000_000
"""The peak-memory goal of issue #26: 1.0 GB, in bytes (:func:`~benchmarks._timing.command_peak` reports MiB)."""
TILE = 256
"""Tile side for both sides: a 256-px tile (280² with the halo) holds ~45 MB of TinySegNet's activations at its peak,
a 512-px tile ~170 MB, which alone would take the command past the 1.0 GB goal (torch's import holds ~660 MiB)."""


def _write(path: Path, compress: str | None, seed: int = 0) -> None:
    """A uint16 GeoTIFF written in bands of 512 rows (never held whole)."""
    rng = np.random.default_rng(seed)
    options = dict(compress=compress) if compress else {}
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=BANDS, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(10, 0, 600000, 0, -10, 5000040), tiled=True,
                       blockxsize=512, blockysize=512, BIGTIFF="IF_SAFER", **options) as dst:
        for top in range(0, SIDE, 512):
            rows = min(512, SIDE - top)
            block = rng.normal(1000, 300, (BANDS, rows, SIDE)).clip(1, 65535).astype(np.uint16)
            dst.write(block, window=Window(0, top, SIDE, rows))


def _command(run: Path, path: Path, out: Path) -> tuple[float, float, float]:
    """``cnnkit predict`` in a child: (wall seconds of the child, seconds it reports for predicting, peak RSS in
    MiB)."""
    command = [sys.executable, "-m", "cnnkit.cli", "predict", str(run), str(path), "--out", str(out), "--tiff",
               "--tile", str(TILE), "--threads", str(torch.get_num_threads())]  # the baseline's threads
    seconds, peak_mb, output = command_peak(command, columns=200)
    reported = re.search(r"pixels with data in ([0-9.]+) s", output)
    return seconds, float(reported.group(1)) if reported else float("nan"), peak_mb


def _in_memory(predictor: Predictor, path: Path) -> float:
    """Seconds of predict_scene over the file's pixels held in memory (a NumPy array), nothing written."""
    with rasterio.open(path) as ds:
        pixels = ds.read()
    scene = Scene(path, BANDS, SIDE, SIDE, _array=pixels)
    start = time.perf_counter()
    predictor.predict_scene(scene, tile=TILE)
    seconds = time.perf_counter() - start
    del pixels, scene
    return seconds


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        predictor = _run_folder(folder / "run")
        predictor.geometry()  # traced once (the command traces it too, inside its time)
        files = {"deflate": folder / "deflate.tif", "uncompressed": folder / "plain.tif"}
        _write(files["deflate"], "deflate")
        _write(files["uncompressed"], None)
        measured = {kind: _command(folder / "run", path, folder / f"out-{kind}") for kind, path in files.items()}
        baseline = [_in_memory(predictor, files["deflate"])]
        best = min(baseline)
        for kind, (wall, reported, peak) in measured.items():
            size = files[kind].stat().st_size / 2**20
            rows.append({"benchmark": f"cnnkit predict --tiff, {SIDE}×{SIDE}×{BANDS} uint16 GeoTIFF, 512-tiled, "
                                      f"{kind} ({size:.0f} MB): predicting {reported:.1f} s of {wall:.1f} s wall "
                                      f"(command start, torch import and model load included)",
                         "baseline": "predict_scene on the same pixels in memory, nothing written, same threads",
                         "ms": 1000 * reported, "baseline_ms": 1000 * best, "ratio": reported / best,
                         "goal": f"≤ 1.2 (peak RSS {peak * 2**20 / 1e9:.3f} GB = {peak:.0f} MiB, goal ≤ 1.0 GB "
                                 f"= {GOAL_BYTES / 2**20:.1f} MiB)"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
