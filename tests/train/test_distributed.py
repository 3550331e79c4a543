"""N processes == 1 process: a 2-process DDP run (CPU, gloo) through ``cnnkit.train.fit`` gives the weights and
batch-norm statistics of one process with the same global batch — started by Lightning itself, by torchrun, or
with SLURM's variables; a rank killed with SIGKILL stops the run, which then resumes. The runs are
``tests/train/ddp_script.py`` in subprocesses (Lightning's ``strategy="ddp"`` starts the second process by running
the script again), each in its own process group, killed whole on a timeout so that a hang fails the test instead
of blocking it. The one-process reference runs once, in this process.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("ddp_script.py")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for key in list(env):  # a launcher's variables from outside would change what the runs are
        if key.startswith(("SLURM_", "TORCHELASTIC_")) or key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK",
                                                                   "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                                                                   "MASTER_PORT"):
            del env[key]
    return env


def _start(out: Path, devices: int, strategy: str, epochs: int, slow: float = 0.0) -> subprocess.Popen:
    cmd = [sys.executable, str(SCRIPT), str(out), str(devices), strategy, str(epochs), str(slow)]
    return subprocess.Popen(cmd, env=_env(), cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(proc: subprocess.Popen, timeout: float) -> str:
    """The run's output once it ends; a run still going after ``timeout`` seconds is killed and fails the test."""
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        output, _ = proc.communicate()
        pytest.fail(f"the run did not finish within {timeout} s (a hang?):\n{output[-3000:]}")
    return output


def _run(out: Path, devices: int, strategy: str = "ddp", epochs: int = 2, timeout: float = 150) -> str:
    proc = _start(out, devices, strategy, epochs)
    try:
        output = _wait(proc, timeout)
    finally:
        _kill_group(proc)  # nothing of the run may outlive it
    assert proc.returncode == 0, output[-4000:]
    return output


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    (path,) = sorted((run_dir / "logs").glob("version_*/metrics.csv"))[-1:]
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _last(rows: list[dict[str, str]], key: str) -> float:
    return float([row[key] for row in rows if row.get(key)][-1])


def _one_process(out: Path, epochs: int = 2) -> None:
    """The reference: the same script in this process (one interpreter start fewer), one thread."""
    spec = importlib.util.spec_from_file_location("cnnkit_test_ddp_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        script.main([str(out), "1", "auto", str(epochs)])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    _one_process(out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _same_as_one_process(one: Path, two: Path, cluster: str) -> None:
    """What the 2-process run in ``two`` wrote equals the 1-process run in ``one``; Lightning's cluster environment
    was ``cluster``."""
    ref = torch.load(one / "rank0.pt")
    info = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["cluster"] for i in info] == [cluster, cluster]
    ref_info = json.loads((one / "rank0.json").read_text())
    assert [i["world_size"] for i in info] == [2, 2] and ref_info["world_size"] == 1
    # 14 samples, global batch 5: batches of 4, 5, 5 (in some order) each epoch; 3 steps × 2 epochs everywhere
    assert ref_info["global_step"] == info[0]["global_step"] == info[1]["global_step"] == 6
    assert [s["samples"] for s in ref_info["steps"]] == [
        a["samples"] + b["samples"] for a, b in zip(info[0]["steps"], info[1]["steps"])
    ]
    assert sorted(s["samples"] for s in ref_info["steps"]) == [4, 4, 5, 5, 5, 5]
    # the shares carry different numbers of counted pixels: a per-process mean would not be the global one
    assert any(a["valid"] != b["valid"] for a, b in zip(info[0]["steps"], info[1]["steps"]))
    assert {i["batch_sampler"] for i in info} == {"DistributedBucketSampler"}  # Lightning did not replace it
    assert [i["sync_batchnorm"] for i in info] == [True, True] and ref_info["sync_batchnorm"] is False
    assert [i["shared"] for i in info] == [{"from_rank": 0}, {"from_rank": 0}]  # broadcast_object

    for rank in (0, 1):
        got = torch.load(two / f"rank{rank}.pt")
        assert got.keys() == ref.keys()
        for name, value in ref.items():
            assert value.dtype in (torch.float64, torch.int64), name
            if value.is_floating_point():  # weights, biases and BN running mean/var
                torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-9,
                                           msg=lambda m, name=name, rank=rank: f"{name} (rank {rank}): {m}")
            else:
                assert torch.equal(got[name], value), name  # num_batches_tracked
        assert ref["1.running_var"].ne(1).all()  # the statistics did move

    # the logged losses and held-out IoU read the same: global means, confusion matrices summed over ranks
    rows_one, rows_two = _metrics(one / "run"), _metrics(two / "run")
    for key in ("train/loss_epoch", "val/loss", "val/mean_iou", "val/pixel_accuracy"):
        assert _last(rows_two, key) == pytest.approx(_last(rows_one, key), rel=1e-6), key
    steps_one = [float(r["train/loss_step"]) for r in rows_one if r.get("train/loss_step")]
    steps_two = [float(r["train/loss_step"]) for r in rows_two if r.get("train/loss_step")]
    assert steps_two == pytest.approx(steps_one, rel=1e-6)
    assert (two / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one(one_process, tmp_path):
    """Lightning's own launcher: ``python script.py`` with ``devices=2, strategy="ddp"``."""
    two = tmp_path / "two"
    _run(two, devices=2, strategy="ddp")
    _same_as_one_process(one_process, two, "LightningEnvironment")


@pytest.mark.slow
def test_torchrun_gives_the_weights_of_one(one_process, tmp_path):
    """``torchrun --nproc_per_node 2 script.py``: Lightning reads torchrun's variables (TorchElasticEnvironment)."""
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           str(two), "2", "ddp", "2"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output = _wait(proc, timeout=150)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, output[-4000:]
    _same_as_one_process(one_process, two, "TorchElasticEnvironment")


@pytest.mark.slow
def test_slurm_variables_give_the_weights_of_one(one_process, tmp_path):
    """Two processes with the variables ``srun --ntasks-per-node=2`` sets (no SLURM here): Lightning's
    SLURMEnvironment takes rank, world size and address from them; each process runs the script itself."""
    two = tmp_path / "two"
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
             "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "cnnkit-test", "SLURM_NODELIST": "127.0.0.1",
             "MASTER_PORT": str(_free_port())}
    procs: list[subprocess.Popen] = []
    try:
        for rank in (0, 1):
            env = _env() | slurm | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
            procs.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), str(two), "2", "ddp", "2"], env=env, cwd=tmp_path,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True))
        outputs = [_wait(p, timeout=150) for p in procs]
    finally:
        for p in procs:
            _kill_group(p)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    _same_as_one_process(one_process, two, "SLURMEnvironment")


def _kill_mid_epoch(out: Path, rank: int) -> int:
    """Start a 2-process run of 3 epochs, SIGKILL ``rank`` in epoch 2, check that every process stops within
    60 s; return the global step of the ``last.ckpt`` it left."""
    last = out / "run" / "checkpoints" / "last.ckpt"
    proc = _start(out, devices=2, strategy="ddp", epochs=3, slow=0.15)  # ~1 s per epoch and process
    try:
        deadline = time.monotonic() + 120
        while not (last.exists() and (out / "pid1").exists()):
            if proc.poll() is not None:
                pytest.fail(f"training exited early:\n{proc.communicate()[0][-3000:]}")
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        killed_at = torch.load(last, weights_only=False)["global_step"]
        os.kill(int((out / f"pid{rank}").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        while _group_alive(proc.pid) and time.monotonic() - killed < 60:  # rank 0 and its child, Lightning's ddp
            proc.poll()  # reap rank 0 (our child) once it ends
            time.sleep(0.1)
        stopped = time.monotonic() - killed
        assert not _group_alive(proc.pid), f"a process of the run still runs 60 s after rank {rank} was killed"
    finally:
        _kill_group(proc)
        output = proc.communicate()[0]
    print(f"rank {rank} killed at step {killed_at}: every process stopped {stopped:.1f} s later")
    assert proc.returncode != 0, output[-3000:]
    assert 0 < killed_at < 9, "the kill came too late to test resuming"
    assert not (out / "rank0.json").exists() and not (out / "rank1.json").exists()  # neither finished
    return killed_at


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_which_resumes(tmp_path):
    out = tmp_path / "run"
    killed_at = _kill_mid_epoch(out, rank=1)  # Lightning's launcher sees its child die and ends rank 0

    _run(out, devices=2, strategy="ddp", epochs=3)  # the same command: resume="auto" finds last.ckpt
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["start_step"] for i in info] == [killed_at, killed_at]  # continued on both ranks, not from 0
    assert [i["global_step"] for i in info] == [9, 9]  # 3 epochs × 3 global batches
    final = torch.load(out / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 9 and final["epoch"] == 2


@pytest.mark.slow
def test_killing_rank_zero_stops_the_other_rank(tmp_path):
    _kill_mid_epoch(tmp_path / "run", rank=0)  # rank 1's next collective fails: the peer is gone
