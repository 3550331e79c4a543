"""The global batch in one process: the loss normalisation (bit for bit unchanged in one process; W simulated
ranks whose averaged gradients equal the one-process gradient), fit's distributed arguments (devices checked
before anything starts, precision, Lightning's sampler kept out), the helpers, and batch norm of unpadded shares."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cnnkit.train.distributed as distributed
import cnnkit.train.task as task_module
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.losses import FocalLoss, PixelCrossEntropy, focal_loss, pixel_cross_entropy
from cnnkit.masking import BucketBatchSampler, PaddedBatch, collate_padded, masked, pad_batch
from cnnkit.train import DistributedBucketSampler, SegmentationTask, broadcast_object, check_devices, fit
from cnnkit.train.sync_norm import SyncUnpaddedBatchNorm

QUIET = {"progress": False, "enable_model_summary": False}
WEIGHT = [1.0, 3.0, 0.25]


def _padded(seed: int = 0, sizes=((5, 7), (3, 4), (6, 2))) -> tuple[PaddedBatch, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(2, h, w, generator=g, dtype=torch.float64) for h, w in sizes]
    labels = [torch.randint(0, 3, (h, w), generator=g) for h, w in sizes]
    labels[0][0, :3] = -100
    batch, targets = collate_padded(list(zip(images, labels)))
    return batch, targets


# --- losses: the two sums of the mean -----------------------------------------------------------------


@pytest.mark.parametrize(("module", "functional"), [
    (PixelCrossEntropy(class_weight=WEIGHT, ignore_index=2), lambda x, y: pixel_cross_entropy(x, y, WEIGHT, 2)),
    (FocalLoss(gamma=1.5, class_weight=WEIGHT), lambda x, y: focal_loss(x, y, 1.5, WEIGHT)),
])
def test_weighted_sum_is_the_numerator_and_denominator_of_the_mean(module, functional):
    batch, targets = _padded()
    logits = PaddedBatch(torch.randn(3, 3, *batch.canvas, dtype=torch.float64), batch.sizes)
    total, weight = module.weighted_sum(logits, targets)
    assert torch.equal(total / weight, functional(logits, targets))  # bit for bit
    counted = (targets != -100) & batch.mask()[:, 0]
    if isinstance(module, PixelCrossEntropy):
        counted &= targets != 2
    expected = torch.tensor(WEIGHT, dtype=torch.float64)[targets.clamp(min=0)][counted].sum()
    torch.testing.assert_close(weight, expected)
    assert not weight.requires_grad


# --- the task's loss ----------------------------------------------------------------------------------


def _task(model: nn.Module, loss: str = "cross_entropy") -> SegmentationTask:
    return SegmentationTask(model, num_classes=3, loss=loss, class_weight=WEIGHT if loss != "dice" else None,
                            masked_input=True)


def _conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, 3, padding=1).double()


def test_one_process_loss_and_gradient_are_unchanged_bit_for_bit():
    batch, targets = _padded()
    task = _task(_conv())
    loss, logged, _, n = task._step((batch, targets))
    loss.backward()
    got = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()
    reference = task.loss_fn(task(batch), targets)  # the weighted mean, as before the global batch
    reference.backward()
    assert torch.equal(loss, reference) and torch.equal(logged, reference.detach()) and n == 3
    assert all(torch.equal(a, p.grad) for a, p in zip(got, task.parameters()))


def test_simulated_ranks_average_to_the_one_process_gradient(monkeypatch):
    """W = 3 ranks in one process: the all-reduce answers with the sums of all shares, and the rank gradients are
    averaged as DDP does. Shares of unequal size and weight: a per-rank mean would not give this."""
    batch, targets = _padded(sizes=((5, 7), (3, 4), (6, 2), (4, 4), (2, 6), (7, 3)))
    samples = list(zip(batch.unpad(), [t[: s[0], : s[1]] for t, s in zip(targets, batch.sizes.tolist())]))
    shares = [samples[:1], samples[1:4], samples[4:]]
    task = _task(_conv())
    sums = []
    for share in shares:
        with torch.no_grad():
            b, t = collate_padded(share)
            total, weight = task.loss_fn.weighted_sum(task(b), t)
        sums.append(torch.stack([total, weight, torch.tensor(float(len(share)), dtype=torch.float64)]))
    monkeypatch.setattr(task_module, "world_size", lambda: 3)
    monkeypatch.setattr(task_module, "all_reduce_sum", lambda tensor: sum(sums))
    grads, logged = [], []
    for share in shares:
        task.zero_grad()
        loss, value, _, n = task._step(collate_padded(share))
        loss.backward()
        grads.append([p.grad.clone() for p in task.parameters()])
        logged.append(value)
        assert n == 6  # the global batch's samples, for the logged mean
    monkeypatch.undo()
    task.zero_grad()
    reference = task.loss_fn(task(batch), targets)
    reference.backward()
    for rank_grads, p in zip(zip(*grads), task.parameters()):
        torch.testing.assert_close(sum(rank_grads) / 3, p.grad, rtol=1e-12, atol=1e-14)  # DDP's average
    for value in logged:
        torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=0)  # the global mean everywhere
    # the per-rank means differ from the global one: the normalisation matters here
    with torch.no_grad():
        means = [float(task.loss_fn(task(b), t)) for b, t in (collate_padded(s) for s in shares)]
    assert max(abs(m - float(reference.detach())) for m in means) > 1e-3


def test_a_subclass_step_of_the_earlier_form_still_trains(tmp_path):
    """``_step`` returning ``(loss, logits, n)``, as SeriesSegmentationTask's does: a per-process mean, logged."""

    class Legacy(SegmentationTask):
        def _step(self, batch):
            images, targets = self._split(batch)
            logits = self(images)
            return self.loss_fn(logits, targets), logits, len(targets)

    task = Legacy(nn.Conv2d(1, 2, 3, padding=1), num_classes=2, masked_input=True)
    trainer = fit(task, _loader(Indexed()), _loader(Indexed(), shuffle=False), run_dir=tmp_path, max_epochs=1,
                  **QUIET)
    assert trainer.global_step == 3 and {"train/loss_epoch", "val/loss"} <= set(trainer.logged_metrics)


def test_losses_without_two_sums_warn_on_several_processes(monkeypatch):
    task = _task(_conv(), loss="dice")
    assert not task.global_loss and _task(_conv(), loss="focal").global_loss
    monkeypatch.setattr(task_module, "world_size", lambda: 2)
    with pytest.warns(UserWarning, match="loss='dice'.* on 2 processes"):
        task.on_fit_start()


# --- fit -------------------------------------------------------------------------------------------------


class Indexed(Dataset):
    """Images of varying size whose pixels hold the sample's index; labels from the image."""

    def __init__(self, count: int = 10) -> None:
        g = torch.Generator().manual_seed(0)
        self.sizes = [tuple(s) for s in torch.randint(3, 9, (count, 2), generator=g).tolist()]

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int):
        h, w = self.sizes[i]
        image = torch.full((1, h, w), float(i))
        return image, (torch.arange(h * w).view(h, w) % 2)


def _loader(data: Dataset, batch_size: int = 4, **kwargs) -> DataLoader:
    return DataLoader(data, batch_sampler=DistributedBucketSampler(data.sizes, batch_size, **kwargs),
                      collate_fn=collate_padded)


class RecordBatches:
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []

    def callback(self):
        import lightning as L

        record = self

        class _Record(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                record.batches.append((trainer.current_epoch, sorted(int(v) for v in batch[0].data[:, 0, 0, 0])))

            def on_train_start(self, trainer, pl_module):
                record.sampler = trainer.train_dataloader.batch_sampler

        return _Record()


def test_fit_keeps_the_sampler_and_resumes_with_the_epochs_batches(tmp_path):
    data = Indexed()
    record = RecordBatches()
    task = SegmentationTask(nn.Conv2d(1, 2, 3, padding=1), num_classes=2, masked_input=True)
    loader = _loader(data, seed=5)
    fit(task, loader, run_dir=tmp_path, max_epochs=2, callbacks=[record.callback()], **QUIET)
    assert record.sampler is loader.batch_sampler
    fit(task, loader, run_dir=tmp_path, max_epochs=3, callbacks=[record.callback()], **QUIET)  # resume
    sampler = DistributedBucketSampler(data.sizes, 4, seed=5)
    expected = [(e, sorted(b)) for e in range(3) for b in sampler.global_batches(e)]
    assert record.batches == expected  # epoch 2 after the resume has epoch 2's batches, not epoch 0's


def test_fit_refuses_more_gpus_than_exist_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "_cuda_count", lambda: 1)
    task = SegmentationTask(nn.Conv2d(1, 2, 1), num_classes=2)
    run_dir = tmp_path / "run"
    with pytest.raises(CnnkitError, match=r"devices=2 asks for 2 CUDA GPUs per node, but this machine has 1"):
        fit(task, _loader(Indexed()), run_dir=run_dir, max_epochs=1, accelerator="gpu", devices=2, **QUIET)
    assert not run_dir.exists()
    monkeypatch.setattr(distributed, "_cuda_count", lambda: 0)
    with pytest.raises(CnnkitError, match="asks for CUDA GPUs, but this machine has none"):
        fit(task, _loader(Indexed()), run_dir=run_dir, max_epochs=1, accelerator="cuda", devices=1, **QUIET)
    assert not run_dir.exists()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "half"}, r"Unknown precision 'half'\. Expected None or one of \('32-true'"),
    ({"devices": 3, "batch_size": 2}, r"gives a global batch of 2 on 3 processes\. Use batch_size >= 5"),
    ({"use_distributed_sampler": True}, "Lightning's DistributedSampler must stay out"),
    ({"devices": 2, "bucket": True}, "BucketBatchSampler, which gives every process every batch"),
    ({"devices": 0}, r"devices must be an integer >= 1 \(or -1 or 'auto' for all\)\. Received devices=0"),
])
def test_fit_refuses_bad_distributed_arguments(tmp_path, kwargs, match):
    kwargs = dict(kwargs)
    data = Indexed()
    loader = _loader(data, kwargs.pop("batch_size", 4))
    if kwargs.pop("bucket", False):
        loader = DataLoader(data, batch_sampler=BucketBatchSampler(data.sizes, 4), collate_fn=collate_padded)
    with pytest.raises(ShapeError, match=match):
        fit(SegmentationTask(nn.Conv2d(1, 2, 1), num_classes=2), loader, run_dir=tmp_path / "run", max_epochs=1,
            accelerator="cpu", **kwargs, **QUIET)
    assert not (tmp_path / "run").exists()


def test_fit_passes_precision(tmp_path):
    task = SegmentationTask(nn.Conv2d(1, 2, 3, padding=1), num_classes=2, masked_input=True)
    trainer = fit(task, _loader(Indexed()), run_dir=tmp_path, max_epochs=1, precision="64-true", **QUIET)
    assert trainer.precision == "64-true" and task.model.weight.dtype == torch.float64


# --- helpers ---------------------------------------------------------------------------------------------


def test_public_names_of_the_global_batch():
    import cnnkit.train as train

    for name in ("DistributedBucketSampler", "broadcast_object", "all_reduce_sum", "check_devices", "world_size",
                 "global_rank", "PRECISIONS"):
        assert name in train.__all__ and getattr(train, name) is not None


def test_helpers_are_no_ops_in_one_process():
    value = {"mean": [0.5], "std": [2.0]}
    assert broadcast_object(value) is value
    t = torch.ones(2)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.world_size() == 1 and distributed.global_rank() == 0


def test_check_devices(monkeypatch):
    monkeypatch.setattr(distributed, "_cuda_count", lambda: 2)
    assert check_devices("cpu", 3) == 3 and check_devices("cpu", "2", num_nodes=2) == 4
    assert check_devices("cpu", "auto") is None
    assert check_devices("gpu", -1, num_nodes=3) == 6 and check_devices("auto", [1]) == 1
    with pytest.raises(ShapeError, match=r"devices=\[0, 2\] names CUDA GPU 2, but this machine has 2"):
        check_devices("cuda", [0, 2])
    with pytest.raises(ShapeError, match=r"devices=3 asks for 3 CUDA GPUs per node, but this machine has 2"):
        check_devices("auto", 3)
    with pytest.raises(ShapeError, match="devices as a list must hold distinct device indices >= 0, and only for"):
        check_devices("cpu", [0, 1])
    with pytest.raises(ShapeError, match="num_nodes must be an integer >= 1"):
        check_devices("cpu", 1, num_nodes=0)
    monkeypatch.setattr(distributed, "_cuda_count", lambda: 0)
    monkeypatch.setattr(distributed, "_mps_count", lambda: 0)
    assert check_devices("auto", 4) == 4  # no GPU: Lightning's "auto" is the CPU


# --- batch norm of a share that fills its canvas ----------------------------------------------------------


def test_unpadded_batch_norm_goes_through_masked_batch_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()).double().train()
    twin = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU()).double().train()
    twin.load_state_dict(model.state_dict())
    same_size = pad_batch([torch.randn(2, 4, 5, dtype=torch.float64) for _ in range(3)])  # nothing padded
    seen = []

    class Spy(SyncUnpaddedBatchNorm):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.batch_norm:
                seen.append(func)
            return super().__torch_function__(func, types, args, kwargs)

    with Spy(None):
        out = masked(model)(same_size)
    reference = twin(same_size.data)
    assert seen == [F.batch_norm]  # masked() let it through: the mode ran it
    torch.testing.assert_close(out.data if isinstance(out, PaddedBatch) else out, reference)
    torch.testing.assert_close(model[1].running_mean, twin[1].running_mean)
    torch.testing.assert_close(model[1].running_var, twin[1].running_var)
    model.eval()
    with Spy(None):
        masked(model)(same_size)
    assert seen == [F.batch_norm, F.batch_norm]  # eval mode: passed on unchanged
