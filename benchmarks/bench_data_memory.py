"""Training sets larger than memory: peak RSS of building a SegmentationFolder and one streaming pass of its
statistics (band mean/std, class counts and weights, no-data counts), on generated folders of 200 and 2,000 images.

Each measurement runs in a fresh child (``_timing.command_peak``): the peak is that process's alone. The baseline
is the same child on a folder of one image (imports, torch and GDAL included), so the difference is what the data
costs. Flat in the number of images is the goal: the data set holds paths and header sizes, one item is decoded at
a time, and the pass keeps sums only.

``python -m benchmarks data_memory`` (or ``python benchmarks/bench_data_memory.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    from benchmarks._timing import command_peak
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._timing import command_peak

COUNTS = (200, 2000)
SIDE, BANDS, CLASSES = 64, 4, 4

_CHILD = """
import sys, time
from cnnkit.data import SegmentationFolder, data_statistics
start = time.perf_counter()
folder = SegmentationFolder(sys.argv[1], log=lambda line: None)
sizes = folder.sizes
found = data_statistics(folder, num_classes={classes}, weighting="inverse_frequency")
print(len(folder), len(sizes), found.items, found.pixels, time.perf_counter() - start)
"""


def _write_folder(root: Path, count: int, seed: int = 0) -> None:
    """``count`` pairs of SIDE² × BANDS uint16 TIFFs (deflate) and uint8 masks, seeded."""
    import tifffile

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(count):
        image = rng.integers(1, 10_000, (BANDS, SIDE, SIDE), dtype=np.uint16)
        mask = rng.integers(0, CLASSES, (SIDE, SIDE), dtype=np.uint8)
        tifffile.imwrite(root / "images" / f"{k:05d}.tif", image, photometric="minisblack", planarconfig="separate",
                         compression="zlib")
        tifffile.imwrite(root / "masks" / f"{k:05d}.tif", mask, compression="zlib")


def _measure(root: Path) -> tuple[float, float, float]:
    """(peak RSS MiB, wall s of the child, s of building the folder and the pass inside it)."""
    wall, peak, output = command_peak([sys.executable, "-c", _CHILD.format(classes=CLASSES), str(root)])
    inside = float(output.split()[-1])
    return peak, wall, inside


def run() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one"
        _write_folder(one, 1)
        base_peak, _, base_inside = _measure(one)
        for count in COUNTS:
            root = Path(tmp) / f"n{count}"
            _write_folder(root, count, seed=count)
            peak, wall, inside = _measure(root)
            rows.append({
                "benchmark": f"SegmentationFolder + one streaming statistics pass, {count} images of {SIDE}×{SIDE}×"
                             f"{BANDS} uint16 (deflate TIFF): peak RSS {peak:.0f} MiB ({peak - base_peak:+.0f} MiB "
                             f"over one image), pass {inside:.1f} s",
                "baseline": f"the same child on one image: peak RSS {base_peak:.0f} MiB",
                "ms": 1000 * inside, "baseline_ms": 1000 * base_inside, "ratio": peak / base_peak,
                "goal": "peak RSS ratio ≤ 1.1 (flat in the number of images)",
                "peak_mb": peak, "baseline_peak_mb": base_peak, "images": count, "child_wall_s": wall,
            })
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
