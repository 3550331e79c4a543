"""From two data sets to a trained, evaluated segmentation network and its report, in one call.

:func:`train_segmentation` is what ``cnnkit demo`` runs on its built-in scenes and ``cnnkit train`` on a
user's folder:

1. count the labelled pixels of every class in the training split (−100 is never counted) and name the
   **rare** classes (under ``rare_below`` of the labelled pixels);
2. mix into every epoch one crop per training image centred, half of the time, on a rare-class pixel
   (:class:`~cnnkit.data.RareClassCrops`), and estimate class weights (:func:`cnnkit.losses.class_weights`,
   ENet's ``1 / ln(1.02 + share)`` by default) on the images *and* the crops: what the loss sees;
3. train through :class:`~cnnkit.train.SegmentationTask` with ``masked_input=True`` (every padded batch
   runs through :func:`cnnkit.masked`) on batches of similar sizes
   (:class:`~cnnkit.masking.BucketBatchSampler` + :func:`~cnnkit.masking.collate_padded`), with the
   weighted cross-entropy that ignores −100, a progress bar, CSV logs and checkpoints (:func:`fit`);
4. measure the held-out mean IoU and that of a baseline predicting the most frequent training class
   everywhere (:class:`~cnnkit.metrics.SegmentationMetrics`, padding and −100 left out);
5. write the HTML report (:func:`cnnkit.report.write_report`) with two sections of its own first:
   **Data** (size scatter and histogram, padded share per epoch with bucketing vs random batches, class
   shares and weights) and **Held-out evaluation** (network vs baseline, per class, and the time taken);
6. write the trained weights (safetensors) and the run manifest (:func:`cnnkit.train.rundir.write_manifest`):
   the network's builder, the input preprocessing, class names and palette — what ``cnnkit predict`` reads.

Items are ``(image (C, H, W) float, label (H, W) int)``; −100 marks pixels without a label.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, DataLoader

from cnnkit._checks import check_int
from cnnkit.app.settings import TrainSettings, pop_settings, settings_for
from cnnkit.app.threads import usable_cores
from cnnkit.app.weights import build_network, spec_of_weights, weights_source
from cnnkit.app.workflow import (
    IMAGES,
    RARE_CROP_SHARE,
    ClassCounts,
    Subset,
    check_class_names,
    choose_accelerator,
    choose_network,
    count_classes,
    evaluate,
    holdout_split,
    learning_rate,
    majority_baseline,
    silent,
    training_options,
    validation_period,
)
from cnnkit.data import RareClassCrops
from cnnkit.data.standardize import DataStatistics
from cnnkit.errors import ShapeError
from cnnkit.losses import class_weights
from cnnkit.masking import BucketBatchSampler, collate_padded, padding_fraction, spatial_sizes
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.models import MODELS, ModelSpec, training_defaults
from cnnkit.render.labels import DEFAULT_PALETTE
from cnnkit.report import RunRecipe, data_section, evaluation_section, recipe_section, write_report
from cnnkit.train import DistributedBucketSampler, FilterEvolutionCallback, SegmentationTask, fit
from cnnkit.train.callbacks import DivergenceStop
from cnnkit.train.distributed import check_devices, check_precision, launched_as_rank_zero, stop_together
from cnnkit.train.rundir import (
    check_run_dir,
    check_run_options,
    prepare_run_dir,
    write_manifest,
    write_run_options,
)

__all__ = ["RARE_CROP_SHARE", "STRATEGIES", "SegmentationRun", "check_scaling", "evaluate", "holdout_split",
           "majority_baseline", "model_options", "network_spec", "padding_shares", "size_multiple", "train_folder",
           "train_segmentation", "validation_period", "weights_source"]

STRATEGIES = ("auto", "ddp")
"""Values of ``strategy`` (``--strategy``): Lightning's names; ``"auto"`` is ``"ddp"`` on several processes.
``"ddp_spawn"`` is refused: it pickles the task, loaders and callbacks, and the applications' log (a closure over
the terminal) and crop callback do not pickle."""

@dataclass
class SegmentationRun:
    """What :func:`train_segmentation` measured and wrote.

    Attributes:
        report: Path of ``report.html``.
        mean_iou: Mean IoU of the trained network on the held-out split.
        baseline_mean_iou: Mean IoU of predicting ``majority`` everywhere, same split and metric.
        iou, baseline_iou: Per-class IoU of the network and of the baseline (NaN: class absent from the
            held-out labels and never predicted).
        class_names: Name of each class.
        class_share: Share of each class among the labelled training pixels.
        class_weight: The class weights used in the loss.
        rare_classes: Classes under ``rare_below`` of the labelled pixels (they get crops).
        padding_bucketed / padding_random: Share of padded pixels of one epoch's batches of the training
            images with :class:`~cnnkit.masking.BucketBatchSampler` and with random batches of the same size.
        sizes: (H, W) of every training image.
        majority: The baseline's class (most frequent in the training labels).
        seconds: Wall time from the start to the written report.
    """

    report: Path
    mean_iou: float
    baseline_mean_iou: float
    iou: list[float]
    baseline_iou: list[float]
    class_names: tuple[str, ...]
    class_share: list[float]
    class_weight: list[float]
    rare_classes: list[int]
    padding_bucketed: float
    padding_random: float
    sizes: list[tuple[int, int]]
    majority: int
    seconds: float

    def lines(self) -> list[str]:
        """The result as the lines ``cnnkit demo`` and ``cnnkit train`` print."""
        names = self.class_names
        return [
            f"held-out mean IoU:             {self.mean_iou:.3f}",
            f"majority-class baseline IoU:   {self.baseline_mean_iou:.3f}  (predicting '{names[self.majority]}', "
            "the most frequent training class, everywhere)",
            "per-class IoU:                 " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, self.iou)),
            f"padded pixels per epoch:       {100 * self.padding_bucketed:.1f} % bucketed vs "
            f"{100 * self.padding_random:.1f} % random batches",
            f"report:                        {self.report}",
            f"elapsed:                       {self.seconds:.1f} s",
        ]


def padding_shares(sizes, batch_size: int, seed: int) -> tuple[float, float]:
    """Padded share of one epoch's batches: (bucketed, random batches of the same size)."""
    g = torch.Generator().manual_seed(seed)
    bucketed = padding_fraction(BucketBatchSampler(sizes, batch_size, generator=g).batches(), sizes)
    order = torch.randperm(len(sizes), generator=g).tolist()
    randomly = padding_fraction([order[i : i + batch_size] for i in range(0, len(order), batch_size)], sizes)
    return bucketed, randomly


def check_scaling(device: str = "cpu", devices: int | str = 1, num_nodes: int = 1, strategy: str = "auto",
                  precision: str | None = None) -> tuple[str, int | str | list[int], int]:
    """Lightning's ``(accelerator, devices, processes)`` for ``device`` run on ``devices`` per node, checked before
    anything starts (``cnnkit train --device --devices --num-nodes --strategy --precision``).

    ``device="cpu"``: ``devices`` CPU processes per node (gloo backend), at most as many as this machine has CPU
    cores. ``device="cuda"``: ``devices`` GPUs per node (NCCL), at most as many as there are
    (:func:`cnnkit.train.distributed.check_devices`); ``"cuda:<index>"`` names one GPU, so ``devices`` must be 1.
    ``"auto"``: every GPU, or one CPU process. ``processes`` is the size of the run, ``devices × num_nodes``.

    Examples:
        >>> check_scaling("cpu", 1)
        ('cpu', 1, 1)
        >>> check_scaling("cpu", 10_000)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: --devices 10000 asks for 10000 CPU processes per node, but this machine has ...
    """
    accelerator, chosen = choose_accelerator(device)
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise ShapeError(f"--devices must be an integer >= 1 or 'auto'. Received --devices {devices!r}.")
    num_nodes = check_int(num_nodes, "num_nodes")
    if strategy == "ddp_spawn":
        raise ShapeError("--strategy ddp_spawn pickles the task, the loaders and the callbacks into new processes, "
                         "and cnnkit train's log and crop callback do not pickle. Use --strategy ddp (the other "
                         "processes run the same command again). Received --strategy ddp_spawn.")
    if strategy not in STRATEGIES:
        raise ShapeError(f"Unknown strategy {strategy!r}. Expected one of {STRATEGIES}.")
    check_precision(precision)
    if devices != 1:
        if isinstance(chosen, list) and ":" in device:
            raise ShapeError(f"--device {device} names one GPU, and --devices {devices} asks for several. Use "
                             f"--device cuda --devices {devices} (GPUs 0 to {devices}-1 of each node), or --devices 1.")
        chosen = devices
    if accelerator == "cpu" and devices != "auto" and devices > usable_cores():
        raise ShapeError(f"--devices {devices} asks for {devices} CPU processes per node, but this machine has "
                         f"{usable_cores()} CPU cores. Use --devices <= {usable_cores()} (or --device cuda for GPUs).")
    processes = check_devices(accelerator, chosen, num_nodes)
    return accelerator, chosen, processes if processes is not None else num_nodes


DEFAULT_WEIGHTING = TrainSettings.weighting
"""The class weighting of :func:`train_segmentation` (``weighting``): ENet's ``1 / ln(1.02 + share)``."""

REPORT_SAMPLES = 32
"""Held-out items handed to the report: the first 8 get a row each, the t-SNE draws pixels from all of them."""


def _report_samples(dataset, count: int = REPORT_SAMPLES) -> list[tuple[Tensor, Tensor]]:
    """The first ``count`` held-out pairs, whole, in data set order (the report runs them one by one)."""
    return [(torch.as_tensor(image), torch.as_tensor(label))
            for image, label in (dataset[i] for i in range(min(count, len(dataset))))]


def _item_names(dataset) -> list[str] | None:
    """The file name of each item of a data set read from files (through ``Standardized`` and held-out subsets),
    or None when the items have no names."""
    names = getattr(dataset, "item_names", None)
    if names is not None:
        return list(names)
    if isinstance(dataset, Subset):
        inner = _item_names(dataset.folder)
        return [inner[i] for i in dataset.indices] if inner is not None else None
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple) and isinstance(samples[0][0], Path):
        return [image.name for image, _ in samples]
    inner = getattr(dataset, "dataset", None)
    return _item_names(inner) if inner is not None else None


def network_spec(model_spec: ModelSpec | dict | None, width: int = 16) -> ModelSpec:
    """The spec of the image network to train: ``model_spec`` checked, or cnnkit's default TinySegNet of ``width``
    (:func:`cnnkit.app.workflow.choose_network` for images).

    Examples:
        >>> network_spec(None, 8)
        ModelSpec(library='cnnkit', architecture='TinySegNet', encoder=None, args={'width': 8})
    """
    return choose_network(model_spec, IMAGES, width=width)


def model_options(spec: ModelSpec) -> dict:
    """The options that name ``spec`` on the command line, as a resumed run must repeat them."""
    return {"--model": spec.architecture, "--encoder": spec.encoder, "--model-args": dict(spec.args)}


def family_of_label(spec: ModelSpec) -> str:
    """``'convolutional'``: the family whose training defaults ``spec`` takes."""
    from cnnkit.models import family_of

    return repr(family_of(spec))


def size_multiple(spec: ModelSpec) -> int:
    """What heights and widths must be a multiple of for ``spec``'s network: 4 for cnnkit's networks, ``2 **
    encoder_depth`` for smp's (32 with their default depth 5), 1 for a registered builder (it must take any size).

    Examples:
        >>> size_multiple(network_spec(None))
        4
    """
    if spec.library == "cnnkit":
        return 4
    if spec.library == "smp":
        import inspect

        from cnnkit.models.registry import smp_architectures

        depth = spec.args.get("encoder_depth")
        if depth is None:
            parameter = inspect.signature(smp_architectures()[spec.architecture]).parameters.get("encoder_depth")
            depth = parameter.default if parameter is not None and isinstance(parameter.default, int) else 5
        return 2 ** int(depth)
    from cnnkit.models.registry import size_multiple_of

    return size_multiple_of(spec)  # a registered builder's rule (a Keras network's total stride), else 1


def _ranks_stop_together(function):
    """Run ``function`` so that on several processes one rank's error stops every rank, and the command fails with
    the first rank's error (:func:`cnnkit.train.distributed.stop_together`): a damaged file that only one rank reads
    is reported as that file's error, not as the others' lost connection or a SIGKILL."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with stop_together(kwargs.get("devices", 1) != 1 or kwargs.get("num_nodes", 1) != 1):
            return function(*args, **kwargs)

    return run


@_ranks_stop_together
def train_segmentation(
    train,
    heldout,
    num_classes: int,
    out: str | os.PathLike = "cnnkit-run",
    *,
    settings: TrainSettings | None = None,
    model: nn.Module | None = None,
    model_spec: ModelSpec | dict | None = None,
    weights: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    band_names: Sequence[str] | None = None,
    rgb_bands: Sequence[int] | None = None,
    sample_names: Sequence[str] | None = None,
    preprocessing: dict | None = None,
    ignore_index: int | None = None,
    model_builder: tuple[str, dict] | None = None,
    run_options: dict | None = None,
    recipe: dict | None = None,
    statistics: DataStatistics | None = None,
    title: str | None = None,
    **options,
) -> SegmentationRun | None:
    """Train a mask-aware segmentation network on ``train``, evaluate it on ``heldout``, write the report.

    Args:
        train, heldout: Data sets of ``(image (C, H, W), label (H, W))`` with −100 for unlabelled pixels;
            their ``sizes`` attribute (``[(H, W), …]``) is used if present. For a folder of files wrap a
            :class:`~cnnkit.data.SegmentationFolder` in :class:`~cnnkit.data.Standardized`.
        num_classes: Number of classes; labels lie in ``[0, num_classes)`` or are −100.
        out: Run folder (created). It must be empty or new unless the settings' ``overwrite`` (remove what an
            earlier cnnkit run wrote there, keep anything else) or ``resume`` (continue from
            ``checkpoints/last.ckpt``, up to ``epochs`` in all) is set: cnnkit never deletes what it did not write
            (see :func:`cnnkit.train.rundir.prepare_run_dir`).
        class_names: A name per class (default ``"class 0"``, …).
        model: A network of your own. It must map ``(N, C, H, W)`` to ``(N, num_classes, H, W)`` and be supported
            by :func:`cnnkit.masked`. Default: the network ``model_spec`` names, built by
            :func:`cnnkit.models.build`.
        model_spec: The network by name (a :class:`~cnnkit.models.ModelSpec` or its dict; see docs/models.md),
            recorded in the manifest so that ``cnnkit predict`` rebuilds it. Default: TinySegNet of the settings'
            ``width``.
            Heights and widths must be multiples of :func:`size_multiple` (4 for TinySegNet, 32 for most smp
            networks): ``Standardized(..., multiple_of=...)``.
        weights: Initial weights of ``model_spec``'s network: ``None`` (random), ``"imagenet"`` (or another name
            smp offers for the encoder), a ``.safetensors``/``.pt``/``.pth`` state dict, a cnnkit run folder, or a
            Keras ``.keras``/``.h5`` file (converted by :mod:`cnnkit.keras`; its weights must fit the network), see
            :func:`cnnkit.app.weights.weights_source`. A pretrained 3-band first layer is adapted to ``band_names``.
        run_options: Options the run was started with that ``resume`` must keep (command-line names to values,
            e.g. ``{"--nodata": 0}``), recorded in the run folder with the network's; a resumed run that differs is
            refused naming the option.
        settings: How the run trains (:class:`~cnnkit.app.TrainSettings`: epochs, seed, device, batch size,
            learning rate and schedule, crops, class weighting, validation period, warm-up, the encoder's rate and
            freezing, gradient accumulation, processes and precision, progress and logging, ``overwrite`` and
            ``resume``); ``None`` for the defaults. Under Lightning's ``"ddp"`` the other processes run the same
            command again; only rank 0 writes the run folder, evaluates and writes the report. The weights do not
            depend on the number of processes (up to float rounding): ``batch_size`` is the global batch.
        options: Fields of :class:`~cnnkit.app.TrainSettings` by name (``epochs=4, lr=1e-3``), applied over
            ``settings``; an unknown name is refused with the closest ones.
        title: The report's title.
        preprocessing: What turned the user's files into ``train``'s tensors, for the run manifest
            (:class:`cnnkit.predict.Preprocessing` fields and ``band_count``); ``None`` when unknown.
        ignore_index: The files' value for "no label" (for the manifest).
        model_builder: ``(name in cnnkit.models.MODELS, keyword arguments)`` that rebuild ``model``, so that
            ``cnnkit predict`` can use the run; without it a ``model`` of your own is saved (weights and
            manifest) but must be rebuilt by you.
        sample_names: A name per held-out item (its file name) for the report's rows; default the file names
            when ``heldout`` reads files (:func:`_item_names`), else ``"held-out <i>"``.
        band_names: A name per input channel, for the report (the last is the validity band when
            ``preprocessing`` says so).
        rgb_bands: Channels the report draws as red, green, blue (see :func:`cnnkit.report.write_report`).
        recipe: What the caller knows of how the data was read, for the report's *How this run was made*
            (:class:`cnnkit.report.RunRecipe` fields): ``data`` (e.g. the folder), ``split``, ``bands``, ``nodata``,
            ``nodata_share``, ``unlabelled_share``. Without it the section says "data sets given in Python" and
            measures the shares itself (no data: where the validity band is 0).
        statistics: What a pass over the items ``train`` wraps already found (:func:`cnnkit.data.data_statistics`
            with ``num_classes`` and this ``weighting``, as :func:`train_folder` computes it): its class counts replace
            this function's own pass over ``train`` (:func:`~cnnkit.app.workflow.count_classes`), and its class
            weights are used when no class is rare. With rare classes the weights are estimated on the images and
            their crops (what the loss sees), a pass of its own. Default: counted here.

    Returns:
        A :class:`SegmentationRun` on rank 0; ``None`` in the other processes of a distributed run.

    Raises:
        ShapeError: a bad argument, a label out of range, or sizes the default network cannot take.
        CnnkitError: ``out`` holds files and neither flag allows using it, or its ``last.ckpt`` is damaged.
    """
    import lightning as L

    start = time.perf_counter()
    s = settings_for("images", settings, options)
    epochs, seed, device, batch_size, lr, scheduler = s.epochs, s.seed, s.device, s.batch_size, s.lr, s.scheduler
    width, crop_size, rare_below, weighting, log = s.width, s.crop_size, s.rare_below, s.weighting, s.log
    overwrite, resume, devices, num_nodes, precision = s.overwrite, s.resume, s.devices, s.num_nodes, s.precision
    rank_zero = launched_as_rank_zero()
    if not rank_zero:  # the other processes of a distributed run print nothing (their errors excepted)
        log = silent
    names = check_class_names(class_names, num_classes)
    if model_builder is not None and (not isinstance(model_builder, tuple) or len(model_builder) != 2
                                      or model_builder[0] not in MODELS or not isinstance(model_builder[1], dict)):
        raise ShapeError(f"model_builder must be (name, kwargs) with a name from {sorted(MODELS)}. "
                         f"Received model_builder={model_builder!r}.")
    if model is not None and (model_spec is not None or weights is not None):
        raise ShapeError("model excludes model_spec and weights: give a network of your own, or name one (and its "
                         "weights). Received both.")
    spec = network_spec(model_spec, width) if model is None else None
    defaults = training_defaults(spec) if spec is not None else training_defaults(network_spec(None, width))
    family = "your network" if spec is None else f"the {family_of_label(spec)} family"
    has_encoder = spec.library == "smp" if spec is not None else isinstance(getattr(model, "encoder", None), nn.Module)
    chosen = training_options(defaults, family, has_encoder=has_encoder, pretrained=weights is not None,
                              warmup_epochs=s.warmup_epochs, encoder_lr_factor=s.encoder_lr_factor,
                              freeze_encoder_epochs=s.freeze_encoder_epochs,
                              accumulate_grad_batches=s.accumulate_grad_batches)
    options = {**(model_options(spec) if spec is not None else {}), **(run_options or {})}
    multiple = size_multiple(spec) if spec is not None else 1
    if len(train) < 1 or len(heldout) < 1:
        raise ShapeError(f"train and heldout must not be empty. Received {len(train)} and {len(heldout)} items.")
    accelerator, lightning_devices, processes = check_scaling(device, devices, num_nodes, s.strategy, precision)
    if rank_zero:  # Lightning's "ddp" starts the other processes inside fit, after rank 0 prepared the folder
        check_run_dir(out, overwrite=overwrite, resume=resume)
    if resume:
        check_run_options(out, options)
    sizes, heldout_sizes = spatial_sizes(train), spatial_sizes(heldout)
    if crop_size % multiple:
        raise ShapeError(f"crop_size must be a multiple of {multiple} for {spec.label()}. Received "
                         f"crop_size={crop_size}.")
    if any(v % multiple for s in sizes + heldout_sizes for v in s):
        odd = next(s for s in sizes + heldout_sizes if any(v % multiple for v in s))
        raise ShapeError(f"The network {spec.label()} needs heights and widths divisible by {multiple}. Received an "
                         f"image of {odd[0]}×{odd[1]}: wrap the data set in cnnkit.data.Standardized(..., "
                         f"multiple_of={multiple}), or pass a model of your own.")
    in_channels = torch.as_tensor(train[0][0]).shape[0]
    data_bands = None
    if band_names is not None:
        validity = bool((preprocessing or {}).get("validity_band", True))
        data_bands = list(band_names[:-1] if validity else band_names)
    net = model
    if model is None and weights is not None:  # before anything is written: weights that do not fit leave no run
        torch.manual_seed(seed)
        net = build_network(spec, in_channels, num_classes, weights, data_bands, log)
    torch.manual_seed(seed)

    has_validity = bool((preprocessing or {}).get("validity_band"))
    if statistics is None:
        counted = count_classes(train, num_classes, kind=IMAGES, validity_band=has_validity)
    else:  # the caller's pass (unpadded pixels: no data and padding are not counted as pixels here)
        if statistics.class_counts is None or len(statistics.class_counts) != num_classes:
            raise ShapeError(f"statistics must count the {num_classes} classes (data_statistics(..., num_classes="
                             f"{num_classes})). Received class_counts={statistics.class_counts}.")
        counted = ClassCounts(statistics.class_counts.to(torch.float64), statistics.unlabelled + statistics.missing,
                              statistics.missing, statistics.pixels)
        if counted.counts.sum() == 0:
            raise ShapeError("The training labels hold no labelled pixel (all are -100).")
    share, majority, rare = counted.share, counted.majority, counted.rare(rare_below)
    log(f"data: {len(train)} training and {len(heldout)} held-out images, {in_channels} channels, sizes "
        f"{min(min(s) for s in sizes)}–{max(max(s) for s in sizes)} px; "
        + "; ".join(f"'{names[k]}' {100 * share[k]:.2f} %" for k in range(num_classes)) + " of labelled pixels")

    parts, part_sizes = [train], list(sizes)
    if rare:
        crops = RareClassCrops(train, crop_size=crop_size, class_ratios={k: s.rare_share / len(rare) for k in rare},
                               generator=torch.Generator().manual_seed(seed))
        parts.append(crops)
        part_sizes += [(crop_size, crop_size)] * len(crops)
        log(f"rare classes (< {100 * rare_below:g} %): " + ", ".join(names[k] for k in rare)
            + f"; {len(crops)} crops of {crop_size}×{crop_size} per epoch")
    # The weights are estimated on what the loss sees in an epoch, crops included: the crops already raise the
    # rare classes' share, and weights from the images alone would count that boost twice. Without crops, the
    # caller's pass over the images gave them (the same counts: padding and no data are -100 in both).
    mixed = ConcatDataset(parts)
    if statistics is not None and statistics.class_weight is not None and not rare:
        weight = statistics.class_weight
    else:
        weight = class_weights((label for _, label in mixed), num_classes, weighting)
    log(f"class weights ({weighting.replace('_', ' ')}, images{' and crops' if rare else ''}): "
        + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weight.tolist())))
    # The global batches, each process its share (in one process: BucketBatchSampler's batches, a short last batch
    # of fewer than batch_size / 2 samples merged into another). Checked for the process count before anything is
    # written.
    sampler = DistributedBucketSampler(part_sizes, batch_size, shuffle=True, seed=seed)
    val_sampler = DistributedBucketSampler(heldout_sizes, batch_size, shuffle=False)
    # The BucketBatchSampler that stood here drew its (unused) seed from the global generator; the same draw keeps
    # the random network built below, and so every earlier run (the demo's 0.917), as it was.
    torch.randint(0, 2**62, ())
    sampler.check_world_size(processes)
    val_sampler.check_world_size(processes)
    train_loader = DataLoader(mixed, batch_sampler=sampler, collate_fn=collate_padded)
    val_loader = DataLoader(heldout, batch_sampler=val_sampler, collate_fn=collate_padded)
    if rank_zero:  # the run folder: rank 0 only; the other processes find it written when Lightning starts them
        out = prepare_run_dir(out, overwrite=overwrite, resume=resume, log=log)
        if not resume:
            write_run_options(out, options)
    out = Path(out)
    bucketed, randomly = padding_shares(sizes, batch_size, seed)

    class _NewCrops(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if rare:
                crops.set_epoch(trainer.current_epoch)

    if net is None:  # random weights: built here, where the seeded generator has always stood for this network
        net = build_network(spec, in_channels, num_classes, None, None, log)
    lr, lr_source = learning_rate(lr, defaults.lr, family)
    log(f"training: AdamW, learning rate {lr:g} ({lr_source}), weight decay {defaults.weight_decay:g}, "
        f"{scheduler or 'constant'} schedule" + (f"; {chosen.text()}" if chosen.text() else ""))
    task = SegmentationTask(net, num_classes, class_weight=weight, masked_input=True, lr=lr,
                            weight_decay=defaults.weight_decay, scheduler=scheduler, class_names=names,
                            **chosen.task_kwargs())
    first_conv = next((name for name, m in net.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))), None)
    callbacks: list = [_NewCrops(), DivergenceStop(lr)]
    if first_conv is not None:
        callbacks.append(FilterEvolutionCallback(first_conv, every_n_steps=max(1, epochs * len(sampler) // 8)))
    if resume:
        log(f"resuming from {out / 'checkpoints' / 'last.ckpt'}")
    trainer = fit(task, train_loader, val_loader, run_dir=out, max_epochs=epochs, resume="auto" if resume else None,
                  accelerator=accelerator, devices=lightning_devices, num_nodes=num_nodes, strategy=s.strategy,
                  precision=precision, progress=s.progress, callbacks=callbacks, enable_model_summary=False,
                  num_sanity_val_steps=0, quiet=s.quiet, log=log if s.epoch_lines else None,
                  check_val_every_n_epoch=validation_period(s.val_every, epochs),
                  accumulate_grad_batches=chosen.accumulate_grad_batches)
    if not trainer.is_global_zero:  # evaluation, report, weights and manifest: rank 0 only
        return None
    if precision is not None and precision.endswith("-true"):
        net.float()  # "64-true", "16-true" … converted the network; predict and the report read float32
    net.to(torch.device(device))

    result = evaluate(net, heldout, num_classes, batch_size, device)
    baseline = majority_baseline(majority, heldout, num_classes)
    iou, baseline_iou = [float(v) for v in result["iou"]], [float(v) for v in baseline["iou"]]
    mean_iou, baseline_mean = float(result["mean_iou"]), float(baseline["mean_iou"])
    samples = [(image.to(device), label) for image, label in _report_samples(heldout)]
    names_of_items = list(sample_names) if sample_names is not None else _item_names(heldout)
    if names_of_items is None or len(names_of_items) < len(samples):
        names_of_items = [f"held-out {i}" for i in range(len(samples))]
    run_recipe = RunRecipe(
        data=(recipe or {}).get("data", "data sets given in Python"),
        split=(recipe or {}).get("split", f"{len(heldout)} held-out items given"),
        band_names=list(band_names) if band_names is not None else None, bands=(recipe or {}).get("bands"),
        nodata=(recipe or {}).get("nodata", "validity band 0" if has_validity else "none"), ignore_index=ignore_index,
        network=spec.label() if spec is not None else f"{type(net).__name__} (your network)",
        encoder=spec.encoder if spec is not None else None,
        weights=os.fspath(weights) if weights is not None else "random", epochs=epochs, batch_size=batch_size,
        lr=lr, lr_source=lr_source, schedule=scheduler or "constant",
        options=chosen.rows(),
        nodata_share=(recipe or {}).get("nodata_share", counted.missing / counted.pixels if has_validity else None),
        unlabelled_share=(recipe or {}).get("unlabelled_share", counted.unlabelled / counted.pixels), seed=seed)
    sections = [
        recipe_section(run_recipe),
        data_section(sizes, bucketed, randomly, names, share, weight.tolist(), rare, batch_size),
        evaluation_section(names, iou, baseline_iou, mean_iou, baseline_mean, majority,
                           time.perf_counter() - start, len(heldout)),
    ]
    report = write_report(out, model=net, samples=samples, class_names=names, title=title, sections=sections,
                          sample_names=names_of_items[:len(samples)], band_names=band_names, rgb_bands=rgb_bands,
                          validity_band=bool((preprocessing or {}).get("validity_band")))
    write_manifest(out, net, spec=spec, in_channels=in_channels, num_classes=num_classes,
                   builder=model_builder[0] if spec is None and model_builder else None,
                   builder_args=model_builder[1] if spec is None and model_builder else None,
                   preprocessing=preprocessing, class_names=names, ignore_index=ignore_index,
                   palette=[DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)] for k in range(num_classes)])
    return SegmentationRun(
        report=report, mean_iou=mean_iou, baseline_mean_iou=baseline_mean, iou=iou, baseline_iou=baseline_iou,
        class_names=names, class_share=share, class_weight=weight.tolist(), rare_classes=rare,
        padding_bucketed=bucketed, padding_random=randomly, sizes=sizes, majority=majority,
        seconds=time.perf_counter() - start,
    )


@_ranks_stop_together
def train_folder(
    root: str | os.PathLike,
    out: str | os.PathLike = "cnnkit-run",
    *,
    images: str = "images",
    masks: str = "masks",
    heldout: str | os.PathLike | None = None,
    heldout_fraction: float = 0.2,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    nodata: float | None = None,
    bands: Sequence[int | str] | None = None,
    **kwargs,
) -> SegmentationRun:
    """:func:`train_segmentation` on a folder of images and label masks (``cnnkit train``).

    Reads ``root/images`` and ``root/masks`` with :class:`~cnnkit.data.SegmentationFolder` (PNG or
    multi-band TIFF, any sizes), holds out a random ``heldout_fraction`` of the images (or uses the folder
    ``heldout`` with the same layout), and wraps both in :class:`~cnnkit.data.Standardized` with the
    training split's band statistics, a validity band for missing pixels (NaN, ±inf or ``nodata``) and
    sizes rounded up to a multiple of 4.

    Args:
        root: The data folder.
        out: Run folder (report in ``out/report/report.html``).
        images, masks: Sub-folders of ``root`` (and of ``heldout``).
        heldout: A separate held-out folder; if given, ``heldout_fraction`` is not used.
        heldout_fraction: Share of ``root``'s images held out (at least one image each side).
        num_classes: Number of classes (default: the largest label found + 1).
        class_names: A name per class.
        ignore_index: A mask value meaning "not labelled" (e.g. 255), read as −100.
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        bands: Bands to keep, in order (default all): indices counted from 0, or names that each TIFF's band
            descriptions declare (``["red", "green", "nir"]``, case-insensitive; see
            :class:`~cnnkit.data.SegmentationFolder`). The manifest records the indices of the first image.
        settings (or its fields as keywords, ``seed`` and ``log`` among them): how the run trains; the
            settings' ``seed`` also draws the held-out split, and ``log`` gets the folder's lines.
        kwargs: Further options of :func:`train_segmentation`: ``settings`` and its fields by name (``epochs``,
            ``device``, ``width`` …), ``model_spec``, ``weights``, ``band_names`` (the data bands, for a pretrained
            first layer) …. With ``weights`` a run
            folder and no ``model_spec``, the run's network is fine-tuned.

    The cheap checks come first, before any pass over the data: the network's names and arguments, the training
    options (:func:`cnnkit.app.workflow.training_options`), ``out`` (empty, or a run to ``resume`` whose recorded
    options these must equal), the device and the process count (:func:`check_scaling`), and every image against its
    mask from their headers (:meth:`~cnnkit.data.SegmentationFolder.check_pairs`: sizes, CRS and transform). Then one
    streaming pass over the training split (:func:`cnnkit.data.data_statistics`) gives the band statistics, the class
    counts, the no-data and unlabelled counts and the class weights; with rare classes the weights are estimated
    again on the images and their crops (what the loss sees). Entries of the folders left out are named in ``log``.
    Every process of a distributed run reads the folder itself: the split, the band statistics and the class weights
    are computed from the same files in the same order, the same on every process; rank 0 alone prints and writes.
    """
    from cnnkit.data import SegmentationFolder, Standardized, data_statistics

    settings = pop_settings("images", kwargs)
    seed, log = settings.seed, settings.log
    model_spec = kwargs.pop("model_spec", None)
    weights = kwargs.get("weights")
    if model_spec is None and weights is not None:
        model_spec = spec_of_weights(weights)
    spec = network_spec(model_spec, settings.width)
    multiple = size_multiple(spec)
    run_options = {"--nodata": nodata, "--bands": list(bands) if bands is not None else None,
                   "--ignore-index": ignore_index}
    check_scaling(settings.device, settings.devices, settings.num_nodes, settings.strategy, settings.precision)
    training_options(training_defaults(spec), f"the {family_of_label(spec)} family", has_encoder=spec.library == "smp",
                     pretrained=weights is not None, warmup_epochs=settings.warmup_epochs,
                     encoder_lr_factor=settings.encoder_lr_factor,
                     freeze_encoder_epochs=settings.freeze_encoder_epochs,
                     accumulate_grad_batches=settings.accumulate_grad_batches)  # checked before any data pass
    if not launched_as_rank_zero():  # a process Lightning's "ddp" started: rank 0 checked and wrote the run folder
        log = silent
    else:
        check_run_dir(out, overwrite=settings.overwrite, resume=settings.resume)
    if settings.resume:
        check_run_options(out, {**model_options(spec), **run_options})
    data_bands = kwargs.pop("band_names", None)
    folder = SegmentationFolder(root, images, masks, bands=bands, ignore_index=ignore_index, log=log)
    folder.check_pairs()  # headers only: a mismatched pair is refused before any pixel is decoded
    if heldout is not None:
        held = SegmentationFolder(heldout, images, masks, bands=bands, ignore_index=ignore_index, log=log)
        held.check_pairs()
        train_part, held_part = folder, held
        split = f"held-out folder {str(heldout)!r}"
    else:
        train_part, held_part, split = holdout_split(folder, heldout_fraction, seed, "image")
    if num_classes is None:
        present = torch.unique(torch.cat([part.label(i).flatten().unique() for part in (train_part, held_part)
                                          for i in range(len(part))]))
        present = present[present != IGNORE_INDEX]
        found = int(present.max()) if present.numel() else -1
        if found < 1:
            raise ShapeError(f"The masks in {str(root)!r} hold fewer than 2 classes (largest label {found}); "
                             "give num_classes if classes are missing from the masks.")
        if found >= 32 and present.numel() <= (found + 1) // 2:
            below = present[present < found]
            raise ShapeError(
                f"The masks in {str(root)!r} hold the labels {_ranges(below.tolist())} and {found}: {found + 1} "
                f"classes, most of them absent. If {found} marks pixels without a label, pass ignore_index={found} "
                f"(--ignore-index {found}); if the classes are real, pass num_classes={found + 1} (--num-classes).")
        num_classes = found + 1
    log(f"folder {str(root)!r}: {len(folder)} images, {num_classes} classes; {split}")
    declared = folder.declared_nodata()
    if declared["images"] or declared["masks"]:
        log("nodata declared by the files: images " + (", ".join(f"{v:g}" for v in declared["images"]) or "none")
            + " (no data, left out); masks " + (", ".join(f"{v:g}" for v in declared["masks"]) or "none")
            + " (unlabelled)")
    if data_bands is None and folder.band_names is not None:
        data_bands = list(folder.band_names)
        log("band names (the files' band descriptions or colour interpretation): " + ", ".join(data_bands))
    # One streaming pass over the training split: band statistics, class counts, class weights (used as they are
    # when no class is rare, see train_segmentation), no-data and unlabelled pixels.
    found = data_statistics(train_part, num_classes, nodata=nodata, weighting=settings.weighting)
    train = Standardized(train_part, found.mean, found.std, nodata=nodata, multiple_of=multiple)
    held = Standardized(held_part, found.mean, found.std, nodata=nodata, multiple_of=multiple)
    log("band mean " + ", ".join(f"{v:.4g}" for v in train.mean.tolist())
        + "; std " + ", ".join(f"{v:.4g}" for v in train.std.tolist()))
    missing, unlabelled, total = found.missing, found.unlabelled, found.pixels
    nodata_text = f", or {nodata!r}" if nodata is not None else ""
    if declared["images"]:
        nodata_text += ", or the files' declared " + ", ".join(f"{v:g}" for v in declared["images"])
    ignore_text = f" (ignore_index={ignore_index})" if ignore_index is not None else ""
    log(f"training pixels: {total:,}; no data (NaN, ±inf{nodata_text}): {missing:,} ({100 * missing / total:.1f} %); "
        f"unlabelled{ignore_text}: {unlabelled:,} ({100 * unlabelled / total:.1f} %)")
    band_count = SegmentationFolder(root, images, masks, ignore_index=ignore_index, log=silent)[0][0].shape[0]
    preprocessing = {"mean": train.mean.tolist(), "std": train.std.tolist(), "nodata": nodata,
                     "bands": list(folder.band_indices) if bands is not None else None, "multiple_of": multiple,
                     "validity_band": True, "band_count": band_count}
    channels = len(bands) if bands is not None else band_count
    if data_bands is not None and len(data_bands) != channels:
        raise ShapeError(f"--band-names must name the {channels} bands the network reads, in order. Received "
                         f"{len(data_bands)} names: {','.join(map(str, data_bands))}.")
    return train_segmentation(train, held, num_classes, out, settings=settings, class_names=class_names,
                              title=kwargs.pop("title", f"cnnkit train: {Path(root).resolve().name}"),
                              preprocessing=preprocessing, ignore_index=ignore_index, model_spec=spec,
                              run_options=run_options,
                              recipe={"data": str(root), "split": split, "bands": list(bands) if bands is not None
                                      else None, "nodata": f"NaN, ±inf{nodata_text}",
                                      "nodata_share": missing / total, "unlabelled_share": unlabelled / total},
                              band_names=[*data_bands, "validity"] if data_bands is not None else None,
                              statistics=found, **kwargs)


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 4]`` → ``'0–2, 4'``."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}" if start == v else f"{start}–{v}")
            start = None
    return ", ".join(parts) or "none"
