"""Lightning callbacks around cnnkit's introspection tools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.inspect import FilterEvolution
from cnnkit.inspect.evolution import LayerSpec

__all__ = ["DivergenceStop", "EpochLine", "FilterEvolutionCallback", "FreezeEncoder", "encoder_of"]


def encoder_of(model: nn.Module, option: str = "the encoder", value: Any = None) -> nn.Module:
    """The ``encoder`` submodule of ``model`` (segmentation-models-pytorch's networks have one), or one clear error
    naming ``option`` and its ``value``.

    Examples:
        >>> encoder_of(nn.Conv2d(1, 1, 1), "freeze_encoder_epochs", 2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: freeze_encoder_epochs needs a model with an `encoder` submodule ... for a Conv2d.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ShapeError(
            f"{option} needs a model with an `encoder` submodule (as segmentation-models-pytorch's networks have). "
            f"Received {option}={value!r} for a {type(model).__name__}.")
    return encoder


class FreezeEncoder(L.Callback):
    """The model's ``encoder`` frozen for the first ``epochs`` epochs, then trained.

    Frozen means: the encoder's parameters have ``requires_grad`` off (no gradient, so the optimizer — which
    skips parameters without one — leaves them, weight decay included, unchanged) and its batch-norm layers are
    in eval mode (their running statistics are used and not updated). At the start of each training epoch the
    callback freezes or thaws from ``trainer.current_epoch`` alone, so a resumed run is frozen exactly when the
    uninterrupted run would be; thawing (also at the end of ``fit``) restores only what it froze. Lightning
    restores each module's mode after validation, so the batch norms stay in eval mode through a frozen epoch.

    The encoder is found as the ``encoder`` attribute of the task's ``model`` (else of the task itself).

    Args:
        epochs: Number of frozen epochs (>= 0).

    Examples:
        >>> FreezeEncoder(2)
        FreezeEncoder(epochs=2)
    """

    def __init__(self, epochs: int) -> None:
        super().__init__()
        if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
            raise ShapeError(f"epochs must be an integer >= 0. Received epochs={epochs!r}.")
        self.epochs = epochs
        self._frozen: list[nn.Parameter] = []
        self._norms: list[nn.Module] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epochs={self.epochs})"

    @staticmethod
    def _encoder(pl_module: L.LightningModule) -> nn.Module:
        model = getattr(pl_module, "model", None)
        return encoder_of(model if isinstance(model, nn.Module) else pl_module, "freeze_encoder_epochs")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        encoder = self._encoder(pl_module)
        if trainer.current_epoch < self.epochs:
            if not self._frozen:
                self._frozen = [p for p in encoder.parameters() if p.requires_grad]
                for p in self._frozen:
                    p.requires_grad_(False)
            self._norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for m in self._norms:
                m.eval()
            return
        self._thaw(pl_module.training)

    def _thaw(self, training: bool) -> None:
        for p in self._frozen:
            p.requires_grad_(True)
        for m in self._norms:
            m.train(training)
        self._frozen, self._norms = [], []

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The encoder as it was before ``fit``, also when training stops inside a frozen epoch."""
        self._thaw(pl_module.training)


class EpochLine(L.Callback):
    """One line per epoch, the same in a terminal and in a log file (nohup, SLURM)::

        epoch  3/30  train loss 0.512  val loss 0.604  val mean IoU 0.713  4.1 s

    Validation figures appear only on the epochs that validated (``check_val_every_n_epoch``), never
    repeated from an earlier one.

    Args:
        log: Called with each line (``print`` by default).
    """

    def __init__(self, log=print):
        self.write = log  # not `self.log`: Lightning sets every callback's `log` to the module's
        self._start = 0.0
        self._validated = -1  # the last epoch whose validation ran

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import time

        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1:>{len(str(trainer.max_epochs))}}/{trainer.max_epochs}"]
        validated = self._validated == trainer.current_epoch
        for key, label in (("train/loss_epoch", "train loss"), ("train/loss", "train loss"), ("val/loss", "val loss"),
                           ("val/mean_iou", "val mean IoU"), ("val/accuracy", "val accuracy")):
            if key.startswith("val/") and not validated:
                continue
            if key in metrics and not any(p.startswith(label) for p in parts):
                parts.append(f"{label} {float(metrics[key]):.3f}")
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        self.write("  ".join(parts))


class FilterEvolutionCallback(L.Callback):
    """Records :class:`~cnnkit.inspect.FilterEvolution` snapshots during ``trainer.fit``, kept in checkpoints.

    The evolution is created in ``setup`` (its first snapshot is the model before training) on the task's
    ``model`` attribute when it has one (so layer names are those of your network, e.g. ``"stem.0"``), else on
    the LightningModule itself. After each training batch its step counter is brought up to
    ``trainer.global_step`` (optimizer steps, so gradient accumulation is respected), snapshotting every
    ``every_n_steps``. Its state is saved in every checkpoint and restored on resume, so a resumed run
    continues the same history.

    Args:
        layers: Layer names, module types or modules, as for :class:`~cnnkit.inspect.FilterEvolution`.
        every_n_steps: Snapshot every this many optimizer steps (>= 1).
        param: The parameter to follow (default ``"weight"``).

    Attributes:
        evolution: The :class:`~cnnkit.inspect.FilterEvolution` (``None`` before ``setup``); call its
            ``change(layer)`` or ``render(layer)`` after training.

    Examples:
        >>> callback = FilterEvolutionCallback(nn.Conv2d, every_n_steps=10)
        >>> callback
        FilterEvolutionCallback(layers=<class 'torch.nn.modules.conv.Conv2d'>, every_n_steps=10, param='weight')
    """

    def __init__(self, layers: LayerSpec | Sequence[LayerSpec], every_n_steps: int = 100, *, param: str = "weight"):
        super().__init__()
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            from cnnkit.errors import ShapeError

            raise ShapeError(f"every_n_steps must be an integer >= 1. Received every_n_steps={every_n_steps!r}.")
        self.layers = layers
        self.every_n_steps = every_n_steps
        self.param = param
        self.evolution: FilterEvolution | None = None
        self._pending_state: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layers={self.layers!r}, every_n_steps={self.every_n_steps}, "
                f"param={self.param!r})")

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=repr(self.layers), every_n_steps=self.every_n_steps, param=self.param)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.evolution is not None:
            return
        model = getattr(pl_module, "model", None)
        if not isinstance(model, nn.Module):
            model = pl_module
        self.evolution = FilterEvolution(model, self.layers, self.every_n_steps, param=self.param)
        if self._pending_state is not None:
            self.evolution.load_state_dict(self._pending_state)
            self._pending_state = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.evolution is None:
            return
        while self.evolution.global_step < trainer.global_step:
            self.evolution.step()

    def state_dict(self) -> dict[str, Any]:
        if self.evolution is not None:
            return self.evolution.state_dict()
        return dict(self._pending_state or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.evolution is None:
            self._pending_state = dict(state_dict)
        else:
            self.evolution.load_state_dict(state_dict)


class DivergenceStop(L.Callback):
    """Stop training with a clear error when the loss diverges, instead of finishing a run that learned nothing.

    Two signs, checked as training goes:

    * a training loss that is NaN or ±inf (checked after every batch, on the batch's own loss);
    * a validation loss that is not finite, or over ``factor`` times the reference: the lowest of the first
      epoch's mean training loss and every validation loss so far (a network that learns does not end an epoch a
      hundred times worse than where it started).

    The error (:class:`~cnnkit.CnnkitError`, raised out of ``trainer.fit``) says what to change: a smaller
    learning rate (``hint`` names the option, e.g. ``--lr``), and the value to try.

    Args:
        lr: The learning rate in use (for the message).
        factor: How many times the reference a validation loss may reach (> 1).
        hint: How the user sets the learning rate.

    Examples:
        >>> DivergenceStop(lr=0.01)
        DivergenceStop(lr=0.01, factor=100)
    """

    def __init__(self, lr: float, factor: float = 100.0, hint: str = "--lr"):
        super().__init__()
        self.lr, self.factor, self.hint = float(lr), float(factor), hint
        self._reference: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr:g}, factor={self.factor:g})"

    def _stop(self, what: str) -> None:
        from cnnkit.errors import CnnkitError

        raise CnnkitError(
            f"Training diverged: {what}. The learning rate {self.lr:g} is too high for this network and data: "
            f"train again with a smaller one, e.g. {self.hint} {self.lr / 10:g} (and --overwrite the run folder); "
            "a smaller --batch-size or pretrained weights (--weights) can help too.")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not bool(loss.detach().isfinite().all()):
            self._stop(f"the training loss of step {trainer.global_step} is {float(loss.detach()):g}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import math

        if self._reference is None:
            for key in ("train/loss_epoch", "train/loss"):
                if key in trainer.callback_metrics:
                    value = float(trainer.callback_metrics[key])
                    if math.isfinite(value):
                        self._reference = value
                    break

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import math

        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics["val/loss"])
        if not math.isfinite(value):
            self._stop(f"the validation loss of epoch {trainer.current_epoch + 1} is {value:g}")
        if self._reference is not None and value > self.factor * max(self._reference, 1e-3):
            self._stop(f"the validation loss of epoch {trainer.current_epoch + 1} is {value:.4g}, over "
                       f"{self.factor:g} times {self._reference:.4g} (the lowest loss so far)")
        self._reference = value if self._reference is None else min(self._reference, value)
