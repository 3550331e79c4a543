"""``fit``: one call that trains a task with logs, progress, ``last.ckpt`` every epoch, and resume.

Layout of ``run_dir``::

    run_dir/
        checkpoints/last.ckpt        written at the end of every epoch (atomically, see AtomicCheckpointIO, in
                                     a thread while the next epoch runs)
        checkpoints/best.ckpt        lowest ``val/loss`` so far (only with a validation loader)
        logs/version_<k>/metrics.csv one CSV per (re)start; the ``step`` column is the global step
        tensorboard/version_<k>/     when ``tensorboard`` is installed

Resume: with ``resume="auto"`` a run whose ``checkpoints/last.ckpt`` exists continues from it — model,
optimiser, epoch and global step, callback states (e.g. :class:`~cnnkit.train.FilterEvolutionCallback`) —
so a crashed or killed run is restarted with the same call. A checkpoint is written after the epoch's
validation, in a thread while the next epoch starts (``fit`` waits for it before returning, also after an error),
so a restart repeats at most the interrupted epoch — and the one before it if the process was killed while its
checkpoint was being written. Pass ``plugins=[AtomicCheckpointIO()]`` to write in the training thread (the
default is ``AtomicCheckpointIO(background=True)``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection

from cnnkit.errors import ArgumentTypeError, ShapeError
from cnnkit.masking import BucketBatchSampler
from cnnkit.train.callbacks import EpochLine
from cnnkit.train.distributed import check_devices, check_precision, launched_as_rank_zero
from cnnkit.train.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINTS,
    LAST_CHECKPOINT,
    LOGS,
    TENSORBOARD,
    MissingRunFileError,
    check_checkpoint,
    last_checkpoint,
)
from cnnkit.train.sampling import DistributedBucketSampler

__all__ = ["AtomicCheckpointIO", "fit", "last_checkpoint"]  # last_checkpoint lives in rundir, named here too

_DAMAGED_LAST = (
    "Resume cannot continue from it: move it away (or delete it) to start afresh (resume=None, or --overwrite on "
    "the command line), or resume from another checkpoint such as checkpoints/best.ckpt (resume=<path>)."
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writer that never leaves a torn file: write ``<name>.tmp-*`` beside it, fsync, ``os.replace``.

    Lightning's own ``_atomic_save`` stages the file in the system temporary directory and *moves* it, which is
    a plain copy (not atomic) when that directory is on another file system than the run. Here the temporary
    file lives in the checkpoint's own directory, so the rename is atomic on POSIX and Windows: a process
    killed at any moment leaves either the previous complete checkpoint or the new complete one.
    Non-local paths (``s3://`` …) fall back to Lightning's writer.

    Args:
        background: Write in a thread, so training goes on meanwhile: :meth:`save_checkpoint` first copies every
            tensor into host memory (a point-in-time copy, in the calling thread; no extra GPU memory), then
            returns. One write at a time; :meth:`teardown` (Lightning calls it when ``fit`` ends, also after an
            error), :meth:`load_checkpoint` and :meth:`remove_checkpoint` wait for the pending write, and an
            error of a write is raised by the next call.

    Examples:
        >>> import tempfile, torch
        >>> path = Path(tempfile.mkdtemp()) / "a" / "x.ckpt"
        >>> AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, path)
        >>> torch.load(path)["w"], sorted(p.name for p in path.parent.iterdir())
        (tensor([1., 1.]), ['x.ckpt'])
        >>> writer, w = AtomicCheckpointIO(background=True), torch.ones(2)
        >>> writer.save_checkpoint({"w": w}, path); _ = w.add_(1); writer.teardown()
        >>> torch.load(path)["w"]                      # the tensor as it was when saved
        tensor([1., 1.])
    """

    def __init__(self, background: bool = False) -> None:
        super().__init__()
        if not isinstance(background, bool):
            raise ArgumentTypeError(f"background must be True or False. Received background={background!r}.")
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def _wait(self) -> None:
        """Wait for the pending background write; raise its error, if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise ArgumentTypeError(
                "AtomicCheckpointIO.save_checkpoint does not take storage_options. "
                f"Received storage_options={storage_options!r}."
            )
        self._wait()
        if not self.background:
            self._write(checkpoint, path)
            return
        host = apply_to_collection(checkpoint, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnkit-checkpoint")
        self._pending = self._executor.submit(self._write, host, path)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._wait()
        return super().load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path) -> None:
        self._wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        try:
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _write(self, checkpoint: dict[str, Any], path) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


class _Bar(RichProgressBar):
    """Rich's bar without Lightning's ``v_num`` (the logger version, which means nothing to a reader)."""

    def get_metrics(self, trainer, pl_module):
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def _progress_bar(progress: bool, quiet: bool = True) -> Callback | None:
    if not progress:
        return None
    if importlib.util.find_spec("rich") is not None:
        return _Bar() if quiet else RichProgressBar()
    return TQDMProgressBar()


_HARMLESS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*You defined a `validation_step` but have no `val_dataloader`.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    # SegmentationTask logs a global loss, the same number on every process, without a reduction
    r".*self\.log\('(train|val)/loss', \.\.\., sync_dist=True\)`? when logging on epoch level.*",
)


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Lightning's INFO banners and known-harmless warnings hidden for the duration (levels restored)."""
    if not enabled:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning",
                                                    "pytorch_lightning", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for pattern in _HARMLESS:
            warnings.filterwarnings("ignore", message=pattern)
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def fit(
    task: L.LightningModule,
    train_loader,
    val_loader=None,
    *,
    run_dir: str | os.PathLike,
    max_epochs: int,
    resume: str | os.PathLike | None = "auto",
    accelerator: str = "cpu",
    devices: int | str | Sequence[int] = 1,
    strategy: str | Any = "auto",
    num_nodes: int = 1,
    precision: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    quiet: bool = True,
    log: Any = None,
    accumulate_grad_batches: int = 1,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Train ``task`` with CSV (and TensorBoard) logs, a progress bar, ``last.ckpt`` every epoch, and resume.

    Args:
        task: A :class:`lightning.LightningModule`, e.g. :class:`~cnnkit.train.SegmentationTask`.
        train_loader: The training ``DataLoader``. With a
            :class:`~cnnkit.train.DistributedBucketSampler` as its ``batch_sampler``, its ``batch_size`` is the
            global batch, shared among the processes, and Lightning's ``DistributedSampler`` is kept out
            (``use_distributed_sampler=False``); the run is refused before it starts if a global batch would
            leave a process without a sample. A plain ``DataLoader`` gets Lightning's ``DistributedSampler``
            under DDP (its ``batch_size`` is then per process); a :class:`~cnnkit.BucketBatchSampler` is refused
            on several processes (every process would see every sample).
        val_loader: Optional validation ``DataLoader``, run after every training epoch. Give it a
            :class:`~cnnkit.train.DistributedBucketSampler` with ``shuffle=False`` too when the training loader
            has one: Lightning's sampler is then off for both, and a plain loader would be run whole by every
            process (same metrics, W times the work).
        run_dir: Folder of checkpoints and logs (created; see the module documentation for the layout).
        max_epochs: Number of epochs in total, counting those done before a resume (>= 1).
        resume: ``"auto"``: continue from ``run_dir/checkpoints/last.ckpt`` if it exists, else start afresh;
            ``None``: start afresh (an existing ``last.ckpt`` is overwritten); a path: continue from that
            checkpoint, which must exist. A damaged checkpoint (truncated, garbage) is refused with a
            :class:`~cnnkit.CnnkitError` naming it, before training starts.
        accelerator: Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"`` …).
        devices: Devices per node (an int, ``-1``, ``"auto"`` or a list of GPU indices). More GPUs than the
            machine has is a :class:`~cnnkit.ShapeError` before anything starts; CPU processes may be as many as
            asked (see :func:`~cnnkit.train.distributed.check_devices`).
        strategy: Lightning strategy: ``"auto"``, ``"ddp"``, ``"ddp_spawn"`` … (with ``accelerator="cpu"``
            DDP uses the gloo backend, with GPUs NCCL). Under ``torchrun`` or SLURM, Lightning reads the
            cluster's variables itself; ``devices`` and ``num_nodes`` must match the launch (docs/train.md).
        num_nodes: Number of machines.
        precision: Lightning's precision, one of :data:`~cnnkit.train.distributed.PRECISIONS`
            (``"bf16-mixed"``, ``"64-true"`` …); ``None``: Lightning's default (``"32-true"``).
        progress: Show a progress bar (Rich when ``rich`` is installed, else tqdm).
        callbacks: More Lightning callbacks.
        quiet: Hide Lightning's banners ("GPU available: …", tips, "Trainer.fit stopped: …"), its model table,
            the progress bar's ``v_num`` and known-harmless warnings; ``False`` shows everything.
        log: If given, called with one line per epoch (:class:`~cnnkit.train.callbacks.EpochLine`): epoch,
            losses, validation mean IoU, time — what a log file keeps when there is no terminal.
        accumulate_grad_batches: Lightning's gradient accumulation (>= 1): one optimizer step every this many
            batches. With :class:`~cnnkit.train.SegmentationTask`'s ``"cross_entropy"`` or ``"focal"`` loss the step
            equals that of one batch this many times as large (the loss normalised by the weight of all the
            accumulated pixels, see the task); the schedules count optimizer steps.
        **trainer_kwargs: Passed to :class:`lightning.Trainer` (``gradient_clip_val``,
            ``limit_train_batches`` …).

    Returns:
        The :class:`lightning.Trainer` after ``fit`` (``trainer.global_step``, ``trainer.logger.log_dir``,
        ``trainer.checkpoint_callback.best_model_path`` …).

    Examples:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from cnnkit.train import SegmentationTask
        >>> x = torch.randn(8, 1, 8, 8)
        >>> data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=4)
        >>> task = SegmentationTask(torch.nn.Conv2d(1, 2, 3, padding=1), num_classes=2, lr=0.05)
        >>> trainer = fit(task, data, data, run_dir=tempfile.mkdtemp(), max_epochs=2, progress=False,
        ...               enable_model_summary=False)
        >>> trainer.global_step, last_checkpoint(trainer.default_root_dir).name
        (4, 'last.ckpt')
    """
    if not isinstance(task, L.LightningModule):
        raise ArgumentTypeError(f"task must be a lightning.LightningModule. Received {type(task).__name__}.")
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
        raise ShapeError(f"max_epochs must be an integer >= 1. Received max_epochs={max_epochs!r}.")
    if not isinstance(progress, bool):
        raise ShapeError(f"progress must be True or False. Received progress={progress!r}.")
    for key in ("logger", "default_root_dir", "enable_checkpointing", "max_epochs"):
        if key in trainer_kwargs:
            raise ShapeError(
                f"fit sets {key} itself (from run_dir / max_epochs). Received {key}={trainer_kwargs[key]!r}."
            )
    if not isinstance(accumulate_grad_batches, int) or isinstance(accumulate_grad_batches, bool) \
            or accumulate_grad_batches < 1:
        raise ShapeError("accumulate_grad_batches must be an integer >= 1. "
                         f"Received accumulate_grad_batches={accumulate_grad_batches!r}.")
    if "://" in os.fspath(run_dir):
        raise ShapeError(f"run_dir must be a local folder. Received run_dir={os.fspath(run_dir)!r}.")
    if check_precision(precision) is not None:
        trainer_kwargs["precision"] = precision
    processes = check_devices(accelerator, devices, num_nodes)
    several = strategy == "ddp" or (strategy == "auto" and processes is not None and processes > 1)
    if getattr(task, "freeze_encoder_epochs", 0) and several:
        # frozen parameters get no gradient for a while: DDP must look for unused parameters, or it waits for them
        strategy = "ddp_find_unused_parameters_true"
    _check_samplers(train_loader, val_loader, processes, trainer_kwargs)
    run_dir = Path(run_dir)
    ckpt_path = _resolve_resume(resume, run_dir)
    if launched_as_rank_zero():  # the other processes write nothing of the run folder themselves
        run_dir.mkdir(parents=True, exist_ok=True)

    # ``save_last=True`` only writes last.ckpt when a top-k checkpoint is saved in the same step, so last.ckpt
    # gets its own callback: monitor=None, top-1 under a fixed name, overwritten after every epoch.
    last = ModelCheckpoint(
        dirpath=run_dir / CHECKPOINTS,
        filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True,  # every epoch, also those that do not validate (check_val_every_n_epoch)
    )
    all_callbacks: list[Callback] = [last]
    if val_loader is not None:
        all_callbacks.append(ModelCheckpoint(
            dirpath=run_dir / CHECKPOINTS, filename=BEST_CHECKPOINT.removesuffix(".ckpt"), monitor="val/loss",
            mode="min", save_top_k=1,
            every_n_epochs=1, enable_version_counter=False,
        ))
    all_callbacks += list(callbacks)
    if log is not None:
        all_callbacks.append(EpochLine(log))
    bar = _progress_bar(progress, quiet)
    if bar is not None:
        all_callbacks.append(bar)
    loggers: list = [CSVLogger(save_dir=run_dir, name=LOGS)]
    if importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None:
        loggers.append(TensorBoardLogger(save_dir=run_dir, name=TENSORBOARD))
    plugins = list(trainer_kwargs.pop("plugins", None) or [])
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        # written in a thread (tensors copied to host memory first): the checkpoint no longer holds up the next epoch
        plugins.append(AtomicCheckpointIO(background=True))
    trainer_kwargs.setdefault("log_every_n_steps", 1)
    if quiet:
        trainer_kwargs.setdefault("enable_model_summary", False)

    with _quiet(quiet):
        trainer = L.Trainer(
            default_root_dir=run_dir,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            logger=loggers,
            callbacks=all_callbacks,
            enable_progress_bar=progress,
            plugins=plugins,
            accumulate_grad_batches=accumulate_grad_batches,
            **trainer_kwargs,
        )
        trainer.fit(task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    return trainer


def _check_samplers(train_loader, val_loader, processes: int | None, trainer_kwargs: dict[str, Any]) -> None:
    """Keep Lightning's DistributedSampler away from cnnkit's, and refuse what cannot be shared among processes."""
    ours = [
        (name, loader.batch_sampler) for name, loader in (("train_loader", train_loader), ("val_loader", val_loader))
        if isinstance(getattr(loader, "batch_sampler", None), DistributedBucketSampler)
    ]
    if ours:
        if trainer_kwargs.get("use_distributed_sampler", False):
            raise ShapeError(
                f"{ours[0][0]} shares its global batches among the processes itself (DistributedBucketSampler); "
                "Lightning's DistributedSampler must stay out. Received use_distributed_sampler=True."
            )
        trainer_kwargs["use_distributed_sampler"] = False
        if processes is not None:
            for _, sampler in ours:
                sampler.check_world_size(processes)
    if processes is not None and processes > 1 and isinstance(getattr(train_loader, "batch_sampler", None),
                                                             BucketBatchSampler):
        raise ShapeError(
            f"train_loader has a BucketBatchSampler, which gives every process every batch; on {processes} "
            "processes use cnnkit.train.DistributedBucketSampler (same arguments; its batch_size is the global "
            "batch)."
        )


def _resolve_resume(resume, run_dir: Path) -> str | None:
    if resume is None:
        return None
    if isinstance(resume, str) and resume == "auto":
        last = last_checkpoint(run_dir)
        if last is not None:
            check_checkpoint(last, what=_DAMAGED_LAST)
        return str(last) if last is not None else None
    if isinstance(resume, (str, os.PathLike)):
        path = Path(resume)
        if not path.is_file():
            raise MissingRunFileError(
                "resume must be 'auto', None or an existing checkpoint file. "
                f"Received resume={str(resume)!r}, which does not exist."
            )
        check_checkpoint(path, what="Resume from another checkpoint (resume=<path>), or start afresh (resume=None).")
        return str(path)
    raise ShapeError(f"resume must be 'auto', None or a checkpoint path. Received resume={resume!r}.")
