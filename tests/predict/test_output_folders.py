"""cnnkit predict's output folder as untrusted ground (issue 27): a symlink at an output name is replaced, never
written through; two runs into one --out: one refused naming the other, the other's files intact; kill -9 mid-scene
leaves nothing under a final name and --resume completes it equal to an uninterrupted run; a full disk ends in a
clear error without partial files; --out under a file or empty is refused before torch is imported.

The run that is held and killed runs in a child (``_predict_child.py``); each test compares with the same seeded
network run here, in this process, into another folder."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cnnkit.app.predict import predict_files
from cnnkit.errors import CnnkitError
from cnnkit.rasters.destination import FolderLock, prepare_folder

sys.path.insert(0, str(Path(__file__).parent))
from _predict_child import make_predictor

CHILD = Path(__file__).with_name("_predict_child.py")
TILED = {"max_pixels": 1000, "tile": 32, "tiff": True, "confidence": True}  # 96² scenes: 9 tiles each


def _scenes(folder: Path, count: int = 2, side: int = 96) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for k in range(count):
        path = folder / f"s{k}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=2, dtype="float32",
                           tiled=True, blockxsize=32, blockysize=32) as dst:
            dst.write((rng.random((2, side, side)) * 100).astype(np.float32))
        paths.append(path)
    return paths


def _child(job: dict, timeout: float = 240) -> tuple[dict | None, int]:
    proc = subprocess.run([sys.executable, str(CHILD)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), proc.returncode


def _finals(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


def _same_outputs(a: Path, b: Path) -> None:
    assert _finals(a) == _finals(b)
    for name in _finals(a):
        if name.endswith(".png"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        else:
            with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
                np.testing.assert_array_equal(x.read(), y.read(), err_msg=name)


def test_overwrite_replaces_a_symlink_and_leaves_its_target_untouched(tmp_path):
    (image,) = _scenes(tmp_path / "in", 1, side=24)
    out, reference = tmp_path / "out", tmp_path / "reference"
    predictor = make_predictor()
    predict_files(predictor, [image], reference, tiff=True)
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    out.mkdir()
    for name in ("s0_labels.png", "s0_labels.tif", "s0_overlay.png"):
        (out / name).symlink_to(victim)
    umask = os.umask(0o027)
    try:
        predict_files(predictor, [image], out, tiff=True, overwrite=True)
    finally:
        os.umask(umask)
    assert victim.read_text() == "keep me"
    assert not any((out / name).is_symlink() for name in _finals(out))
    assert {oct((out / name).stat().st_mode & 0o777) for name in _finals(out)} == {oct(0o640)}  # the user's umask
    _same_outputs(out, reference)


def test_out_that_is_empty_under_a_file_or_read_only_is_refused_before_anything_is_computed(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    with pytest.raises(CnnkitError, match=r"--out must name a folder\. Received out=''"):
        prepare_folder("")
    with pytest.raises(CnnkitError, match=r"--out must be a folder\. Received out=.*notes\.txt/sub.*lies under "
                                          r".*notes\.txt.*which is a file"):
        prepare_folder(blocker / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(CnnkitError, match=r"--out .*locked.* cannot be written"):
            prepare_folder(locked)
    # the command line: the error comes before torch is imported and before the run folder is read (it does not
    # exist here)
    code = ("import sys, time; from cnnkit.cli.main import app; start = time.perf_counter()\n"
            "try:\n    app(['predict', sys.argv[1], sys.argv[2], '--out', sys.argv[3]])\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules, round(time.perf_counter() - start, 3))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-run"), str(blocker), str(blocker / "sub")],
                          capture_output=True, text=True, timeout=120)
    assert "which is a file" in proc.stderr and "no-run" not in proc.stderr
    exit_line = proc.stdout.split()
    assert exit_line[:3] == ["exit", "2", "False"], proc.stdout + proc.stderr
    print(f"\n--out under a file refused {exit_line[3]} s after the command started (torch not imported)")


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != ".cnnkit.lock"}


def test_a_second_run_is_refused_then_kill_9_mid_scene_and_resume_equals_an_uninterrupted_run(tmp_path):
    """One child run into --out, held mid-scene (s0 committed, s1 partly written): a second run into the same --out
    is refused naming the holder and touches nothing; the holder is then killed with SIGKILL: nothing of s1 under a
    final name; a run without --resume says the folder holds an interrupted run; --resume predicts s1 only and the
    folder then equals an uninterrupted run's, byte for byte (PNGs) and pixel for pixel (COGs)."""
    images = _scenes(tmp_path / "in")
    out, reference = tmp_path / "out", tmp_path / "reference"
    predict_files(make_predictor(), images, reference, **TILED)
    started, go = tmp_path / "started", tmp_path / "go"
    # progress calls: 9 tiles and the end of s0, then s1's tiles: call 14 is s1's 4th tile
    holder = subprocess.Popen([sys.executable, str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    holder.stdin.write(json.dumps({"inputs": [str(p) for p in images], "out": str(out), "options": TILED,
                                   "hold": [str(started), str(go)], "hold_at": 14}))
    holder.stdin.close()
    try:
        deadline = time.monotonic() + 180
        while not started.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        before = _snapshot(out)
        with pytest.raises(CnnkitError, match=rf"is being written by another command \(pid {holder.pid} on .*"
                                              r"_predict_child\.py"):
            predict_files(make_predictor(), images, out, overwrite=True, **TILED)
        assert _snapshot(out) == before  # the refused run touched nothing
        holder.kill()  # SIGKILL, mid-scene
    finally:
        holder.wait(timeout=120)
    assert holder.returncode == -9
    assert _finals(out) == ["s0_confidence.tif", "s0_labels.png", "s0_labels.tif", "s0_overlay.png"]
    assert any(".partial." in p.name for p in out.iterdir()), "killed before s1 was begun"
    with FolderLock(out):  # the kernel dropped the killed holder's lock
        pass
    with pytest.raises(CnnkitError, match=r"interrupted run: pass --resume"):
        predict_files(make_predictor(), images, out, **TILED)
    run = predict_files(make_predictor(), images, out, resume=True, **TILED)
    assert run.resumed == [images[0]] and list(run.files) == [images[1]]
    assert not [p.name for p in out.iterdir() if ".partial." in p.name or ".staged." in p.name]
    _same_outputs(out, reference)
    with pytest.raises(CnnkitError, match=r"--resume: .*other settings \(probabilities differ\)"):
        predict_files(make_predictor(), images, out, resume=True, probabilities=True, **TILED)


def test_a_full_disk_ends_in_a_clear_error_without_partial_files(tmp_path):
    """RLIMIT_FSIZE (with SIGXFSZ ignored) makes writes past 100 kB fail as on a full disk."""
    images = _scenes(tmp_path / "in", 1, side=160)
    out = tmp_path / "out"
    options = {**TILED, "probabilities": True, "probability_dtype": "float16"}  # a 160² × 3 float32 partial: 300 kB
    predictor = make_predictor()
    prepare_folder(out)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(CnnkitError) as refused:
            predict_files(predictor, images, out, **options)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    message = str(refused.value)
    assert "the disk is full (or a file size limit was reached)" in message and "removed" in message
    assert "s0_" in message
    assert sorted(p.name for p in out.iterdir()) in ([".cnnkit.lock"], [".cnnkit-predict.json", ".cnnkit.lock"])
