"""``cnnkit train``'s training epoch against a plain PyTorch loop over the same batches, and ``masked()`` against
the plain model, on smp's Unet(resnet18) at 256 × 256 — ratios measured in one run.

Rows:

* **epoch**: the training floor as ``cnnkit train`` runs it — :class:`~cnnkit.train.SegmentationTask` with
  ``masked_input=True`` on :func:`~cnnkit.masking.collate_padded` batches (so every step goes through
  :func:`cnnkit.masked`), the class-weighted cross-entropy, AdamW and the cosine schedule of the family defaults,
  :func:`~cnnkit.train.fit` (Lightning, CSV/TensorBoard logs every step, ``last.ckpt`` written atomically every
  epoch, the ``DivergenceStop``, ``EpochLine`` and ``FilterEvolutionCallback`` callbacks of ``cnnkit train``) —
  against a plain loop (same model copy, same batches as stacked tensors, ``F.cross_entropy`` with the same
  weights, AdamW, no masks, no Lightning, no checkpoint). No validation on either side. The two run **interleaved
  in one process**: a callback runs one plain epoch at the start of each Lightning epoch, outside the Lightning
  epoch's clock (which runs from one epoch's start to the next's, so checkpoint and logging count). The first
  epoch of each (warm-up) is left out; median of the others. Goal ≤ 1.10.
* **masked() fwd+bwd**: ``masked(model)`` on the padded batch against the model on its tensor (training mode,
  cross-entropy, backward), median single-threaded CPU time of interleaved steps. Goal ≤ 1.05.

One thread for both sides (on this shared 2-core machine a second OpenMP thread spins against five neighbours).
Run: ``python -m benchmarks train`` (about 3–4 minutes).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time

import lightning as L
import torch
import torch.nn.functional as F

from benchmarks._timing import interleaved_cpu_ms
from cnnkit.data import SyntheticLandCover
from cnnkit.losses import class_weights
from cnnkit.masking import collate_padded, masked
from cnnkit.models import build, spec_for, training_defaults
from cnnkit.train import SegmentationTask, fit
from cnnkit.train.callbacks import DivergenceStop, FilterEvolutionCallback

SIDE, BATCH, BATCHES, EPOCHS = 256, 4, 3, 6


class _Interleave(L.Callback):
    """Runs ``plain()`` before each Lightning epoch and times both: wall clock, and the process's CPU time (every
    thread of it: the checkpoint writer's too)."""

    def __init__(self, plain) -> None:
        self.plain = plain
        self.plain_s: list[float] = []
        self.plain_cpu: list[float] = []
        self.epoch_s: list[float] = []
        self.epoch_cpu: list[float] = []
        self._start: tuple[float, float] | None = None

    def _stop(self) -> None:
        if self._start is not None:
            self.epoch_s.append(time.perf_counter() - self._start[0])
            self.epoch_cpu.append(time.process_time() - self._start[1])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._stop()
        begin, cpu = time.perf_counter(), time.process_time()
        self.plain()
        self.plain_s.append(time.perf_counter() - begin)
        self.plain_cpu.append(time.process_time() - cpu)
        self._start = (time.perf_counter(), time.process_time())

    def on_train_end(self, trainer, pl_module) -> None:
        self._stop()


def run(seed: int = 0, epochs: int = EPOCHS) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(seed, epochs)
    finally:
        torch.set_num_threads(threads)


def _run(seed: int, epochs: int) -> list[dict]:
    data = SyntheticLandCover(BATCH * BATCHES, seed=seed, min_size=SIDE, max_size=SIDE)
    items = list(data)
    num_classes, in_channels = data.num_classes, items[0][0].shape[0]
    spec = spec_for("Unet", encoder="resnet18")
    defaults = training_defaults(spec)
    torch.manual_seed(seed)
    net = build(spec, in_channels=in_channels, num_classes=num_classes)
    plain_net = copy.deepcopy(net)
    weight = class_weights((label for _, label in items), num_classes, "enet")

    loader = torch.utils.data.DataLoader(items, batch_size=BATCH, collate_fn=collate_padded)
    batches = [(torch.stack([x for x, _ in items[i:i + BATCH]]), torch.stack([y for _, y in items[i:i + BATCH]]))
               for i in range(0, len(items), BATCH)]
    optimizer = torch.optim.AdamW(plain_net.parameters(), lr=defaults.lr, weight_decay=defaults.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(batches))

    def plain_epoch() -> None:
        plain_net.train()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(plain_net(x), y, weight=weight, ignore_index=-100).backward()
            optimizer.step()
            schedule.step()

    task = SegmentationTask(net, num_classes, class_weight=weight, masked_input=True, lr=defaults.lr,
                            weight_decay=defaults.weight_decay, scheduler=defaults.schedule)
    clock = _Interleave(plain_epoch)
    callbacks = [DivergenceStop(defaults.lr), FilterEvolutionCallback("encoder.conv1", every_n_steps=2), clock]
    with tempfile.TemporaryDirectory() as run_dir:
        fit(task, loader, run_dir=run_dir, max_epochs=epochs, progress=False, callbacks=callbacks,
            num_sanity_val_steps=0, log=lambda line: None)
    cnnkit_s, plain_s = statistics.median(clock.epoch_s[1:]), statistics.median(clock.plain_s[1:])
    cnnkit_cpu, plain_cpu = statistics.median(clock.epoch_cpu[1:]), statistics.median(clock.plain_cpu[1:])

    # masked() forward + backward against the plain model, the same batch, training mode
    x, y = batches[0]
    padded, targets = collate_padded(items[:BATCH])
    wrapped = masked(net)
    net.train()

    def plain_step():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y, weight=weight, ignore_index=-100).backward()

    def masked_step():
        net.zero_grad(set_to_none=True)
        task.loss_fn(wrapped(padded), targets).backward()

    cpu = interleaved_cpu_ms({"plain": plain_step, "masked": masked_step}, seconds=30.0, min_steps=5, max_steps=12)
    name = f"smp Unet(resnet18), {BATCH} × {in_channels} × {SIDE} × {SIDE}, {len(batches)} batches an epoch"
    return [
        {"benchmark": f"cnnkit training epoch (SegmentationTask masked_input + fit, checkpoint, logs), {name}; "
                      f"1 thread, median of {len(clock.epoch_s) - 1} interleaved epochs",
         "baseline": "plain PyTorch loop, same batches (no masks, no Lightning)", "ms": 1000 * cnnkit_s,
         "baseline_ms": 1000 * plain_s, "ratio": cnnkit_s / plain_s, "goal": "≤ 1.10",
         "epochs_s": clock.epoch_s, "plain_s": clock.plain_s},
        {"benchmark": "the same epochs, CPU time of the process (all its threads), median",
         "baseline": "plain PyTorch loop, same batches", "ms": 1000 * cnnkit_cpu, "baseline_ms": 1000 * plain_cpu,
         "ratio": cnnkit_cpu / plain_cpu, "goal": "≤ 1.10", "epochs_cpu": clock.epoch_cpu,
         "plain_cpu": clock.plain_cpu},
        {"benchmark": f"masked() fwd+bwd (training mode, cross-entropy), {name}; 1 thread, CPU time",
         "baseline": "plain model, same tensor (median)", "ms": cpu["masked"], "baseline_ms": cpu["plain"],
         "ratio": cpu["masked"] / cpu["plain"], "goal": "≤ 1.05"},
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
