"""From image time series with clouds to a trained, evaluated per-pixel classifier and its report, in one call.

:func:`train_series` is what ``cnnkit demo --time-series`` runs on its built-in scenes and ``cnnkit train``
runs on a folder of series (:func:`train_series_folder`). It mirrors :func:`cnnkit.app.train_segmentation`:

1. standardise every band with the training split's mean and std over its *valid* pixels (clouds,
   NaN, ``nodata`` and padding never enter the statistics, and become 0 with ``valid = False``);
2. count the labelled pixels of every class (−100 never counts), name the **rare** classes, and train on
   crops in space of every series, all dates kept (:class:`~cnnkit.data.SeriesCrops`: half of them centred
   on a rare-class pixel); class weights (ENet's by default) are estimated on those crops;
3. batch crops of similar length together (:class:`~cnnkit.masking.BucketBatchSampler` on ``(T, H, W)``)
   and pad them in time and space (:func:`~cnnkit.data.collate_series`): a padded date or pixel has
   ``valid = False``, which :class:`~cnnkit.models.SeriesSegNet` treats exactly like a cloud, so each
   series' output equals its output alone (tested to 1e-10 in float64);
4. train :class:`~cnnkit.models.SeriesSegNet` through :class:`~cnnkit.train.series_task.SeriesSegmentationTask`
   and :func:`cnnkit.train.fit` (checkpoints, CSV logs, one line per epoch), with the weighted
   cross-entropy that ignores −100 and, when the items carry one, a per-pixel weight;
5. measure the held-out mean IoU against two baselines measured in the same run: the majority class
   everywhere, and the same network trained the same way on each series' least cloudy date alone;
6. write the report (:func:`cnnkit.report.write_report`) with the time-series sections first, the weights
   and the run manifest (``task = "series-segmentation"``).

Items are ``(series (T, C, H, W) float with NaN allowed, valid (T, H, W) bool, label (H, W) int[, weight
(H, W)])`` with −100 for pixels without a label — what :class:`~cnnkit.data.SeriesFolder` returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cnnkit.app.settings import TrainSettings, pop_settings, settings_for
from cnnkit.app.workflow import (
    SERIES,
    check_class_names,
    choose_accelerator,
    choose_network,
    count_classes,
    evaluate,
    holdout_split,
    learning_rate,
    majority_baseline,
    training_options,
    validation_period,
)
from cnnkit.data.series import SeriesCrops, SeriesFolder, SeriesItem, StandardizedSeries, collate_series
from cnnkit.errors import ShapeError
from cnnkit.losses import PixelCrossEntropy, class_weights
from cnnkit.masking import BucketBatchSampler
from cnnkit.masking.batch import IGNORE_INDEX
from cnnkit.models import ModelSpec, build, family_of, training_defaults
from cnnkit.render.labels import DEFAULT_PALETTE
from cnnkit.report import (
    RunRecipe,
    frames_section,
    maps_section,
    profiles_section,
    recipe_section,
    series_data_section,
    series_evaluation_section,
    write_report,
)
from cnnkit.train import fit
from cnnkit.train.rundir import check_run_dir, prepare_run_dir, write_manifest
from cnnkit.train.series_task import SeriesSegmentationTask

__all__ = ["SeriesRun", "is_series_folder", "least_cloudy_date", "train_series", "train_series_folder"]

@dataclass
class SeriesRun:
    """What :func:`train_series` measured and wrote.

    Attributes:
        report: Path of ``report.html``.
        mean_iou: Held-out mean IoU of the trained network.
        majority_mean_iou: Held-out mean IoU of predicting the most frequent training class everywhere.
        single_date_mean_iou: Held-out mean IoU of the same network trained on each series' least cloudy date
            alone (``None`` when not measured).
        iou, majority_iou, single_date_iou: Per class (NaN: absent from the held-out labels and never predicted).
        class_names, class_share, class_weight, rare_classes: As in :class:`cnnkit.app.SegmentationRun`.
        majority: The majority class.
        valid_share: Share of valid (cloud-free) pixels over all training dates.
        steps: (shortest, longest) series of the training split.
        seconds: Wall time from the start to the written report.
        cpu_seconds: CPU time of this process over the same span (all its threads).
        network: What the printed line calls the network (``"ConvLSTM"`` for SeriesSegNet, else its name).
    """

    report: Path
    mean_iou: float
    majority_mean_iou: float
    single_date_mean_iou: float | None
    iou: list[float]
    majority_iou: list[float]
    single_date_iou: list[float] | None
    class_names: tuple[str, ...]
    class_share: list[float]
    class_weight: list[float]
    rare_classes: list[int]
    majority: int
    valid_share: float
    steps: tuple[int, int]
    seconds: float
    cpu_seconds: float
    extra: dict = field(default_factory=dict)
    network: str = "ConvLSTM"

    def lines(self) -> list[str]:
        """The result as ``cnnkit demo --time-series`` and ``cnnkit train`` print it."""
        names = self.class_names
        lines = [f"held-out mean IoU:             {self.mean_iou:.3f}  ({self.network} over every date, clouds "
                 "masked)"]
        if self.single_date_mean_iou is not None:
            lines.append(f"single-date baseline IoU:      {self.single_date_mean_iou:.3f}  (same network, trained and "
                         "evaluated on each series' least cloudy date alone)")
        lines += [
            f"majority-class baseline IoU:   {self.majority_mean_iou:.3f}  (predicting '{names[self.majority]}' "
            "everywhere)",
            "per-class IoU:                 " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, self.iou)),
            f"report:                        {self.report}",
            f"elapsed:                       {self.seconds:.1f} s wall, {self.cpu_seconds:.1f} s CPU",
        ]
        return lines


def least_cloudy_date(valid: Tensor) -> int:
    """Index of the date with the most valid pixels (the first of equals).

    Examples:
        >>> least_cloudy_date(torch.tensor([[[True, False]], [[True, True]], [[True, True]]]))
        1
    """
    counts = torch.as_tensor(valid).flatten(1).sum(1)
    return int(torch.nonzero(counts == counts.max())[0])


class _SingleDate(Dataset):
    """Each item reduced to its least cloudy date (T = 1), kept in memory (one date per series)."""

    def __init__(self, dataset) -> None:
        self.items = []
        for index in range(len(dataset)):
            item = dataset[index]
            t = least_cloudy_date(item[1])
            days = getattr(item, "days", None)
            self.items.append(SeriesItem((item[0][t : t + 1].clone(), item[1][t : t + 1].clone(), *item[2:]),
                                         days=days[t : t + 1].clone() if days is not None else None))
        self.sizes = [(1, *size[1:]) for size in dataset.sizes]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def _task_batch(items):
    """:func:`collate_series` as the task takes it: ``((x, valid, days), labels[, weight])`` (every series network
    is called ``(x, valid, days)``; SeriesSegNet does not read the days)."""
    batch = collate_series(items)
    x, valid, labels, *weight = batch
    return ((x, valid, batch.days), labels, *weight)


MEGABATCH = 4
"""Batches per chunk of :class:`~cnnkit.masking.BucketBatchSampler` in training: crops of similar length meet in a
batch within a chunk of 4 batches. Chunks over the whole epoch (the default 256) put the same few series
together in every epoch (sorted by T), and the network learnt more slowly."""


def _loader(dataset, sizes, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    sampler = BucketBatchSampler(sizes, batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                                 megabatch=MEGABATCH if shuffle else 256)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_task_batch)


def _train_plain(net: nn.Module, crops: SeriesCrops, weight: Tensor, epochs: int, batch_size: int, lr: float,
                 scheduler: str | None, seed: int, device: str) -> None:
    """The single-date baseline's training: the optimiser, schedule, loss, crops and batches of the main run,
    in a plain loop (it writes nothing into the run folder)."""
    loss_fn = PixelCrossEntropy(class_weight=weight.to(device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sampler = BucketBatchSampler(crops.sizes, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                                 megabatch=MEGABATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(sampler))) \
        if scheduler == "cosine" else None
    net.train()
    for epoch in range(epochs):
        crops.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in sampler:
            inputs, labels, *pixel_weight = _task_batch([crops[i] for i in batch])
            logits = net(*(v.to(device) for v in inputs))
            loss = loss_fn(logits, labels.to(device), *(w.to(device) for w in pixel_weight))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()


def series_spec(model_spec: ModelSpec | dict | None, width: int = 8, hidden: int = 16,
                kernel_size: int = 3) -> ModelSpec:
    """The spec of the series network to train: ``model_spec`` checked (a network of a series family, which takes
    ``(x, valid, days)``), or cnnkit's SeriesSegNet of ``width``, ``hidden`` and ``kernel_size``
    (:func:`cnnkit.app.workflow.choose_network` for series).

    Examples:
        >>> series_spec(None, 8, 16, 1)
        ModelSpec(library='cnnkit', architecture='SeriesSegNet', encoder=None, args={'width': 8, 'hidden': 16, \
'kernel_size': 1})
    """
    return choose_network(model_spec, SERIES, width=width, hidden=hidden, kernel_size=kernel_size)


def train_series(
    train,
    heldout,
    num_classes: int,
    out: str | os.PathLike = "cnnkit-run",
    *,
    settings: TrainSettings | None = None,
    model_spec: ModelSpec | dict | None = None,
    class_names: Sequence[str] | None = None,
    profile_bands: Sequence[int] = (0, 1),
    rgb_bands: Sequence[int] | None = None,
    preprocessing: dict | None = None,
    ignore_index: int | None = None,
    manifest_extra: dict | None = None,
    recipe: dict | None = None,
    title: str | None = None,
    **options,
) -> SeriesRun:
    """Train :class:`~cnnkit.models.SeriesSegNet` on cloudy series, evaluate it and its baselines, write the report.

    Args:
        train, heldout: Data sets of ``(series (T, C, H, W), valid (T, H, W), label (H, W)[, weight (H, W)])``
            with −100 for pixels without a label and NaN allowed where ``valid`` is False (e.g.
            :class:`~cnnkit.data.SeriesFolder`). Series may differ in T and in size.
        num_classes: Number of classes; labels lie in ``[0, num_classes)`` or are −100.
        out: Run folder (see :func:`cnnkit.train.rundir.prepare_run_dir`: never deletes what cnnkit did not write).
        class_names: A name per class.
        settings: How the run trains (:class:`~cnnkit.app.TrainSettings`, the same object as for images; for
            series ``epochs`` defaults to 12, the schedule to constant, the default SeriesSegNet to ``width`` 8,
            ``hidden`` 16, ``kernel_size`` 3; each epoch draws ``crops_per_series`` crops of every training series,
            all dates kept; ``weighting=None`` weighs every class 1; ``single_date_baseline`` also trains the network
            on each series' least cloudy date). Validation runs on whole held-out series and can cost as much as an
            epoch of crops: ``val_every`` 12 of 36 epochs in the demo. Series train in one process.
        options: Fields of :class:`~cnnkit.app.TrainSettings` by name, applied over ``settings``.
        title: The report's title.
        preprocessing: More for the manifest's ``input`` (e.g. ``nodata``, ``band_count``); the band mean and std
            are added.
        ignore_index: The label value that meant "no label" in the user's files, for the manifest.
        profile_bands: Bands drawn in the report's pixel profiles.
        rgb_bands: Bands shown as R, G, B in the report's frame strip (default the first three).
        manifest_extra: More keys for the manifest's ``series`` object (e.g. which series were held out).
        model_spec: The network by name (:func:`series_spec`: a network of a series family); default SeriesSegNet
            with ``width``, ``hidden`` and ``kernel_size``. Built by :func:`cnnkit.models.build`, recorded in the
            manifest. A series network has no ``encoder``: the settings' ``freeze_encoder_epochs`` and
            ``encoder_lr_factor`` are refused. The single-date baseline trains in a plain loop without warm-up or
            accumulation.
        recipe: What the caller knows of how the data was read, for the report's *How this run was made*: ``data``,
            ``split``, ``nodata`` (see :func:`cnnkit.app.train_segmentation`).

    Returns:
        A :class:`SeriesRun`.
    """
    import lightning as L

    start, cpu_start = time.perf_counter(), time.process_time()
    s = settings_for("series", settings, options)
    epochs, seed, device, batch_size, lr, scheduler = s.epochs, s.seed, s.device, s.batch_size, s.lr, s.scheduler
    crop_size, crops_per_series, rare_share, weighting, log = (s.crop_size, s.crops_per_series, s.rare_share,
                                                               s.weighting, s.log)
    names = check_class_names(class_names, num_classes)
    if len(train) < 1 or len(heldout) < 1:
        raise ShapeError(f"train and heldout must not be empty. Received {len(train)} and {len(heldout)} items.")
    spec = series_spec(model_spec, s.width, s.hidden, s.kernel_size)
    defaults = training_defaults(spec)
    family = f"the {family_of(spec)!r} family"
    lr, lr_source = learning_rate(None if lr is None or lr == defaults.lr else lr, defaults.lr, family)
    chosen = training_options(defaults, family, has_encoder=False, pretrained=False, warmup_epochs=s.warmup_epochs,
                              encoder_lr_factor=s.encoder_lr_factor,
                              freeze_encoder_epochs=s.freeze_encoder_epochs,
                              accumulate_grad_batches=s.accumulate_grad_batches)
    accelerator, devices = choose_accelerator(device)
    out = prepare_run_dir(out, overwrite=s.overwrite, resume=s.resume, log=log)
    torch.manual_seed(seed)

    raw_heldout = heldout
    train = StandardizedSeries(train)
    heldout = StandardizedSeries(raw_heldout, train.mean, train.std)
    bands = int(train[0][0].shape[1])
    counted = count_classes(train, num_classes, kind=SERIES)
    share, majority, rare = counted.share, counted.majority, counted.rare(s.rare_below)
    valid_shares = [train[i][1].flatten(1).float().mean(1).tolist() for i in range(len(train))]
    steps = [s[0] for s in train.sizes]
    valid_share = sum(v for s in valid_shares for v in s) / sum(len(s) for s in valid_shares)
    log(f"data: {len(train)} training and {len(heldout)} held-out series, {bands} bands, {min(steps)}–{max(steps)} "
        f"dates, {min(min(s[1:]) for s in train.sizes)}–{max(max(s[1:]) for s in train.sizes)} px; "
        f"{100 * (1 - valid_share):.1f} % of pixel-dates without data; "
        + "; ".join(f"'{names[k]}' {100 * share[k]:.2f} %" for k in range(num_classes)) + " of labelled pixels")

    ratios = {k: rare_share / len(rare) for k in rare}
    crops = SeriesCrops(train, crop_size, ratios, crops_per_series, generator=torch.Generator().manual_seed(seed))
    weight = class_weights((item[2] for item in crops), num_classes, weighting) if weighting is not None \
        else torch.ones(num_classes)
    log(f"{len(crops)} crops of {crop_size}×{crop_size} px per epoch, all dates"
        + (f", {100 * rare_share:.0f} % centred on rare classes ({', '.join(names[k] for k in rare)})" if rare else "")
        + f"; class weights ({(weighting or 'none').replace('_', ' ')}): "
        + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weight.tolist())))
    train_loader = _loader(crops, crops.sizes, batch_size, shuffle=True, seed=seed)
    val_loader = _loader(heldout, heldout.sizes, batch_size, shuffle=False)

    class _NewCrops(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            crops.set_epoch(trainer.current_epoch)

    net = build(spec, in_channels=bands, num_classes=num_classes)
    log(f"network: {spec.label()} ({spec.library}{', args ' + str(spec.args) if spec.args else ''}), "
        f"{sum(p.numel() for p in net.parameters()):,} parameters, random weights; AdamW, learning rate {lr:g} "
        f"({lr_source}), {scheduler or 'constant'} schedule" + (f"; {chosen.text()}" if chosen.text() else ""))
    task = SeriesSegmentationTask(net, num_classes, class_weight=weight, lr=lr, weight_decay=1e-4,
                                  scheduler=scheduler, class_names=names, **chosen.task_kwargs())
    if s.resume:
        log(f"resuming from {out / 'checkpoints' / 'last.ckpt'}")
    fit(task, train_loader, val_loader, run_dir=out, max_epochs=epochs, resume="auto" if s.resume else None,
        accelerator=accelerator, devices=devices, progress=s.progress, callbacks=[_NewCrops()],
        enable_model_summary=False, num_sanity_val_steps=0, quiet=s.quiet, log=log if s.epoch_lines else None,
        check_val_every_n_epoch=validation_period(s.val_every, epochs),
        accumulate_grad_batches=chosen.accumulate_grad_batches)
    net.to(torch.device(device))

    # held-out: the series with the most classes first in the report's pictures
    shown = sorted(range(len(heldout)), key=lambda i: -len(torch.unique(heldout[i][2])))[:3]
    predicted: dict[int, Tensor] = {}
    result = evaluate(net, heldout, num_classes, batch_size, device, kind=SERIES, keep=shown, predictions=predicted)
    majority_result = majority_baseline(majority, heldout, num_classes, kind=SERIES)
    single_result = single_predicted = None
    if s.single_date_baseline:
        single_start = time.process_time()
        single_crops = SeriesCrops(_SingleDate(train), crop_size, ratios, crops_per_series,
                                   generator=torch.Generator().manual_seed(seed))
        torch.manual_seed(seed)
        single_net = build(spec, in_channels=bands, num_classes=num_classes).to(device)
        _train_plain(single_net, single_crops, weight, epochs, batch_size, lr, scheduler, seed, device)
        single_predicted = {}
        single_result = evaluate(single_net, _SingleDate(heldout), num_classes, batch_size, device, kind=SERIES,
                                 keep=shown, predictions=single_predicted)
        log(f"single-date baseline: held-out mean IoU {float(single_result['mean_iou']):.3f} "
            f"({time.process_time() - single_start:.1f} s CPU)")

    iou = [float(v) for v in result["iou"]]
    majority_iou = [float(v) for v in majority_result["iou"]]
    single_iou = [float(v) for v in single_result["iou"]] if single_result is not None else None
    mean_iou, majority_mean = float(result["mean_iou"]), float(majority_result["mean_iou"])
    single_mean = float(single_result["mean_iou"]) if single_result is not None else None
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start

    palette = [DEFAULT_PALETTE[k % len(DEFAULT_PALETTE)] for k in range(num_classes)]
    panels = []
    for i in shown:
        panels += [(f"series {i}: true", raw_heldout[i][2]), (f"series {i}: time series", predicted[i])]
        if single_predicted is not None:
            panels.append((f"series {i}: single date", single_predicted[i]))
    example = raw_heldout[shown[0]]
    run_recipe = RunRecipe(
        data=(recipe or {}).get("data", "series given in Python"),
        split=(recipe or {}).get("split", f"{len(heldout)} held-out series given"), band_names=None, bands=None,
        nodata=(recipe or {}).get("nodata", "NaN, ±inf, invalid dates"), ignore_index=ignore_index,
        network=spec.label(), encoder=spec.encoder, weights="random", epochs=epochs, batch_size=batch_size, lr=lr,
        lr_source=lr_source, schedule=scheduler or "constant",
        options=[*chosen.rows(), ("crops per series", crops_per_series, ""), ("crop size", crop_size, "px"),
                 ("single-date baseline", "trained" if s.single_date_baseline else "not trained", "")],
        nodata_share=counted.missing / counted.pixels, unlabelled_share=counted.unlabelled / counted.pixels,
        seed=seed)
    sections = [
        recipe_section(run_recipe),
        series_data_section(train.sizes, bands, names, share, weight.tolist(), rare, valid_shares, crop_size,
                            len(crops), rare_share),
        series_evaluation_section(names, iou, single_iou, majority_iou, mean_iou, single_mean, majority_mean,
                                  majority, len(heldout), seconds, cpu),
        maps_section(panels, names, palette, rows=len(shown)),  # one row per series
        profiles_section(*example[:3], names, palette, [b for b in profile_bands if b < bands] or [0]),
        frames_section(*example[:2], rgb_bands),
    ]
    report = write_report(out, model=None, sections=[s for s in sections if s is not None],
                          title=title or "cnnkit: image time series")
    write_manifest(out, net, spec=spec, in_channels=bands, num_classes=num_classes,
                   preprocessing={**(preprocessing or {}), "kind": "series", "mean": train.mean.tolist(),
                                  "std": train.std.tolist(), "band_count": bands},
                   class_names=names, ignore_index=ignore_index, palette=palette, task="series-segmentation",
                   extra={"series": {"steps": [min(steps), max(steps)], "crop_size": crop_size,
                                                       "heldout_mean_iou": mean_iou,
                                                       "single_date_mean_iou": single_mean,
                                                       "majority_mean_iou": majority_mean,
                                                       **(manifest_extra or {})}})
    return SeriesRun(
        report=report, mean_iou=mean_iou, majority_mean_iou=majority_mean, single_date_mean_iou=single_mean,
        iou=iou, majority_iou=majority_iou, single_date_iou=single_iou, class_names=names, class_share=share,
        class_weight=weight.tolist(), rare_classes=rare, majority=majority, valid_share=valid_share,
        steps=(min(steps), max(steps)), seconds=time.perf_counter() - start,
        cpu_seconds=time.process_time() - cpu_start,
        network="ConvLSTM" if spec.architecture == "SeriesSegNet" else spec.label(),
    )


def is_series_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` looks like a folder of image time series (``series/`` and ``labels/`` sub-folders)."""
    root = Path(root)
    return (root / "series").is_dir() and (root / "labels").is_dir()


def train_series_folder(
    root: str | os.PathLike,
    out: str | os.PathLike = "cnnkit-run",
    *,
    heldout: str | os.PathLike | None = None,
    heldout_fraction: float = 0.2,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    nodata: float | None = None,
    **kwargs,
) -> SeriesRun:
    """:func:`train_series` on a folder of image time series (``cnnkit train`` on ``series/`` + ``labels/``).

    Reads ``root`` with :class:`~cnnkit.data.SeriesFolder` (TIFF stacks in either layout or per-date
    sub-folders; label images or one-hot ``.npy`` with all-zero = no label; NaN, ±inf, ``nodata`` and
    optional ``masks/`` mark invalid pixel-dates) and holds out a random ``heldout_fraction`` of the series
    (or uses the folder ``heldout`` with the same layout).

    Args:
        root: The data folder.
        out: Run folder.
        heldout: A separate held-out folder.
        heldout_fraction: Share of the series held out (at least one each side).
        num_classes: Number of classes (default: the largest label found + 1, or the one-hot depth).
        class_names: A name per class.
        ignore_index: A label-image value meaning "no label" (e.g. 255).
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        settings (or its fields as keywords, ``seed`` and ``log`` among them): how the run trains; the
            settings' ``seed`` also draws the held-out split, and ``log`` gets the folder's lines.
        kwargs: Further options of :func:`train_series`.

    The cheap checks come first, before the folder is read: the network's names (:func:`series_spec`), the training
    options, the device and ``out`` (empty, or a run to ``overwrite`` or ``resume``).
    """
    settings = pop_settings("series", kwargs)
    seed, log = settings.seed, settings.log
    spec = series_spec(kwargs.get("model_spec"), settings.width, settings.hidden,
                       settings.kernel_size)  # the cheap checks first, before the folder is read
    training_options(training_defaults(spec), f"the {family_of(spec)!r} family", has_encoder=False, pretrained=False,
                     warmup_epochs=settings.warmup_epochs, encoder_lr_factor=settings.encoder_lr_factor,
                     freeze_encoder_epochs=settings.freeze_encoder_epochs,
                     accumulate_grad_batches=settings.accumulate_grad_batches)
    choose_accelerator(settings.device)
    check_run_dir(out, overwrite=settings.overwrite, resume=settings.resume)
    folder = SeriesFolder(root, nodata=nodata, ignore_index=ignore_index)
    if heldout is not None:
        train_part = folder
        held_part = SeriesFolder(heldout, nodata=nodata, ignore_index=ignore_index)
        split = f"held-out folder {str(heldout)!r}"
        held_names = [entry.name for entry, _, _ in held_part.samples]
    else:
        train_part, held_part, split = holdout_split(folder, heldout_fraction, seed, "series")
        held_names = [folder.samples[i][0].name for i in held_part.indices]
    if num_classes is None:
        found, depth = -1, 0
        for part in (train_part, held_part):
            for i in range(len(part)):
                label = part[i][2]
                labelled = label[label != IGNORE_INDEX]
                if labelled.numel():
                    found = max(found, int(labelled.max()))
        for _, label_path, _ in folder.samples:
            if label_path.suffix.lower() == ".npy":
                import numpy as np

                shape = np.load(label_path, mmap_mode="r").shape
                depth = max(depth, min(shape[0], shape[-1]))
        num_classes = max(found + 1, depth)
        if num_classes < 2:
            raise ShapeError(f"The labels in {str(root)!r} hold fewer than 2 classes (largest label {found}); give "
                             "num_classes if classes are missing.")
    log(f"folder {str(root)!r}: {len(folder)} series, {num_classes} classes; {split}")
    preprocessing = {"nodata": nodata}
    return train_series(train_part, held_part, num_classes, out, settings=settings, class_names=class_names,
                        title=kwargs.pop("title", f"cnnkit train: {Path(root).resolve().name} (time series)"),
                        preprocessing=preprocessing, ignore_index=ignore_index,
                        manifest_extra={"heldout": held_names},
                        recipe={"data": str(root), "split": split,
                                "nodata": "NaN, ±inf, masks/" + (f", or {nodata!r}" if nodata is not None else "")},
                        **kwargs)
