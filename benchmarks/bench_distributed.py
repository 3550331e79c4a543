"""Throughput on 1 and 2 processes: ``cnnkit train`` epochs and ``cnnkit predict``, on this machine.

Two rows each (ratio = 2 processes / 1 process, so a wall ratio below 1 is a speed-up):

* **wall time** of 2 processes against 1 process on the same cores (every usable core's thread; the 2 processes
  get half each, one thread on a 2-core machine);
* **CPU time** of every process of the command (the ranks included) against 1 process on 1 thread: what several
  processes cost in work (start-up, gloo collectives, tiles sent to rank 0). On a shared machine a neighbour's load
  changes wall times a lot (the scheduler gives 2 processes twice the share of 1; threads of one process wait for
  each other) and CPU times little.

For ``cnnkit train --devices 2 --strategy ddp`` (under ``torchrun --standalone --nproc_per_node 2``) vs
``--devices 1`` the wall time is the median epoch the command prints (training and validation, epochs after the
first), on a generated folder of TIFFs of mixed sizes; the CPU time is the whole command's. For
:func:`cnnkit.app.predict_distributed.predict_distributed` (``devices=2`` vs ``devices=1``) both are the whole
command's, start-up included, on a folder of images of mixed sizes and one scene run in tiles.

On a machine with 2 CPU cores the two sides share the same cores: prediction has the same arithmetic to do on
both, so its ratios measure what several processes cost (start-up, planning, tiles sent to rank 0), not a speed-up.
Training does not quite: each process pads only its share of a global batch (cut by size) to its own canvas. Where
two GPUs are available (``accelerator="cuda"``), the goal is a wall ratio ≤ 1/1.8. Run:
``python -m benchmarks distributed``.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from cnnkit.app.threads import usable_cores
from cnnkit.data import SyntheticLandCover
from cnnkit.models import TinySegNet
from cnnkit.render.labels import DEFAULT_PALETTE
from cnnkit.train.rundir import write_manifest

BANDS, CLASSES = 4, 5
TIMEOUT = 1800


def hardware() -> str:
    """The CPU as ``lscpu`` names it, the usable cores and the widest x86 vector extension."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                      if line.startswith("Model name")), platform.processor() or "unknown CPU")
        flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("Flags")), [])
    except (OSError, subprocess.SubprocessError):
        model, flags = platform.processor() or "unknown CPU", []
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {usable_cores()} cores, {vector}"


def _images(folder: Path, count: int, seed: int, *, masks: bool) -> None:
    """``count`` generated scenes as 4-band float32 TIFFs (NaN under clouds), with uint8 masks if asked."""
    data = SyntheticLandCover(count, seed=seed, min_size=48, max_size=112)
    (folder / "images").mkdir(parents=True)
    if masks:
        (folder / "masks").mkdir()
    for i, ((image, label), cloud) in enumerate(zip(data, data.clouds)):
        bands = image[:BANDS].numpy().astype(np.float32)
        bands[:, cloud.numpy()] = np.nan
        tifffile.imwrite(folder / "images" / f"s{i:03d}.tif", bands, photometric="minisblack",
                         planarconfig="separate")
        if masks:
            mask = label.numpy().copy()
            mask[mask < 0] = 255
            tifffile.imwrite(folder / "masks" / f"s{i:03d}.tif", mask.astype(np.uint8))


def _environment() -> dict[str, str]:
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM_")}
    return {**env, "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}


def _configurations() -> list[tuple[int, int]]:
    """``(devices, threads per process)``: 2 processes on the cores, 1 process on the cores, 1 process on 1 thread."""
    return [(2, max(1, usable_cores() // 2)), (1, usable_cores()), (1, 1)]


def _command(command: list[str], what: str) -> tuple[float, float, str]:
    """Run ``command``; its wall seconds, the CPU seconds of all its processes (the ranks it waited for included:
    what other processes on a shared machine change least), and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, done.stdout


def _rows(what: str, wall: dict, cpu: dict, amount: float, unit: str) -> list[dict]:
    """Wall time of 2 processes against 1 on the same cores, and CPU time of 2 against 1 process on 1 thread."""
    two, cores, one = _configurations()
    goal = "overhead on 2 cores; ≤ 0.56 (1.8×) on 2 GPUs"
    return [{"benchmark": f"{what}: wall, 2 processes × {two[1]} thread(s), {amount / wall[two]:.3g} vs "
                          f"{amount / wall[cores]:.3g} {unit}",
             "baseline": f"1 process × {cores[1]} thread(s), wall", "ms": 1000 * wall[two],
             "baseline_ms": 1000 * wall[cores], "ratio": wall[two] / wall[cores], "goal": goal},
            {"benchmark": f"{what}: CPU time of every process, 2 processes × {two[1]} thread(s)",
             "baseline": "1 process × 1 thread, CPU time", "ms": 1000 * cpu[two], "baseline_ms": 1000 * cpu[one],
             "ratio": cpu[two] / cpu[one], "goal": "the processes' overhead: ≥ 1, as near 1 as it can be"}]


def _train_rows(folder: Path, samples: int, epochs: int = 4) -> list[dict]:
    wall, cpu = {}, {}
    for devices, threads in _configurations():
        # 2 processes under torchrun, which waits for both (Lightning's own launch does not wait for rank 1, so its
        # CPU time would not be counted); torchrun's agent is part of the cost
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"] if devices > 1 else []
        command = [sys.executable, *launcher, "-m", "cnnkit", "train", str(folder / "train"), "--heldout",
                   str(folder / "held"),
                   "--out", str(folder / f"run{devices}-{threads}"), "--epochs", str(epochs), "--seed", "3",
                   "--batch-size", "8", "--width", "8", "--ignore-index", "255", "--threads", str(threads),
                   "--devices", str(devices), "--strategy", "ddp"]
        _, cpu[devices, threads], output = _command(command, f"cnnkit train --devices {devices}")
        seconds = [float(v) for v in re.findall(r"^\s*epoch\s+\d+/\d+\b.*?([\d.]+) s\s*$", output, re.MULTILINE)]
        if len(seconds) != epochs:
            raise RuntimeError(f"expected {epochs} epoch lines from cnnkit train, found {len(seconds)}:\n{output}")
        wall[devices, threads] = statistics.median(seconds[1:])
    return _rows(f"cnnkit train --devices 2 --strategy ddp vs --devices 1 ({samples} images 48–112 px, --batch-size 8, "
                 f"TinySegNet width 8; wall: median epoch (train + validation) of {epochs - 1} after the first; CPU: "
                 "the whole command)", wall, cpu, samples, "images/s")


_PREDICT = """
import sys
from cnnkit.app.predict_distributed import predict_distributed
run = predict_distributed(sys.argv[1], [sys.argv[2]], sys.argv[3], devices=int(sys.argv[4]), threads=int(sys.argv[5]),
                          max_pixels=262144, tile=256, tiff=True)
print("PIXELS", run.pixels)
"""


def _predict_rows(folder: Path, images: int, side: int) -> list[dict]:
    torch.manual_seed(0)
    model = TinySegNet(BANDS + 1, CLASSES, width=16).eval()
    prep = {"mean": [0.5] * BANDS, "std": [0.25] * BANDS, "nodata": None, "bands": None, "multiple_of": 4,
            "validity_band": True, "band_count": BANDS}
    (folder / "run").mkdir()
    write_manifest(folder / "run", model, spec={"library": "cnnkit", "architecture": "TinySegNet",
                                                "args": {"width": 16}}, in_channels=BANDS + 1,
                   num_classes=CLASSES, preprocessing=prep, class_names=[f"class {k}" for k in range(CLASSES)],
                   palette=DEFAULT_PALETTE[:CLASSES], ignore_index=None)
    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "predict" / "images" / "scene.tif", rng.random((BANDS, side, side), np.float32),
                     photometric="minisblack", planarconfig="separate", tile=(256, 256))
    wall = {configuration: float("inf") for configuration in _configurations()}
    cpu = dict(wall)
    for attempt in range(2):  # interleaved, the best of two: other processes only ever add time
        for devices, threads in _configurations():
            # devices=1: predict_files in the command's own process
            command = [sys.executable, "-c", _PREDICT, str(folder / "run"), str(folder / "predict" / "images"),
                       str(folder / f"out{devices}-{threads}-{attempt}"), str(devices), str(threads)]
            seconds, cpu_seconds, output = _command(command, f"predict_distributed(devices={devices})")
            wall[devices, threads] = min(wall[devices, threads], seconds)
            cpu[devices, threads] = min(cpu[devices, threads], cpu_seconds)
            pixels = int(re.search(r"PIXELS (\d+)", output).group(1))
    return _rows(f"predict_distributed(devices=2) vs devices=1 ({images} images 48–112 px + one {side}² scene in "
                 "256-px tiles, label PNG + COG + overlay; the whole command, start-up included, best of 2)",
                 wall, cpu, pixels / 1e6, "Mpx/s")


def run(train_images: int = 64, predict_images: int = 64, scene_side: int = 2048) -> list[dict]:
    print(f"bench_distributed on {hardware()}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _images(folder / "train", train_images, seed=1, masks=True)
        _images(folder / "held", 16, seed=2, masks=True)
        _images(folder / "predict", predict_images, seed=3, masks=False)
        rows = _train_rows(folder, train_images)
        rows += _predict_rows(folder, predict_images, scene_side)
    for row in rows:
        row["benchmark"] += f" [{hardware()}]"
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
