"""Lightning tasks: a model, its loss, optimiser and metrics, for segmentation and classification.

A task wraps *any* ``nn.Module``. Batches are ``(images, targets)``: ``images`` is a tensor (N, C, *spatial)
or, with ``masked_input=True``, a :class:`~cnnkit.PaddedBatch` from :func:`~cnnkit.collate_padded`, which is
run through :func:`cnnkit.masked` so that each sample is computed exactly as if alone. Targets are integer
labels; −100 (what :func:`~cnnkit.collate_padded` pads label maps with) is always ignored.

Logged values, the same on every DDP process:

* :class:`SegmentationTask`: ``train/loss`` (per step and per epoch) and ``val/loss``, the weighted mean over
  the whole global batch for ``"cross_entropy"`` and ``"focal"`` (the loss each process differentiates is
  normalised by the global batch's weight too, see :meth:`SegmentationTask._loss`), else averaged over processes;
  ``val/mean_iou``, ``val/pixel_accuracy`` and ``val/iou/<class>`` for every class, from
  :class:`~cnnkit.metrics.SegmentationMetrics` (its confusion matrix is summed over processes).
* :class:`ClassificationTask`: ``train/loss``, ``train/accuracy``, ``val/loss``, ``val/accuracy``, each a mean
  over a process's share, averaged over processes (``sync_dist=True``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from numbers import Real
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice, check_int
from cnnkit._tensors import argmax
from cnnkit.errors import ArgumentTypeError, ShapeError
from cnnkit.losses import DiceLoss, FocalLoss, PixelCrossEntropy
from cnnkit.losses.targets import check_class_weight, check_ignore_index
from cnnkit.masking import IGNORE_INDEX, PaddedBatch, masked
from cnnkit.metrics import SegmentationMetrics
from cnnkit.train.callbacks import FreezeEncoder, encoder_of
from cnnkit.train.distributed import all_reduce_sum, world_size
from cnnkit.train.sync_norm import SyncUnpaddedBatchNorm

__all__ = ["LOSSES", "OPTIMIZERS", "SCHEDULERS", "ClassificationTask", "SegmentationTask"]

LOSSES = ("cross_entropy", "focal", "dice")
"""Names accepted by ``SegmentationTask(loss=...)``."""

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine",)
"""Names accepted by the tasks' ``optimizer`` argument."""

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def _check_number(value, name: str, *, positive: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    if not ok or value < 0 or (positive and value == 0):
        rule = "> 0" if positive else ">= 0"
        raise ShapeError(f"{name} must be a finite number {rule}. Received {name}={value!r}.")
    return float(value)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ShapeError(f"{name} must be True or False. Received {name}={value!r}.")
    return value


class _Task(L.LightningModule):
    """Shared model wrapping, optimiser and batch checks of the tasks."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        class_weight,
        ignore_index: int | None,
        optimizer: str | OptimizerFactory,
        lr: float,
        weight_decay: float,
        masked_input: bool,
        sync_batchnorm: bool | None,
        scheduler: str | None = None,
        warmup_epochs: int = 0,
        encoder_lr_factor: float = 1.0,
        freeze_encoder_epochs: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ArgumentTypeError(f"model must be a torch.nn.Module. Received model of type {type(model).__name__}.")
        self.model = model
        self.num_classes = check_int(num_classes, "num_classes")
        self.ignore_index = check_ignore_index(ignore_index)
        weight = check_class_weight(class_weight, self.num_classes)
        self.register_buffer("class_weight", weight, persistent=False)
        if not callable(optimizer):
            optimizer = check_choice(optimizer, OPTIMIZERS, "optimizer")
        self.optimizer = optimizer
        self.lr = _check_number(lr, "lr", positive=True)
        self.weight_decay = _check_number(weight_decay, "weight_decay")
        self.masked_input = _check_bool(masked_input, "masked_input")
        if sync_batchnorm is not None:
            _check_bool(sync_batchnorm, "sync_batchnorm")
        self.sync_batchnorm = sync_batchnorm
        self.scheduler = None if scheduler is None else check_choice(scheduler, SCHEDULERS, "scheduler")
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", minimum=0)
        self.encoder_lr_factor = _check_number(encoder_lr_factor, "encoder_lr_factor", positive=True)
        self.freeze_encoder_epochs = check_int(freeze_encoder_epochs, "freeze_encoder_epochs", minimum=0)
        if self.encoder_lr_factor != 1.0:
            encoder_of(model, "encoder_lr_factor", self.encoder_lr_factor)
            if callable(optimizer):
                raise ShapeError(
                    "encoder_lr_factor needs one of the built-in optimizers (the task makes the encoder's parameter "
                    f"group); a callable optimizer makes its own groups. Received optimizer={optimizer!r} and "
                    f"encoder_lr_factor={self.encoder_lr_factor:g}.")
        if self.freeze_encoder_epochs:
            encoder_of(model, "freeze_encoder_epochs", self.freeze_encoder_epochs)

    # -- forward -------------------------------------------------------------------------------------

    def _sync_bn(self) -> bool:
        """``sync_batchnorm`` as given, or (None) whether the trainer runs more than one process."""
        if self.sync_batchnorm is not None:
            return self.sync_batchnorm
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1

    def _masked_model(self):
        """One :func:`cnnkit.masked` wrapper per ``sync_batchnorm`` setting, kept across steps: what it learns
        on the first step (modules found to run per sample, masks of recurring extents) is not paid again.
        Kept outside the module tree, so checkpoints and ``parameters()`` are unchanged."""
        sync = self._sync_bn()
        cache = self.__dict__.setdefault("_masked_wrappers", {})
        if sync not in cache or cache[sync].model is not self.model:
            cache[sync] = masked(self.model, sync_batchnorm=sync)
        return cache[sync]

    def forward(self, images: Tensor | PaddedBatch) -> Tensor | PaddedBatch:
        """Run the model; a :class:`~cnnkit.PaddedBatch` goes through :func:`cnnkit.masked` (``masked_input``)."""
        if isinstance(images, PaddedBatch):
            if not self.masked_input:
                raise ShapeError(
                    "images is a PaddedBatch, but the task was built with masked_input=False. "
                    "Pass masked_input=True to run padded batches through cnnkit.masked."
                )
            wrapper = self._masked_model()
            if wrapper.sync_batchnorm and world_size() > 1:
                # masked() syncs the batch norms of padded tensors; this mode those of tensors it leaves unpadded
                with SyncUnpaddedBatchNorm(wrapper.process_group or torch.distributed.group.WORLD):
                    return wrapper(images)
            return wrapper(images)
        if not isinstance(images, Tensor):
            raise ShapeError(f"images must be a tensor or a PaddedBatch. Received {type(images).__name__}.")
        return self.model(images)

    @staticmethod
    def _split(batch) -> tuple[Tensor | PaddedBatch, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ShapeError(
                "batch must be a pair (images, targets), as a DataLoader of (image, target) samples yields. "
                f"Received {type(batch).__name__}"
                + (f" of length {len(batch)}." if isinstance(batch, (tuple, list)) else ".")
            )
        images, targets = batch[0], batch[1]
        if not isinstance(targets, Tensor):
            raise ShapeError(f"targets must be a tensor. Received {type(targets).__name__}.")
        return images, targets

    # -- optimiser -----------------------------------------------------------------------------------

    def _param_groups(self) -> list[nn.Parameter] | list[dict[str, Any]]:
        """The parameters to optimise; with ``encoder_lr_factor`` two groups: the encoder's (``lr`` × factor,
        named ``"encoder"``) and the rest (named ``"rest"``)."""
        frozen = set()  # frozen by FreezeEncoder for now, trained later: in the optimizer from the start
        if self.freeze_encoder_epochs:
            frozen = {id(p) for p in encoder_of(self.model, "freeze_encoder_epochs").parameters()}
        params = [p for p in self.parameters() if p.requires_grad or id(p) in frozen]
        if self.encoder_lr_factor == 1.0:
            return params
        encoder = {id(p) for p in encoder_of(self.model, "encoder_lr_factor", self.encoder_lr_factor).parameters()}
        rest = [p for p in params if id(p) not in encoder]
        ours = [p for p in params if id(p) in encoder]
        return [{"params": rest, "name": "rest"},
                {"params": ours, "lr": self.lr * self.encoder_lr_factor, "name": "encoder"}]

    def configure_optimizers(self):
        params = self._param_groups()
        if callable(self.optimizer):
            optimizer = self.optimizer(params)
        elif self.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.scheduler is None and not self.warmup_epochs:
            return optimizer
        # Stepped every optimizer step: warm-up (linear, see SegmentationTask), then "cosine": from each group's
        # lr down to 0 over the remaining optimizer steps of the run.
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = 0
        if self.warmup_epochs:
            per_epoch = math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
            warmup = min(steps, self.warmup_epochs * per_epoch)
        schedules: list[torch.optim.lr_scheduler.LRScheduler] = []
        if warmup:
            schedules.append(torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1),
                                                               end_factor=1.0, total_iters=warmup))
        if self.scheduler == "cosine":
            schedules.append(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps - warmup)))
        if len(schedules) == 2:
            schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, schedules, milestones=[warmup])
        else:
            schedule = schedules[0]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_callbacks(self) -> list[L.Callback]:
        """:class:`~cnnkit.train.callbacks.FreezeEncoder` when ``freeze_encoder_epochs`` > 0."""
        return [FreezeEncoder(self.freeze_encoder_epochs)] if self.freeze_encoder_epochs else []

    def _training_options(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs, "encoder_lr_factor": self.encoder_lr_factor,
                "freeze_encoder_epochs": self.freeze_encoder_epochs}

    def _optimizer_name(self) -> str:
        return self.optimizer if isinstance(self.optimizer, str) else getattr(self.optimizer, "__name__", "callable")


class SegmentationTask(_Task):
    """Per-pixel classification of any model, with cnnkit's losses, masks and metrics.

    Args:
        model: Any module mapping images (N, C_in, *spatial) to logits (N, num_classes, *spatial).
        num_classes: Number of classes C (>= 1).
        loss: ``"cross_entropy"`` (:class:`~cnnkit.losses.PixelCrossEntropy`), ``"focal"``
            (:class:`~cnnkit.losses.FocalLoss`), ``"dice"`` (:class:`~cnnkit.losses.DiceLoss`), or a callable
            ``loss(logits, targets) -> scalar`` where ``logits`` may be a :class:`~cnnkit.PaddedBatch`.
        class_weight: Weight of each class (C,) for the built-in losses, e.g. from
            :func:`~cnnkit.losses.class_weights`. Not allowed with a callable loss (give it to the callable).
        ignore_index: A target value to leave out of loss and metrics, besides −100 which is always left out.
        optimizer: ``"adamw"`` (default), ``"adam"``, ``"sgd"`` (no momentum), or a callable
            ``optimizer(parameters) -> torch.optim.Optimizer`` (then ``lr`` and ``weight_decay`` are unused).
        lr: Learning rate (> 0).
        weight_decay: Weight decay (>= 0); AdamW's decoupled decay, L2 for Adam and SGD.
        masked_input: Accept :class:`~cnnkit.PaddedBatch` images (from :func:`~cnnkit.collate_padded`) and
            run them through :func:`cnnkit.masked`; plain tensors still work.
        sync_batchnorm: Reduce masked batch-norm statistics over all processes. ``None`` (default): when the
            trainer's world size is > 1. Only used with ``masked_input`` (for plain tensors, use Lightning's
            ``Trainer(sync_batchnorm=True)``).
        scheduler: ``None`` (constant learning rate) or ``"cosine"``: from ``lr`` down to 0 along a half
            cosine over all the optimizer steps of the run (``trainer.estimated_stepping_batches``).
        class_names: Names used in the logged keys ``val/iou/<name>`` (default: the class indices).
        warmup_epochs: Epochs of linear warm-up (>= 0): at optimizer step ``s`` of the first ``S = warmup_epochs
            × steps per epoch`` steps each group's learning rate is ``lr × (s + 1) / (S + 1)`` (torch's
            ``LinearLR``), then the ``scheduler`` runs over the remaining steps (``SequentialLR``); with
            ``scheduler=None`` the rate stays at ``lr`` after the warm-up.
        encoder_lr_factor: The model's ``encoder`` submodule (segmentation-models-pytorch's networks have one)
            gets its own parameter group, named ``"encoder"``, at ``lr × encoder_lr_factor`` (> 0), scheduled
            like the rest; 1.0 (default): one group. Needs a built-in ``optimizer``.
        freeze_encoder_epochs: For this many epochs (>= 0) the model's ``encoder`` is frozen — its parameters'
            ``requires_grad`` off and its batch norms in eval mode (running statistics used, not updated) — then
            trained like the rest (:class:`~cnnkit.train.callbacks.FreezeEncoder`, added through
            ``configure_callbacks``). On several processes, :func:`~cnnkit.train.fit` lets DDP find the unused
            parameters.

    Gradient accumulation (``fit(..., accumulate_grad_batches=k)``, Lightning's own): for ``"cross_entropy"`` and
    ``"focal"`` the accumulated gradient is that of the weighted mean over all the pixels of the k batches — what
    one batch k times as large gives — not the mean of k batch means: each batch's weighted sum is
    differentiated over a common reference weight, and :meth:`on_before_optimizer_step` rescales the gradients by
    the reference over the k batches' total weight (up to float rounding; a batch norm's statistics remain per
    batch, as with any accumulation).

    On W processes (DDP), with the global batch shared by :class:`~cnnkit.train.DistributedBucketSampler`,
    training equals one process's: ``"cross_entropy"`` and ``"focal"`` are normalised by the weight of the whole
    global batch (one all-reduce of three numbers per step, see :attr:`global_loss`), and masked batch norm
    reduces its statistics over the valid pixels of every process (``sync_batchnorm``). See ``docs/train.md``.

    Shape:
        - images: (N, C_in, *spatial) tensor, or a PaddedBatch of them
        - targets: (N, *spatial) integer labels, −100 (and ``ignore_index``) ignored

    Examples:
        >>> from cnnkit.models import TinySegNet
        >>> task = SegmentationTask(TinySegNet(in_channels=1, num_classes=3, width=4), num_classes=3, lr=1e-2)
        >>> task
        SegmentationTask(num_classes=3, loss='cross_entropy', optimizer='adamw', lr=0.01, weight_decay=0.01)
        >>> logits = task(torch.randn(2, 1, 8, 8))
        >>> logits.shape
        torch.Size([2, 3, 8, 8])
        >>> float(task.loss_fn(logits.detach(), torch.randint(0, 3, (2, 8, 8)))) > 0
        True
        >>> SegmentationTask(TinySegNet(), num_classes=5, loss="bce")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: Unknown loss 'bce'. Expected one of ('cross_entropy', 'focal', 'dice').
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        loss: str | Callable[..., Tensor] = "cross_entropy",
        class_weight=None,
        ignore_index: int | None = None,
        optimizer: str | OptimizerFactory = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        masked_input: bool = False,
        sync_batchnorm: bool | None = None,
        scheduler: str | None = None,
        class_names: Sequence[str] | None = None,
        warmup_epochs: int = 0,
        encoder_lr_factor: float = 1.0,
        freeze_encoder_epochs: int = 0,
    ) -> None:
        super().__init__(
            model,
            num_classes,
            class_weight=class_weight,
            ignore_index=ignore_index,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            masked_input=masked_input,
            sync_batchnorm=sync_batchnorm,
            scheduler=scheduler,
            warmup_epochs=warmup_epochs,
            encoder_lr_factor=encoder_lr_factor,
            freeze_encoder_epochs=freeze_encoder_epochs,
        )
        if callable(loss):
            if class_weight is not None:
                raise ShapeError(
                    "class_weight applies to the built-in losses only; with a callable loss, give the weights to "
                    f"the callable. Received loss={loss!r} and class_weight={self.class_weight.tolist()}."
                )
            self.loss_name = getattr(loss, "__name__", type(loss).__name__)
            self.loss_fn = loss
        else:
            self.loss_name = check_choice(loss, LOSSES, "loss")
            kinds = {"cross_entropy": PixelCrossEntropy, "focal": FocalLoss, "dice": DiceLoss}
            self.loss_fn = kinds[self.loss_name](class_weight=self.class_weight, ignore_index=self.ignore_index)
        if class_names is None:
            class_names = [str(c) for c in range(self.num_classes)]
        if isinstance(class_names, str) or len(class_names) != self.num_classes:
            raise ShapeError(
                f"class_names must be a sequence of num_classes={self.num_classes} names. "
                f"Received class_names={class_names!r}."
            )
        self.class_names = [str(name) for name in class_names]
        self.val_metrics = SegmentationMetrics(self.num_classes, ignore_index=self.ignore_index)
        self.save_hyperparameters({
            "num_classes": self.num_classes, "loss": self.loss_name, "ignore_index": self.ignore_index,
            "class_weight": None if self.class_weight is None else self.class_weight.tolist(),
            "optimizer": self._optimizer_name(), "lr": self.lr, "weight_decay": self.weight_decay,
            "masked_input": self.masked_input, "class_names": self.class_names, **self._training_options(),
        })
        self._window: list[float] | None = None  # [reference weight, total weight] of an accumulation window

    def __repr__(self) -> str:
        items = [f"num_classes={self.num_classes}", f"loss={self.loss_name!r}"]
        if self.class_weight is not None:
            items.append(f"class_weight={[round(v, 4) for v in self.class_weight.tolist()]}")
        if self.ignore_index is not None:
            items.append(f"ignore_index={self.ignore_index}")
        items += [f"optimizer={self._optimizer_name()!r}", f"lr={self.lr}", f"weight_decay={self.weight_decay}"]
        if self.masked_input:
            items.append("masked_input=True")
        return f"{type(self).__name__}({', '.join(items)})"

    @property
    def global_loss(self) -> bool:
        """Whether the loss is normalised by the whole global batch of a distributed run (see :meth:`_loss`):
        true for ``"cross_entropy"`` and ``"focal"``, whose mean is a ratio of two sums over pixels (used by
        :meth:`_loss`; a subclass whose ``_step`` computes its own loss does not get it)."""
        return callable(getattr(self.loss_fn, "weighted_sum", None))

    def _step(self, batch) -> tuple[Tensor, Tensor, Tensor | PaddedBatch, int]:
        """``(loss to differentiate, loss to log, logits, samples of the global batch)``; see :meth:`_loss`."""
        images, targets = self._split(batch)
        logits = self(images)
        loss, logged, n = self._loss(logits, targets)
        return loss, logged, logits, n

    def _loss(self, logits, targets: Tensor, sample_weight: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
        """``(loss to differentiate, loss to log, samples of the global batch)`` of one process's share.

        For a pixel loss (:attr:`global_loss`) on W processes, this process's loss is ``Σ w·ℓ`` over its own
        pixels × W / (``Σ w`` over the pixels of all W processes): DDP averages the gradients of the W processes,
        which gives the gradient of one process's weighted mean over the whole global batch. One all-reduce of
        three numbers per step; in one process the loss is the plain weighted mean, bit for bit. The logged loss
        is the global batch's weighted mean, the same on every process. Other losses (Dice, a callable) are a
        mean over each process's share, averaged by DDP.
        """
        n = len(targets)
        if not self.global_loss:
            loss = self.loss_fn(logits, targets) if sample_weight is None else self.loss_fn(logits, targets,
                                                                                            sample_weight)
            return loss, loss.detach(), n
        total, weight = self.loss_fn.weighted_sum(logits, targets, sample_weight)
        world = world_size()
        if world > 1:
            count = torch.tensor(float(n), dtype=total.dtype, device=total.device)
            sums = all_reduce_sum(torch.stack([total.detach(), weight.detach(), count]))
            global_total, global_weight, global_n = sums
            n = int(global_n.item())
            total_times_world = total * world
        else:
            global_total, global_weight, total_times_world = total.detach(), weight, total
        positive = global_weight > 0  # no counted pixel anywhere: 0 with a zero gradient, as the losses' mean
        denominator = torch.where(positive, global_weight, torch.ones_like(global_weight))
        logged = torch.where(positive, global_total / denominator, 0.0)
        accumulate = self._accumulating()
        if accumulate > 1:
            # Over the window's reference weight (its first positive one), times k against Lightning's 1/k;
            # on_before_optimizer_step turns Σ total / reference into Σ total / Σ weight.
            weight_now = float(global_weight)
            if self._window is None:
                self._window = [0.0, 0.0]
            if self._window[0] == 0.0:
                self._window[0] = weight_now
            self._window[1] += weight_now
            reference = self._window[0] if self._window[0] > 0 else 1.0
            return total_times_world * (accumulate / reference), logged, n
        loss = torch.where(positive, total_times_world / denominator, 0.0)
        return loss, logged, n

    def _accumulating(self) -> int:
        """The trainer's ``accumulate_grad_batches`` while it trains a pixel loss (:attr:`global_loss`), else 1."""
        trainer = self._trainer
        if trainer is None or not trainer.training or not self.global_loss:
            return 1
        return int(trainer.accumulate_grad_batches)

    def on_before_optimizer_step(self, optimizer) -> None:
        """After k accumulated batches: the gradients × reference weight / the window's total weight."""
        window, self._window = self._window, None
        if window is None or window[1] <= 0 or window[0] == window[1]:
            return
        scale = window[0] / window[1]
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)

    def _outputs(self, batch) -> tuple[Tensor, Tensor, Tensor | PaddedBatch, int, bool]:
        """:meth:`_step`'s four values and whether the logged loss still needs averaging over processes. A
        subclass's ``_step`` that returns ``(loss, logits, n)`` (the form before the global batch) is a mean
        over each process's share."""
        out = self._step(batch)
        if len(out) == 3:
            loss, logits, n = out
            return loss, loss.detach(), logits, n, True
        loss, logged, logits, n = out
        return loss, logged, logits, n, not self.global_loss

    def on_fit_start(self) -> None:
        if world_size() > 1 and not self.global_loss:
            warnings.warn(
                f"SegmentationTask(loss={self.loss_name!r}) on {world_size()} processes: each process's loss is "
                "its own share's, and DDP averages them, which differs from one process's loss of the global batch. "
                "'cross_entropy' and 'focal' are normalised by the whole global batch.", UserWarning, stacklevel=2)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        loss, logged, _, n, sync = self._outputs(batch)
        # A global loss is the same number on every process: no reduction needed (nor a collective per step).
        self.log("train/loss", logged, on_step=True, on_epoch=True, prog_bar=True, sync_dist=sync, batch_size=n)
        return loss

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        loss, logged, logits, n, sync = self._outputs(batch)
        _, targets = self._split(batch)
        self.val_metrics.update(_detach(logits), targets)
        self.log("val/loss", logged, on_epoch=True, prog_bar=True, sync_dist=sync, batch_size=n)
        return loss

    def on_validation_epoch_end(self) -> None:
        # compute() sums the confusion matrices of all processes, so every rank logs the same numbers.
        result = self.val_metrics.compute()
        self.log("val/mean_iou", result["mean_iou"], prog_bar=True, sync_dist=True)
        self.log("val/pixel_accuracy", result["pixel_accuracy"], sync_dist=True)
        for name, value in zip(self.class_names, result["iou"]):
            self.log(f"val/iou/{name}", value, sync_dist=True)
        self.val_metrics.reset()

    def predict_step(self, batch, batch_idx: int) -> Tensor | PaddedBatch:
        """Predicted labels (N, *spatial) (a PaddedBatch of labels (N, 1, *spatial) for padded input)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        logits = self(images)
        if isinstance(logits, PaddedBatch):
            return PaddedBatch(argmax(logits.data, 1, keepdim=True), logits.sizes)
        return argmax(logits, 1)


class ClassificationTask(_Task):
    """Image classification of any model: weighted cross-entropy and accuracy.

    Args:
        model: Any module mapping images (N, C_in, *spatial) to logits (N, num_classes); with
            ``masked_input`` it may end in a global pooling so padded batches work.
        num_classes: Number of classes C (>= 2).
        class_weight: Weight of each class (C,) in the cross-entropy.
        ignore_index: A target value to leave out, besides −100 which is always left out.
        label_smoothing: Label smoothing of ``F.cross_entropy``, in [0, 1).
        optimizer, lr, weight_decay, masked_input, sync_batchnorm, scheduler, warmup_epochs, encoder_lr_factor,
            freeze_encoder_epochs: As in :class:`SegmentationTask` (gradient accumulation averages the batch means).

    Shape:
        - images: (N, C_in, *spatial) tensor, or a PaddedBatch of them
        - targets: (N,) integer labels

    Examples:
        >>> from cnnkit.models import TinyResNet
        >>> task = ClassificationTask(TinyResNet(in_channels=1, num_classes=4, width=4), num_classes=4)
        >>> task(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        class_weight=None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        optimizer: str | OptimizerFactory = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        masked_input: bool = False,
        sync_batchnorm: bool | None = None,
        scheduler: str | None = None,
        warmup_epochs: int = 0,
        encoder_lr_factor: float = 1.0,
        freeze_encoder_epochs: int = 0,
    ) -> None:
        super().__init__(
            model,
            num_classes,
            class_weight=class_weight,
            ignore_index=ignore_index,
            optimizer=optimizer,
            lr=lr,
            weight_decay=weight_decay,
            masked_input=masked_input,
            sync_batchnorm=sync_batchnorm,
            scheduler=scheduler,
            warmup_epochs=warmup_epochs,
            encoder_lr_factor=encoder_lr_factor,
            freeze_encoder_epochs=freeze_encoder_epochs,
        )
        if self.num_classes < 2:
            raise ShapeError(f"num_classes must be >= 2 for classification. Received num_classes={num_classes}.")
        self.label_smoothing = _check_number(label_smoothing, "label_smoothing")
        if self.label_smoothing >= 1:
            raise ShapeError(f"label_smoothing must be in [0, 1). Received label_smoothing={label_smoothing!r}.")
        self.save_hyperparameters({
            "num_classes": self.num_classes, "ignore_index": self.ignore_index,
            "class_weight": None if self.class_weight is None else self.class_weight.tolist(),
            "label_smoothing": self.label_smoothing, "optimizer": self._optimizer_name(), "lr": self.lr,
            "weight_decay": self.weight_decay, "masked_input": self.masked_input, **self._training_options(),
        })

    def __repr__(self) -> str:
        items = [f"num_classes={self.num_classes}", f"optimizer={self._optimizer_name()!r}", f"lr={self.lr}",
                 f"weight_decay={self.weight_decay}"]
        if self.masked_input:
            items.append("masked_input=True")
        return f"{type(self).__name__}({', '.join(items)})"

    def _step(self, batch) -> tuple[Tensor, Tensor, Tensor, int]:
        images, targets = self._split(batch)
        if targets.dim() != 1 or targets.is_floating_point():
            raise ShapeError(f"targets must be integer labels (N,). Received targets of dtype {targets.dtype} "
                             f"and shape {tuple(targets.shape)}.")
        logits = self(images)
        if isinstance(logits, PaddedBatch) or logits.dim() != 2 or logits.shape[1] != self.num_classes:
            shape = tuple(logits.data.shape) if isinstance(logits, PaddedBatch) else tuple(logits.shape)
            raise ShapeError(f"the model must return logits (N, num_classes={self.num_classes}). "
                             f"Received {type(logits).__name__} of shape {shape}.")
        valid = targets != IGNORE_INDEX
        if self.ignore_index is not None:
            valid &= targets != self.ignore_index
        if bool(valid.any()):
            loss = F.cross_entropy(logits[valid], targets[valid], weight=self.class_weight,
                                   label_smoothing=self.label_smoothing)
        else:  # nothing counted: 0 with a zero gradient, not NaN
            loss = logits.sum() * 0.0
        correct = (argmax(logits, 1)[valid] == targets[valid]).sum()
        return loss, correct, valid.sum(), len(targets)

    def _log_step(self, stage: str, batch) -> Tensor:
        loss, correct, counted, n = self._step(batch)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        accuracy = correct.float() / counted.clamp(min=1)
        self.log(f"{stage}/accuracy", accuracy, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=max(int(counted), 1))
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._log_step("train", batch)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._log_step("val", batch)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Predicted labels (N,)."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return argmax(self(images), 1)


def _detach(value: Any) -> Any:
    if isinstance(value, PaddedBatch):
        return PaddedBatch(value.data.detach(), value.sizes)
    return value.detach()
