"""cnnkit.train: tasks, fit, resume after SIGKILL, DDP gradients, FilterEvolutionCallback.

References are plain PyTorch (``F.cross_entropy``, hand-computed IoU, a hand-made SGD step on the union of
the data), never the code's own output.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import cnnkit.train as train
from cnnkit.errors import ShapeError
from cnnkit.masking import PaddedBatch, collate_padded
from cnnkit.train import (
    ClassificationTask,
    FilterEvolutionCallback,
    SegmentationTask,
    fit,
    last_checkpoint,
)

QUIET = {"progress": False, "enable_model_summary": False}
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _labels(x: torch.Tensor) -> torch.Tensor:
    """Three classes from the first band: below -0.5, between, above 0.5."""
    return torch.bucketize(x[:, 0] if x.dim() == 4 else x[0], torch.tensor([-0.5, 0.5]))


def _seg_data(n: int = 32, size: int = 16, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g)
    return TensorDataset(x, _labels(x))


def _metrics_rows(trainer) -> list[dict[str, str]]:
    path = Path(trainer.loggers[0].log_dir) / "metrics.csv"
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# --- API and argument checks --------------------------------------------------------------------------


def test_public_names():
    assert set(train.__all__) >= {
        "SegmentationTask", "ClassificationTask", "fit", "FilterEvolutionCallback", "AtomicCheckpointIO",
        "last_checkpoint", "FreezeEncoder", "encoder_of",
    }
    for name in train.__all__:
        assert hasattr(train, name)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": "bce"}, r"Unknown loss 'bce'. Expected one of \('cross_entropy', 'focal', 'dice'\)"),
        ({"optimizer": "lbfgs"}, r"Unknown optimizer 'lbfgs'"),
        ({"lr": -1.0}, r"lr must be a finite number > 0. Received lr=-1.0"),
        ({"weight_decay": float("nan")}, r"weight_decay must be a finite number >= 0"),
        ({"class_weight": [1.0, 2.0]}, r"class_weight must have one entry per class \(C = 3\)"),
        ({"masked_input": 1}, r"masked_input must be True or False. Received masked_input=1"),
        ({"scheduler": "step"}, r"Unknown scheduler 'step'. Expected one of \('cosine',\)"),
        ({"class_names": ["a"]}, r"class_names must be a sequence of num_classes=3 names"),
        ({"loss": lambda logits, t: logits.sum(), "class_weight": [1.0, 1.0, 1.0]}, r"class_weight applies to"),
    ],
)
def test_segmentation_task_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ShapeError, match=match):
        SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=3, **kwargs)


def test_task_rejects_non_module_and_bad_num_classes():
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module. Received model of type str"):
        SegmentationTask("net", num_classes=3)
    with pytest.raises(ShapeError, match=r"num_classes must be an integer >= 1. Received num_classes=0"):
        SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=0)
    with pytest.raises(ShapeError, match="num_classes must be >= 2 for classification"):
        ClassificationTask(nn.Linear(2, 1), num_classes=1)


def test_padded_batch_needs_masked_input():
    task = SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=3)
    images, _ = collate_padded([(torch.randn(1, 4, 5), torch.zeros(4, 5, dtype=torch.long))] * 2)
    with pytest.raises(ShapeError, match="masked_input=False"):
        task(images)


def test_fit_rejects_bad_arguments(tmp_path):
    task = SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=3)
    loader = DataLoader(_seg_data(4), batch_size=2)
    with pytest.raises(FileNotFoundError, match="resume must be 'auto', None or an existing checkpoint file"):
        fit(task, loader, run_dir=tmp_path, max_epochs=1, resume=tmp_path / "missing.ckpt", **QUIET)
    with pytest.raises(ShapeError, match=r"max_epochs must be an integer >= 1. Received max_epochs=0"):
        fit(task, loader, run_dir=tmp_path, max_epochs=0, **QUIET)
    with pytest.raises(ShapeError, match=r"resume must be 'auto', None or a checkpoint path. Received resume=1"):
        fit(task, loader, run_dir=tmp_path, max_epochs=1, resume=1, **QUIET)


# --- training -----------------------------------------------------------------------------------------


def test_cosine_scheduler_follows_the_half_cosine_to_zero(tmp_path):
    import lightning as L

    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    task = SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=3, lr=0.1, scheduler="cosine")
    fit(task, DataLoader(_seg_data(8), batch_size=2), run_dir=tmp_path, max_epochs=3, callbacks=[Record()], **QUIET)
    steps = 3 * 4
    assert seen == pytest.approx([0.05 * (1 + math.cos(math.pi * k / steps)) for k in range(steps)], rel=1e-6)


def test_loss_decreases(tmp_path):
    from cnnkit.models import TinySegNet

    data = _seg_data(32)
    x, y = data.tensors
    task = SegmentationTask(TinySegNet(in_channels=1, num_classes=3, width=4), num_classes=3, lr=0.03)

    def reference_loss() -> float:  # plain PyTorch, eval mode, whole set
        task.eval()
        with torch.no_grad():
            loss = float(F.cross_entropy(task.model(x), y))
        task.train()  # Lightning keeps the modes it finds
        return loss

    before = reference_loss()
    evolution = FilterEvolutionCallback(nn.Conv2d, every_n_steps=4)
    trainer = fit(task, DataLoader(data, batch_size=8, shuffle=True), run_dir=tmp_path, max_epochs=6,
                  callbacks=[evolution], **QUIET)
    after = reference_loss()
    assert trainer.global_step == 24
    assert after < 0.8 * before, (before, after)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert evolution.evolution.steps == [0, 4, 8, 12, 16, 20, 24]
    assert evolution.evolution.layers[0] == "stem.0"  # names of the wrapped network, not of the task
    train_losses = [float(r["train/loss_step"]) for r in _metrics_rows(trainer) if r.get("train/loss_step")]
    assert len(train_losses) == 24 and all(v == v for v in train_losses)


def test_val_metrics_logged_to_csv(tmp_path):
    train_data = _seg_data(16, size=8, seed=1)
    xv, yv = _seg_data(6, size=8, seed=2).tensors
    yv = yv.clone()
    yv[:, :2] = -100  # unlabelled rows: left out of loss and IoU
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1))
    task = SegmentationTask(model, num_classes=3, lr=0.02, class_names=["low", "mid", "high"])
    trainer = fit(task, DataLoader(train_data, batch_size=4), DataLoader(TensorDataset(xv, yv), batch_size=6),
                  run_dir=tmp_path, max_epochs=2, **QUIET)
    rows = [r for r in _metrics_rows(trainer) if r.get("val/mean_iou")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    last = rows[-1]

    # reference: the final model, plain torch
    model.eval()
    with torch.no_grad():
        logits = model(xv)
    valid = yv != -100
    pred, true = logits.argmax(1)[valid], yv[valid]
    ious = []
    for c in range(3):
        inter = ((pred == c) & (true == c)).sum().item()
        union = ((pred == c) | (true == c)).sum().item()
        ious.append(inter / union if union else float("nan"))
    defined = [v for v in ious if v == v]
    assert float(last["val/mean_iou"]) == pytest.approx(sum(defined) / len(defined), abs=1e-6)
    for name, value in zip(["low", "mid", "high"], ious):
        assert float(last[f"val/iou/{name}"]) == pytest.approx(value, abs=1e-6, nan_ok=True)
    assert float(last["val/loss"]) == pytest.approx(float(F.cross_entropy(logits, yv)), rel=1e-5)
    assert float(last["val/pixel_accuracy"]) == pytest.approx((pred == true).float().mean().item(), abs=1e-6)
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def _variable_samples(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        h, w = (int(v) for v in torch.randint(5, 13, (2,), generator=g))
        x = torch.randn(1, h, w, generator=g)
        samples.append((x, _labels(x)))
    return samples


def test_padded_batch_training(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))
    task = SegmentationTask(model, num_classes=3, lr=0.03, masked_input=True)
    samples = _variable_samples(24, seed=3)

    def reference_loss() -> float:  # each sample alone, unpadded; mean over all pixels
        model.eval()
        with torch.no_grad():
            total = sum(float(F.cross_entropy(model(x[None]), y[None], reduction="sum")) for x, y in samples)
        model.train()
        return total / sum(y.numel() for _, y in samples)

    # the task's loss on a padded batch is the per-sample loss (eval mode: no batch statistics)
    images, targets = collate_padded(samples[:5])
    assert isinstance(images, PaddedBatch) and images.padding_fraction() > 0
    task.eval()
    with torch.no_grad():
        padded = float(task.loss_fn(task(images), targets))
        alone_sum = sum(float(F.cross_entropy(model(x[None]), y[None], reduction="sum")) for x, y in samples[:5])
    assert padded == pytest.approx(alone_sum / sum(y.numel() for _, y in samples[:5]), rel=1e-5)
    task.train()

    before = reference_loss()
    loader = DataLoader(samples, batch_size=6, shuffle=True, collate_fn=collate_padded)
    val = DataLoader(samples[:6], batch_size=3, collate_fn=collate_padded)
    trainer = fit(task, loader, val, run_dir=tmp_path, max_epochs=3, **QUIET)
    assert trainer.global_step == 12
    assert reference_loss() < 0.8 * before
    assert any(r.get("val/mean_iou") for r in _metrics_rows(trainer))
    # Lightning's own validate() runs under torch.inference_mode (fit's validation uses no_grad): masked() must
    # work there too, with the loss each sample alone gives.
    (result,) = trainer.validate(task, val, verbose=False)
    model.eval()
    with torch.no_grad():  # each batch's loss is its pixel mean; the epoch's, the mean over batches by sample count
        batch_means = [sum(float(F.cross_entropy(model(x[None]), y[None], reduction="sum")) for x, y in part)
                       / sum(y.numel() for _, y in part) for part in (samples[:3], samples[3:6])]
    assert result["val/loss"] == pytest.approx(sum(batch_means) / 2, rel=1e-5)


def test_classification_task(tmp_path):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(24, 2, 6, 6, generator=g)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    task = ClassificationTask(model, num_classes=2, lr=0.05)
    trainer = fit(task, DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x, y), batch_size=24),
                  run_dir=tmp_path, max_epochs=2, **QUIET)
    last = [r for r in _metrics_rows(trainer) if r.get("val/accuracy")][-1]
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert float(last["val/accuracy"]) == pytest.approx((logits.argmax(1) == y).float().mean().item(), abs=1e-6)
    assert float(last["val/loss"]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)


# --- resume after SIGKILL -----------------------------------------------------------------------------

RESUME_SCRIPT = """
import json, sys, time
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from cnnkit.train import FilterEvolutionCallback, SegmentationTask, fit

class Slow(Dataset):
    def __init__(self):
        self.x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    def __len__(self):
        return 16
    def __getitem__(self, i):
        time.sleep(0.03)
        x = self.x[i]
        return x, (x[0] > 0).long()

class Record(L.Callback):
    def _write(self, **kw):
        with open(sys.argv[3], "a") as f:
            f.write(json.dumps(kw) + "\\n")
    def on_train_start(self, trainer, pl_module):
        self._write(event="start", step=trainer.global_step, epoch=trainer.current_epoch)
    def on_train_end(self, trainer, pl_module):
        self._write(event="end", step=trainer.global_step, epoch=trainer.current_epoch)

if __name__ == "__main__":
    torch.manual_seed(0)
    task = SegmentationTask(nn.Conv2d(1, 2, 3, padding=1), num_classes=2, lr=0.01)
    fit(task, DataLoader(Slow(), batch_size=4), run_dir=sys.argv[1], max_epochs=int(sys.argv[2]),
        progress=False, enable_model_summary=False,
        callbacks=[Record(), FilterEvolutionCallback(nn.Conv2d, every_n_steps=2)])
"""


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(textwrap.dedent(RESUME_SCRIPT))
    run_dir, log = tmp_path / "run", tmp_path / "events.jsonl"
    cmd = [sys.executable, str(script), str(run_dir), "6", str(log)]
    last = run_dir / "checkpoints" / "last.ckpt"

    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not last.exists():
            assert proc.poll() is None, f"training exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=False)  # complete (written atomically) though the process was killed
    assert 0 < killed_at["global_step"] < 24, "the kill came too late to test resuming"

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "end"]
    assert starts[0]["step"] == 0
    assert starts[-1]["step"] == killed_at["global_step"] > 0  # continued, not restarted from 0
    assert ends == [{"event": "end", "step": 24, "epoch": 6}]  # 6 epochs × 4 batches in total
    final = torch.load(last, weights_only=False)
    assert final["global_step"] == 24 and final["epoch"] == 5
    (state,) = [v for k, v in final["callbacks"].items() if k.startswith("FilterEvolutionCallback")]
    assert state["steps"] == list(range(0, 25, 2))  # one unbroken history across the kill


# --- DDP ----------------------------------------------------------------------------------------------

DDP_SCRIPT = """
import sys
from pathlib import Path
import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from cnnkit.train import SegmentationTask, fit

def make_model():
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1))

class Save(L.Callback):
    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save({"state": pl_module.model.state_dict(), "world_size": trainer.world_size,
                        "global_step": trainer.global_step}, Path(sys.argv[1]) / "after.pt")

if __name__ == "__main__":
    out = Path(sys.argv[1])
    d = torch.load(out / "data.pt")
    model = make_model()
    model.load_state_dict(d["init"])
    task = SegmentationTask(model, num_classes=3, optimizer="sgd", lr=d["lr"], weight_decay=0.0)
    data = TensorDataset(d["x"], d["y"])
    fit(task, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4), run_dir=out / "run", max_epochs=1,
        accelerator="cpu", devices=2, strategy=sys.argv[2], progress=False, enable_model_summary=False,
        callbacks=[Save()])
"""


@pytest.mark.slow
def test_ddp_two_processes_match_single_process_step(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 3, 1))
    x = torch.randn(8, 2, 6, 6)
    y = torch.randint(0, 3, (8, 6, 6))
    lr = 0.5
    torch.save({"init": model.state_dict(), "x": x, "y": y, "lr": lr}, tmp_path / "data.pt")
    script = tmp_path / "ddp_script.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))

    done = subprocess.run([sys.executable, str(script), str(tmp_path), "ddp"], env=_env(), capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    after = torch.load(tmp_path / "after.pt")
    assert after["world_size"] == 2
    assert after["global_step"] == 1  # 8 samples, 4 per process: one step

    # reference: one plain SGD step on the mean loss over the union of both processes' data
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        expected = {name: p - lr * p.grad for name, p in model.named_parameters()}
    for name, value in expected.items():
        torch.testing.assert_close(after["state"][name], value, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_epoch_line_shows_validation_only_on_epochs_that_validated(tmp_path):
    lines: list[str] = []
    data = DataLoader(_seg_data(8), batch_size=4)
    task = SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=3)
    fit(task, data, data, run_dir=tmp_path, max_epochs=4, progress=False, log=lines.append,
        check_val_every_n_epoch=2)
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    # epochs 2 and 4 validated; 1 and 3 did not, and must not repeat an earlier epoch's figures
    assert ["val loss" in line for line in lines] == [False, True, False, True]
    assert all("train loss" in line for line in lines)


def test_padded_batches_reuse_one_masked_wrapper_outside_the_module_tree():
    from cnnkit.masking import pad_batch

    task = SegmentationTask(nn.Conv2d(1, 3, 3, padding=1), num_classes=3, masked_input=True)
    before = sorted(task.state_dict())
    batch = pad_batch([torch.randn(1, 5, 6), torch.randn(1, 4, 4)])
    first = task._masked_model()
    out = task(batch)
    assert task._masked_model() is first  # one wrapper across steps
    assert sorted(task.state_dict()) == before  # nothing new in checkpoints
    alone = task.model(batch.data[1:, :, :4, :4])
    torch.testing.assert_close(out.data[1:, :, :4, :4], alone)
    task.model = nn.Conv2d(1, 3, 1)  # a new network gets a new wrapper
    assert task._masked_model().model is task.model


def test_last_checkpoint_is_written_on_epochs_that_do_not_validate(tmp_path):
    data = DataLoader(_seg_data(8), batch_size=4)
    task = SegmentationTask(nn.Conv2d(1, 3, 1), num_classes=3)
    fit(task, data, data, run_dir=tmp_path, max_epochs=3, progress=False, check_val_every_n_epoch=2)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2  # the third epoch (counted from 0), which did not validate
