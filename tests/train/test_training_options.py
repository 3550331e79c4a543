"""The task's and fit's training options: freeze_encoder_epochs, encoder_lr_factor, warmup_epochs,
accumulate_grad_batches — each checked against an independent reference (weights before/after, the lr formula by
hand, one batch k times as large)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cnnkit.errors import ShapeError
from cnnkit.masking import collate_padded
from cnnkit.train import SegmentationTask, fit
from cnnkit.train.callbacks import FreezeEncoder

QUIET = {"progress": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


class _EncoderNet(nn.Module):
    """An smp-like network: ``encoder`` (with a batch norm) and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def _tensors(n: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 8, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Seen(L.Callback):
    """What the training steps saw: the encoder's requires_grad and its batch norm's mode, each group's lr."""

    def __init__(self) -> None:
        self.frozen: list[tuple[int, bool, bool]] = []
        self.lrs: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        encoder = pl_module.model.encoder
        self.frozen.append((trainer.current_epoch, any(p.requires_grad for p in encoder.parameters()),
                            encoder[1].training))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append({g.get("name", "all"): g["lr"] for g in optimizer.param_groups})


# --- freeze_encoder_epochs -----------------------------------------------------------------------------


def test_frozen_encoder_is_unchanged_for_its_epochs_then_trains(tmp_path):
    net = _EncoderNet()
    task = SegmentationTask(net, num_classes=3, lr=0.05, freeze_encoder_epochs=1, weight_decay=0.1)
    before = _state(net)
    seen = _Seen()
    fit(task, _tensors(), _tensors(4, seed=1), run_dir=tmp_path, max_epochs=1, callbacks=[seen], **QUIET)
    after_frozen = _state(net)
    for key, value in before.items():  # weights, bias, running statistics, batch count: all unchanged
        if key.startswith("encoder."):
            assert torch.equal(after_frozen[key], value), key
    assert not torch.equal(after_frozen["head.weight"], before["head.weight"])
    assert seen.frozen == [(0, False, False)] * 2  # no gradient and the batch norm in eval mode, every step

    fit(task, _tensors(), _tensors(4, seed=1), run_dir=tmp_path, max_epochs=2, callbacks=[seen], **QUIET)  # resume
    after = _state(net)
    for key in ("encoder.0.weight", "encoder.1.weight", "encoder.1.running_mean"):
        assert not torch.equal(after[key], after_frozen[key]), key
    assert seen.frozen[2:] == [(1, True, True)] * 2


def test_freeze_and_factor_need_an_encoder():
    with pytest.raises(ShapeError, match=r"freeze_encoder_epochs needs a model with an `encoder` submodule.*"
                                         r"freeze_encoder_epochs=2 for a Conv2d"):
        SegmentationTask(nn.Conv2d(2, 3, 1), num_classes=3, freeze_encoder_epochs=2)
    with pytest.raises(ShapeError, match=r"encoder_lr_factor needs a model with an `encoder`.*=0.1 for a Conv2d"):
        SegmentationTask(nn.Conv2d(2, 3, 1), num_classes=3, encoder_lr_factor=0.1)
    with pytest.raises(ShapeError, match=r"encoder_lr_factor needs one of the built-in optimizers"):
        SegmentationTask(_EncoderNet(), num_classes=3, encoder_lr_factor=0.1,
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    for name, value in (("freeze_encoder_epochs", -1), ("warmup_epochs", 1.5), ("encoder_lr_factor", 0.0),
                        ("encoder_lr_factor", float("nan"))):
        with pytest.raises(ShapeError, match=rf"{name} must be .* Received {name}="):
            SegmentationTask(_EncoderNet(), num_classes=3, **{name: value})
    with pytest.raises(ShapeError, match=r"epochs must be an integer >= 0. Received epochs=True"):
        FreezeEncoder(True)


# --- encoder_lr_factor and warmup_epochs -------------------------------------------------------------


def _cosine_with_warmup(lr: float, step: int, warmup: int, total: int) -> float:
    """The documented schedule, by hand: lr (s+1)/(S+1) for s < S, then a half cosine over the other steps."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    return lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def test_warmup_then_cosine_and_the_encoder_group_at_lr_times_factor(tmp_path):
    task = SegmentationTask(_EncoderNet(), num_classes=3, lr=0.02, scheduler="cosine", warmup_epochs=1,
                            encoder_lr_factor=0.25)
    seen = _Seen()
    # 8 samples, batches of 2 → 4 batches an epoch; 3 epochs = 12 steps, the first 4 warming up
    loader = DataLoader(_tensors().dataset, batch_size=2)
    fit(task, loader, run_dir=tmp_path, max_epochs=3, callbacks=[seen], **QUIET)
    assert len(seen.lrs) == 12
    for step, lrs in enumerate(seen.lrs):
        expected = _cosine_with_warmup(0.02, step, 4, 12)
        assert lrs["rest"] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
        assert lrs["encoder"] == pytest.approx(expected * 0.25, rel=1e-12, abs=1e-15), step
    encoder = {id(p) for p in task.model.encoder.parameters()}
    groups = task.trainer.optimizers[0].param_groups
    assert {id(p) for p in groups[1]["params"]} == encoder and not encoder & {id(p) for p in groups[0]["params"]}


def test_warmup_with_a_constant_rate_and_accumulation_counts_optimizer_steps(tmp_path):
    task = SegmentationTask(_EncoderNet(), num_classes=3, lr=0.01, warmup_epochs=2)
    seen = _Seen()
    loader = DataLoader(_tensors().dataset, batch_size=2)  # 4 batches, 2 optimizer steps an epoch
    fit(task, loader, run_dir=tmp_path, max_epochs=3, callbacks=[seen], accumulate_grad_batches=2, **QUIET)
    assert [lrs["all"] for lrs in seen.lrs] == pytest.approx([0.01 / 5, 0.02 / 5, 0.03 / 5, 0.04 / 5, 0.01, 0.01],
                                                             rel=1e-12)


# --- accumulate_grad_batches -------------------------------------------------------------------------


class _Scenes(Dataset):
    """Six float64 scenes of different sizes, some pixels unlabelled: batches of unequal weight."""

    sizes = ((5, 7), (3, 4), (6, 2), (4, 4), (7, 3), (2, 5))

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(3)
        self.items = []
        for h, w in self.sizes:
            label = torch.randint(0, 3, (h, w), generator=g)
            label[0, : w // 2] = -100
            self.items.append((torch.randn(2, h, w, generator=g, dtype=torch.float64), label))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _double_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).double()


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_accumulating_k_batches_equals_one_batch_k_times_as_large(tmp_path, loss):
    data = _Scenes()
    weight = [1.0, 2.5, 0.5]

    def trained(batches, accumulate):
        net = _double_net()
        task = SegmentationTask(net, num_classes=3, loss=loss, class_weight=weight, masked_input=True,
                                optimizer="sgd", lr=0.5, weight_decay=0.0)
        loader = DataLoader(data, batch_sampler=batches, collate_fn=collate_padded)
        fit(task, loader, run_dir=tmp_path / f"k{accumulate}", max_epochs=1, accumulate_grad_batches=accumulate,
            **QUIET)
        return _state(net)

    # k = 2 on batches of 2: windows {0..3} and {4, 5} (the epoch's last window is shorter)
    accumulated = trained([[0, 1], [2, 3], [4, 5]], 2)
    large = trained([[0, 1, 2, 3], [4, 5]], 1)
    for key in large:
        torch.testing.assert_close(accumulated[key], large[key], rtol=1e-12, atol=1e-14)

    # the test can fail: the mean of the two batch means (plain accumulation) gives another first step
    net = _double_net()
    task = SegmentationTask(net, num_classes=3, loss=loss, class_weight=weight, masked_input=True)
    means = [task.loss_fn(task(batch), targets) for batch, targets in
             (collate_padded([data[0], data[1]]), collate_padded([data[2], data[3]]))]
    plain = torch.autograd.grad((means[0] + means[1]) / 2, list(net.parameters()))
    one = torch.autograd.grad(task.loss_fn(*_logits_targets(task, data, [0, 1, 2, 3])), list(net.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(plain, one)) > 1e-4


def _logits_targets(task, data, indices):
    batch, targets = collate_padded([data[i] for i in indices])
    return task(batch), targets


def test_accumulation_on_simulated_ranks_equals_one_batch(monkeypatch):
    """W = 2 ranks × k = 2 accumulated batches in one process (the all-reduce answers with the sums of every
    rank's share of the batch, DDP averages the ranks' gradients): the step equals one process's on all the
    samples at once."""
    from types import SimpleNamespace

    import cnnkit.train.task as task_module

    data = _Scenes()
    shares = [[[0], [1, 2]], [[3, 4], [5]]]  # batch i, rank r: shares of unequal size and weight
    task = SegmentationTask(_double_net(), num_classes=3, class_weight=[1.0, 2.5, 0.5], masked_input=True)
    sums = []
    for batch in shares:
        with torch.no_grad():
            parts = [task.loss_fn.weighted_sum(*_logits_targets(task, data, share)) for share in batch]
        sums.append(torch.stack([sum(t for t, _ in parts), sum(w for _, w in parts),
                                 torch.tensor(3.0, dtype=torch.float64)]))
    monkeypatch.setattr(task_module, "world_size", lambda: 2)
    # the trainer as _loss reads it (world_size 1 only picks no batch-norm sync: the network has no batch norm)
    task._trainer = SimpleNamespace(training=True, accumulate_grad_batches=2, world_size=1)
    rank_grads, windows = [], []
    for rank in range(2):
        task.zero_grad()
        task._window = None
        for i, batch in enumerate(shares):
            monkeypatch.setattr(task_module, "all_reduce_sum", lambda tensor, i=i: sums[i])
            loss, _, _, _ = task._step(collate_padded([data[j] for j in batch[rank]]))
            (loss / 2).backward()  # Lightning's 1/k
        rank_grads.append([p.grad.clone() for p in task.parameters()])
        windows.append(task._window)
    assert windows[0] == windows[1]
    for p, *grads in zip(task.parameters(), *rank_grads):
        p.grad = sum(grads) / 2  # DDP's average
    task.on_before_optimizer_step(SimpleNamespace(param_groups=[{"params": list(task.parameters())}]))
    got = [p.grad.clone() for p in task.parameters()]
    monkeypatch.undo()
    task._trainer = None
    task.zero_grad()
    task.loss_fn(*_logits_targets(task, data, range(6))).backward()
    for a, p in zip(got, task.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-12, atol=1e-14)


def test_series_accumulation_equals_one_batch_k_times_as_large(tmp_path):
    """The series task normalises its loss like the image task: k accumulated batches of padded series (several
    lengths and sizes, per-pixel weights) give the weights of one batch k times as large."""
    from cnnkit.data.series import collate_series
    from cnnkit.models import SeriesSegNet
    from cnnkit.train import SeriesSegmentationTask

    g = torch.Generator().manual_seed(2)
    items = []
    for i in range(6):
        t, h, w = 2 + i % 3, 5 + i % 2, 6 - i % 3
        label = torch.randint(0, 3, (h, w), generator=g)
        label[0, : i % 3] = -100
        items.append((torch.randn(t, 2, h, w, generator=g), torch.rand(t, h, w, generator=g) > 0.3, label,
                      torch.rand(h, w, generator=g)))

    def collate(batch):
        x, valid, labels, weight = collate_series(batch)
        return (x.double(), valid), labels, weight.double()

    def trained(batches, accumulate):
        torch.manual_seed(3)
        net = SeriesSegNet(2, 3, width=4, hidden=4).double()
        task = SeriesSegmentationTask(net, num_classes=3, class_weight=[1.0, 2.5, 0.5], optimizer="sgd", lr=0.5,
                                      weight_decay=0.0)
        loader = DataLoader(items, batch_sampler=batches, collate_fn=collate)
        fit(task, loader, run_dir=tmp_path / f"k{accumulate}", max_epochs=1, accumulate_grad_batches=accumulate,
            **QUIET)
        return _state(net)

    accumulated = trained([[0, 1], [2, 3], [4, 5]], 2)
    large = trained([[0, 1, 2, 3], [4, 5]], 1)
    for key in large:
        torch.testing.assert_close(accumulated[key], large[key], rtol=1e-12, atol=1e-14)
