"""``predict_distributed`` on 2 gloo processes writes the files of one process, byte for byte: 20 images of mixed
sizes (shared by read groups) and one scene run in tiles (its tiles dealt round the ranks, written by rank 0).

The reference is :func:`cnnkit.app.predict.predict_files` in this process, one thread like each rank; the ranks are
real processes. The run is a TinySegNet with seeded random weights written as a run folder (predicting needs no
training), so the label maps are not one class.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cnnkit.app.predict import load_predictor, predict_files
from cnnkit.app.predict_distributed import predict_distributed
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.models import TinySegNet
from cnnkit.predict.sharding import balance, image_groups
from cnnkit.train.rundir import write_manifest

OPTIONS = {"tiff": True, "probabilities": True, "confidence": True, "max_pixels": 4096, "tile": 32, "batch_size": 2}
"""Groups of 8 whole images, the scene (120 × 100 > 4096 pixels) in 16 tiles of 32 px (the last row and column
partial). Probabilities as uint8: float16 COGs of several bands are not byte-reproducible even in one process (GDAL
leaves the padding of the edge tiles uninitialised when it packs half floats), though their values are."""


@pytest.fixture(scope="module")
def run_and_images(tmp_path_factory) -> tuple[Path, list[Path], list[int]]:
    root = tmp_path_factory.mktemp("predict-ddp")
    torch.manual_seed(0)
    model = TinySegNet(5, 3, width=4)
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    run = root / "run"
    run.mkdir()
    write_manifest(run, model, spec={"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 4}},
                   in_channels=5, num_classes=3,
                   preprocessing={"mean": [0.5] * 4, "std": [0.25] * 4, "nodata": None, "bands": None,
                                  "multiple_of": 4, "validity_band": True, "band_count": 4},
                   class_names=["water", "field", "forest"], palette=[[0, 0, 255], [0, 200, 0], [0, 100, 0]],
                   ignore_index=255)
    rng = np.random.default_rng(5)
    images, sizes = [], []
    for i in range(20):
        h, w = int(rng.integers(16, 41)), int(rng.integers(16, 41))
        bands = rng.random((4, h, w), dtype=np.float32)
        bands[:, :3, :2] = np.nan  # a corner without data
        path = root / "images" / f"img_{i:02d}.tif"
        path.parent.mkdir(exist_ok=True)
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
        images.append(path)
        sizes.append(h * w)
    scene = rng.random((4, 120, 100), dtype=np.float32)
    scene[:, 50:60, 40:90] = np.nan
    tifffile.imwrite(root / "images" / "scene.tif", scene, photometric="minisblack", planarconfig="separate")
    return run, [*images, root / "images" / "scene.tif"], sizes


def _files(folder: Path) -> dict[str, bytes]:
    """The outputs (hidden bookkeeping — the folder's lock, one process's --resume record — left out)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.mark.slow
def test_two_processes_write_the_files_of_one(run_and_images, tmp_path):
    run, inputs, _ = run_and_images
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each rank runs one thread: the same kernels as the reference
    try:
        predictor, _ = load_predictor(run)
        one = predict_files(predictor, inputs, tmp_path / "one", band_count=4, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    stale = tmp_path / "two" / ".cnnkit-predict-staging-killed" / "rank1"  # what a killed run leaves behind
    stale.mkdir(parents=True)
    (stale / "img_00_labels.png").write_bytes(b"half")
    two = predict_distributed(run, inputs, tmp_path / "two", devices=2, threads=1, timeout=120, **OPTIONS)

    expected, written = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert len(expected) == 21 * 5 and "scene_labels.png" in expected and "scene_probabilities.tif" in expected
    assert sorted(written) == sorted(expected)
    assert [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")] == [".cnnkit.lock"]  # staging gone
    different = [name for name in expected if written[name] != expected[name]]
    assert not different, f"differ from one process's: {different}"
    assert len(np.unique(tifffile.imread(tmp_path / "two" / "scene_labels.tif"))) >= 3  # classes and no-data
    assert two.tiled == one.tiled == [inputs[-1]]
    assert list(two.files) == list(one.files)
    assert all(p.parent == tmp_path / "two" for paths in two.files.values() for p in paths)
    assert two.pixels == one.pixels and (two.class_pixels == one.class_pixels).all()
    assert two.summary(predictor.class_names).split(" in ")[0] == one.summary(predictor.class_names).split(" in ")[0]


@pytest.mark.slow
def test_one_ranks_data_error_stops_every_rank(run_and_images, tmp_path):
    run, inputs, sizes = run_and_images
    # a damaged image in a read group of rank 1: its header and block table read, its compressed pixels do not
    groups = image_groups(len(sizes), OPTIONS["batch_size"])
    rank_one = balance([sum(sizes[i] for i in g) for g in groups], 2)[1]
    victim = groups[rank_one[0]][0]
    broken = tmp_path / "inputs"
    broken.mkdir()
    for path in inputs:
        (broken / path.name).write_bytes(path.read_bytes())
    damaged = broken / inputs[victim].name
    tifffile.imwrite(damaged, tifffile.imread(inputs[victim]), photometric="minisblack", planarconfig="separate",
                     compression="zlib")
    data = bytearray(damaged.read_bytes())
    with tifffile.TiffFile(damaged) as tiff:
        blocks = list(zip(tiff.pages[0].dataoffsets, tiff.pages[0].databytecounts))
    for offset, count in blocks:
        data[offset + 10:offset + count - 4] = bytes(count - 14)
    damaged.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(CnnkitError, match=f"img_{victim:02d}"):
        predict_distributed(run, [broken], out, devices=2, threads=1, timeout=60, **OPTIONS)
    assert os.listdir(out) == [".cnnkit.lock"], "nothing under a final name, no staging folder left"


def test_refusals_before_anything_starts(run_and_images, tmp_path):
    run, inputs, _ = run_and_images
    out = tmp_path / "out"
    with pytest.raises(ShapeError, match=r"--devices 10000 asks for 10000 CPU processes, but this machine has \d+"):
        predict_distributed(run, inputs, out, devices=10000)
    with pytest.raises(ShapeError, match="Unknown accelerator 'tpu'"):
        predict_distributed(run, inputs, out, devices=2, accelerator="tpu")
    with pytest.raises(ShapeError, match="Unknown predict option 'tiles'"):
        predict_distributed(run, inputs, out, devices=2, tiles=3)
    if not torch.cuda.is_available():
        with pytest.raises(ShapeError, match="has none"):
            predict_distributed(run, inputs, out, devices=2, accelerator="cuda")
    assert not out.exists()


def test_a_rank_killed_silently_is_named_before_its_peers_lost_connection(tmp_path):
    """Rank 1 killed by SIGKILL (no report) while rank 0 reports only that its peer went away: the error names rank
    1's signal; a data error reported by a rank is raised as it is."""
    from cnnkit.app.predict_distributed import _first_error

    (tmp_path / "error-rank0.json").write_text(json.dumps(
        {"rank": 0, "time": 1.0, "type": "RuntimeError", "message": "[gloo] Connection closed by peer"}))
    with pytest.raises(CnnkitError, match=r"^Rank 1 of 2 was killed by signal 9 without reporting an error"):
        raise _first_error(tmp_path, [1, -9])
    (tmp_path / "error-rank1.json").write_text(json.dumps(
        {"rank": 1, "time": 2.0, "type": "ShapeError", "message": "img_03.tif: bands differ"}))
    error = _first_error(tmp_path, [1, 1])
    assert isinstance(error, ShapeError) and str(error) == "img_03.tif: bands differ"


def test_a_rank_that_fails_to_join_reports_why(tmp_path, monkeypatch):
    """An error before the rank's work (joining the process group: the port taken since it was chosen) is written
    where the launcher reads it, and raised from there; it was swallowed ("stopped with exit code 1 without
    reporting an error")."""
    import cnnkit.app.predict_distributed as module

    def unjoinable(config, on_error=None):
        raise RuntimeError("The server socket has failed to listen on any local network address. port: 29511")

    monkeypatch.setattr(module, "_run_rank", unjoinable)
    monkeypatch.setenv("RANK", "1")
    (tmp_path / "config.json").write_text(json.dumps({"staging": os.fspath(tmp_path)}))
    assert module._main([os.fspath(tmp_path / "config.json")]) == 1
    with pytest.raises(CnnkitError, match=r"^Rank 1 of 2 failed: RuntimeError: The server socket has failed .*29511"):
        raise module._first_error(tmp_path, [None, 1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_ranks_end_with_the_process_that_started_them(tmp_path):
    """A parent killed with SIGKILL (no finally runs) takes its ranks with it: none is left writing into a staging
    folder that the next run removes."""
    ready = tmp_path / "rank.pid"
    rank = (f"import os, sys, time; from cnnkit.app.predict_distributed import _end_with_parent; "
            f"_end_with_parent({{parent}}); open({os.fspath(ready)!r}, 'w').write(str(os.getpid())); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {rank!r}.format(parent=os.getpid())]); time.sleep(300)")])
    pid = None
    try:
        deadline = time.monotonic() + 120
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = int(ready.read_text())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 20
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(pid), "the rank outlived the process that started it"
    finally:
        parent.kill()
        if pid is not None and _running(pid):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ranks_of_a_launcher_write_the_files_of_one(run_and_images, tmp_path):
    """Two processes with torchrun's variables (no staging given: rank 0 locks --out and makes it) write the files
    one process writes, and leave no staging folder."""
    from cnnkit.app.predict_distributed import _free_port

    run, inputs, _ = run_and_images
    chosen = [*inputs[:3], inputs[-1]]  # three whole images and the tiled scene
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predictor, _ = load_predictor(run)
        predict_files(predictor, chosen, tmp_path / "one", band_count=4, **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    script = ("import sys; from cnnkit.app.predict_distributed import predict_distributed; "
              f"result = predict_distributed({os.fspath(run)!r}, {[os.fspath(p) for p in chosen]!r}, "
              f"{os.fspath(tmp_path / 'two')!r}, threads=1, timeout=60, **{OPTIONS!r}); "
              "print('rank result:', result is not None)")
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    ranks = [subprocess.Popen([sys.executable, "-c", script], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, text=True) for r in range(2)]
    try:
        printed = [p.communicate(timeout=120)[0] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert [p.returncode for p in ranks] == [0, 0]
    assert "rank result: True" in printed[0] and "rank result: False" in printed[1]
    expected, written = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert sorted(written) == sorted(expected) and len(expected) == 4 * 5
    assert [name for name in expected if written[name] != expected[name]] == []
    assert [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")] == [".cnnkit.lock"]
