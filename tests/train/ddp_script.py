"""Training run of tests/train/test_distributed.py: ``python ddp_script.py OUT DEVICES STRATEGY EPOCHS [SLOW]``
(or ``main([...])`` in the calling process, for one process).

A small BatchNorm network on SyntheticLandCover scenes of varying size (clouds: ignored pixels), weighted
classes, masked padded batches, the global batch shared by ``DistributedBucketSampler``, trained with
``cnnkit.train.fit`` in float64 (``precision="64-true"``). Every process writes ``OUT/rank<r>.json`` / ``.pt``:
what it saw each step, its weights and batch-norm statistics at the end. ``SLOW`` (seconds per sample) slows
the data down so that a test can kill a process mid-epoch; then ``OUT/pid<r>`` holds each process's id.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnkit.data import SyntheticLandCover
from cnnkit.masking import collate_padded
from cnnkit.train import DistributedBucketSampler, SegmentationTask, broadcast_object, fit

CLASS_WEIGHT = [1.0, 2.5, 0.5, 3.0, 1.5]
GLOBAL_BATCH = 5


class Scenes(Dataset):
    def __init__(self, count: int, seed: int, slow: float = 0.0) -> None:
        self.base = SyntheticLandCover(count, seed=seed, min_size=12, max_size=24, bands=2)
        self.sizes = self.base.sizes
        self.slow = slow

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if self.slow:
            time.sleep(self.slow)
        return self.base[i]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 1))


class Record(L.Callback):
    """Per process: the samples of every step, a value broadcast from rank 0, the final state."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps: list[dict] = []

    def setup(self, trainer, pl_module, stage):
        self.shared = broadcast_object({"from_rank": trainer.global_rank})

    def on_train_start(self, trainer, pl_module):
        (self.out / f"pid{trainer.global_rank}").write_text(str(os.getpid()))
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _, labels = batch
        self.steps.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                           "samples": len(labels), "valid": int((labels != -100).sum())})

    def on_train_end(self, trainer, pl_module):
        rank = trainer.global_rank
        state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.out / f"rank{rank}.pt")
        (self.out / f"rank{rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size, "global_step": trainer.global_step, "start_step": self.start_step,
            "shared": self.shared, "steps": self.steps,
            "batch_sampler": type(trainer.train_dataloader.batch_sampler).__name__,
            "sync_batchnorm": pl_module._sync_bn(),
            "cluster": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
        }))


def main(argv: list[str]) -> None:
    """Train as the module documentation says; ``argv`` is ``OUT DEVICES STRATEGY EPOCHS [SLOW]``."""
    out, devices, strategy, epochs = Path(argv[0]), int(argv[1]), argv[2], int(argv[3])
    slow = float(argv[4]) if len(argv) > 4 else 0.0
    out.mkdir(parents=True, exist_ok=True)
    train, heldout = Scenes(14, seed=3, slow=slow), Scenes(6, seed=4)
    task = SegmentationTask(make_model(), num_classes=5, class_weight=CLASS_WEIGHT, masked_input=True,
                            optimizer=lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9))
    train_loader = DataLoader(train, batch_sampler=DistributedBucketSampler(train.sizes, GLOBAL_BATCH, seed=7),
                              collate_fn=collate_padded)
    val_loader = DataLoader(heldout, collate_fn=collate_padded,
                            batch_sampler=DistributedBucketSampler(heldout.sizes, GLOBAL_BATCH, shuffle=False))
    fit(task, train_loader, val_loader, run_dir=out / "run", max_epochs=epochs, accelerator="cpu",
        devices=devices, strategy=strategy, precision="64-true", progress=False, callbacks=[Record(out)])


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
