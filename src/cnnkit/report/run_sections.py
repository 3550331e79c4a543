"""The sections a training workflow puts first in its report: how the run was made, the data, the held-out scores.

``cnnkit train`` and ``cnnkit demo`` (images and time series alike) measure; these builders turn what they
measured into :class:`~cnnkit.report.ReportSection` objects for :func:`cnnkit.report.write_report`. They draw and
write text, they never train or evaluate. The series' pictures (pixels over time, frames, label maps) are in
:mod:`cnnkit.report.series_sections`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cnnkit.report.sections import ReportSection

__all__ = ["RunRecipe", "data_section", "evaluation_section", "recipe_section", "series_data_section",
           "series_evaluation_section"]


@dataclass(frozen=True)
class RunRecipe:
    """How a run was made, as its report's first section states it (:func:`recipe_section`).

    Attributes:
        data: Where the data came from (a folder's path, or what built it).
        split: How the held-out part was chosen.
        band_names: The name of each band the network reads, in order (the validity band included where there is
            one); ``None`` when the bands have no names.
        bands: The bands kept from the files (``--bands``), or ``None`` for all.
        nodata: What counts as no data (e.g. ``"NaN, ±inf, or 0"``).
        ignore_index: The label value that means "not labelled" in the files, or ``None``.
        network: The network (``"Unet / resnet18"``).
        encoder: Its encoder, or ``None``.
        weights: Its initial weights (``"random"``, ``"imagenet"``, a path).
        epochs: Training epochs.
        batch_size: Images (or crops) per batch.
        lr: The learning rate.
        lr_source: Where ``lr`` came from (``"--lr"``, ``"default of the convolutional family"``).
        schedule: The learning-rate schedule (``"cosine"``, ``"constant"``).
        options: Further ``(setting, value, source)`` rows: warm-up, encoder learning-rate factor, frozen encoder,
            gradient accumulation …
        nodata_share: Share of the training pixels without data (``None``: not measured).
        unlabelled_share: Share of the training pixels without a label (``None``: not measured).
        seed: The seed of the split, the weights and the batch order.
    """

    data: str
    split: str
    band_names: Sequence[str] | None
    bands: Sequence[int | str] | None
    nodata: str
    ignore_index: int | None
    network: str
    encoder: str | None
    weights: str
    epochs: int
    batch_size: int
    lr: float
    lr_source: str
    schedule: str
    options: Sequence[tuple[str, object, str]] = field(default_factory=tuple)
    nodata_share: float | None = None
    unlabelled_share: float | None = None
    seed: int = 0

    def rows(self) -> list[tuple[str, object, str]]:
        """``(setting, value, where it came from)``, in the section's order."""
        rows: list[tuple[str, object, str]] = [
            ("data", self.data, ""),
            ("held-out split", self.split, ""),
            ("bands", ", ".join(self.band_names) if self.band_names else "unnamed", ""),
            ("bands kept", ", ".join(map(str, self.bands)) if self.bands is not None else "all", ""),
            ("no data", self.nodata, ""),
            ("ignore value", self.ignore_index if self.ignore_index is not None else "none", ""),
            ("network", self.network, ""),
            ("encoder", self.encoder or "none", ""),
            ("initial weights", self.weights, ""),
            ("epochs", self.epochs, ""),
            ("batch size", self.batch_size, ""),
            ("learning rate", self.lr, self.lr_source),
            ("schedule", self.schedule, ""),
            *self.options,
            ("seed", self.seed, ""),
        ]
        if self.nodata_share is not None:
            rows.append(("no-data share", self.nodata_share, "training pixels"))
        if self.unlabelled_share is not None:
            rows.append(("unlabelled share", self.unlabelled_share, "training pixels"))
        return rows


def recipe_section(recipe: RunRecipe) -> ReportSection:
    """*How this run was made*: the data, its bands and missing values, the network and the training settings.

    Each value sits in a cell keyed ``"run/value/<setting>"`` (numbers exact in ``data-value``), where it came
    from in ``"run/from/<setting>"``.
    """
    lost = []
    if recipe.nodata_share is not None:
        lost.append(f"{100 * recipe.nodata_share:.1f} % of the training pixels hold no data")
    if recipe.unlabelled_share is not None:
        lost.append(f"{100 * recipe.unlabelled_share:.1f} % have no label")
    text = (f"{recipe.network} trained for {recipe.epochs} epochs on {recipe.data} at learning rate "
            f"{recipe.lr:g} ({recipe.lr_source})." + (f" {'; '.join(lost)}: neither counts in the loss." if lost
                                                      else ""))
    return ReportSection("How this run was made", text, columns=["setting", "value", "from"], rows=recipe.rows(),
                         id="run")


def data_section(sizes: Sequence[tuple[int, int]], padding_bucketed: float, padding_random: float,
                 class_names: Sequence[str], class_share: Sequence[float], class_weight: Sequence[float],
                 rare: Sequence[int], batch_size: int) -> ReportSection:
    """*Data* of an image run: sizes (scatter, histogram), the padding bucketing saves, class shares and weights."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, middle, right = fig.subplots(1, 3)
    heights, widths = [h for h, _ in sizes], [w for _, w in sizes]
    left.scatter(widths, heights, s=10, alpha=0.6)
    left.set(xlabel="width (px)", ylabel="height (px)", title=f"{len(sizes)} training image sizes")
    middle.hist([heights, widths], bins=min(24, max(4, len(sizes) // 4)), label=["height", "width"])
    middle.set(xlabel="pixels", ylabel="images", title="size histogram")
    middle.legend()
    bars = right.bar(["random\nbatches", "BucketBatch\nSampler"], [100 * padding_random, 100 * padding_bucketed],
                     color=["#c44e52", "#4c72b0"])
    right.bar_label(bars, fmt="%.1f %%")
    right.set(ylabel="padded pixels (%)", title=f"padding per epoch, batches of {batch_size}", ylim=(0, 100))
    rare_text = ", ".join(f"'{class_names[k]}' ({100 * class_share[k]:.2f} %)" for k in rare) or "none"
    text = (f"{len(sizes)} training images, {min(min(s) for s in sizes)}–{max(max(s) for s in sizes)} px a side. "
            f"Bucketing batches of similar sizes pads {100 * padding_bucketed:.1f} % of the pixels of an epoch, "
            f"against {100 * padding_random:.1f} % for random batches. Rare classes: {rare_text}.")
    return ReportSection("Data", text, figures=[(fig, "Image sizes and the padding saved by bucketing")],
                         columns=_CLASS_COLUMNS, rows=_class_rows(class_names, class_share, class_weight, rare),
                         id="data")


def series_data_section(sizes: Sequence[tuple[int, int, int]], bands: int, class_names: Sequence[str],
                        class_share: Sequence[float], class_weight: Sequence[float], rare: Sequence[int],
                        valid_shares: Sequence[Sequence[float]], crop_size: int, crop_count: int,
                        rare_share: float) -> ReportSection:
    """*Series and clouds*: the training series' lengths and sizes, the valid share of every date, the crops, class
    shares and weights. ``sizes`` are ``(T, H, W)``; ``valid_shares`` one list per series, one share per date."""
    from cnnkit.render.series import valid_share_figure

    steps = [s[0] for s in sizes]
    sides = [v for s in sizes for v in s[1:]]
    flat = [v for shares in valid_shares for v in shares]
    text = (f"{len(sizes)} training series of {min(steps)}–{max(steps)} dates, {min(sides)}–{max(sides)} px a side, "
            f"{bands} bands. {100 * (1 - sum(flat) / len(flat)):.1f} % of the pixel-dates hold no data "
            "(cloud, NaN, nodata): they are masked, never filled. Training uses "
            f"{crop_count} crops of {crop_size}×{crop_size} px per epoch with all their dates"
            + (f", {100 * rare_share:.0f} % of them centred on a rare-class pixel "
               f"({', '.join(class_names[k] for k in rare)})" if rare else "")
            + ". The loss weights below were estimated on those crops.")
    return ReportSection("Series and clouds", text,
                         figures=[(valid_share_figure(valid_shares), "Valid share of every date (training series)")],
                         columns=_CLASS_COLUMNS, rows=_class_rows(class_names, class_share, class_weight, rare),
                         id="series-data")


_CLASS_COLUMNS = ["class", "share of labelled pixels", "loss weight", "note"]


def _class_rows(names, share, weight, rare) -> list[tuple]:
    return [(f"{k}: {name}", s, w, "rare" if k in rare else "") for k, (name, s, w) in
            enumerate(zip(names, share, weight))]


def evaluation_section(class_names: Sequence[str], iou: Sequence[float], baseline_iou: Sequence[float],
                       mean_iou: float, baseline_mean: float, majority: int, seconds: float,
                       heldout: int) -> ReportSection:
    """*Held-out evaluation* of an image run: the network against the majority-class baseline, per class."""
    text = (f"Mean IoU on {heldout} held-out images: {mean_iou:.3f} for the network, {baseline_mean:.3f} for a "
            f"baseline that predicts the most frequent training class ('{class_names[majority]}') everywhere. "
            f"Reading the data, training and evaluating took {seconds:.1f} s (this report is written after).")
    return _iou_table(class_names, text, {"network IoU": (iou, mean_iou),
                                          "majority-class IoU": (baseline_iou, baseline_mean)})


def series_evaluation_section(class_names: Sequence[str], iou: Sequence[float], single: Sequence[float] | None,
                              majority_iou: Sequence[float], mean: float, single_mean: float | None,
                              majority_mean: float, majority: int, heldout: int, seconds: float,
                              cpu: float) -> ReportSection:
    """*Held-out evaluation* of a series run: the network, the single-date baseline (when trained) and the
    majority-class baseline, per class."""
    text = (f"Mean IoU on {heldout} held-out series: {mean:.3f} for the network over every date"
            + (f", {single_mean:.3f} for the same network trained on each series' least cloudy date alone"
               if single_mean is not None else "")
            + f", {majority_mean:.3f} for predicting '{class_names[majority]}' (the most frequent training class) "
            f"everywhere. Reading, training and evaluating took {seconds:.1f} s wall, {cpu:.1f} s CPU.")
    columns = {"time series IoU": (iou, mean)}
    if single is not None:
        columns["single-date IoU"] = (single, single_mean)
    columns["majority IoU"] = (majority_iou, majority_mean)
    return _iou_table(class_names, text, columns)


def _iou_table(names, text: str, columns: dict[str, tuple[Sequence[float], float]]) -> ReportSection:
    rows = [(f"{k}: {name}", *(values[k] for values, _ in columns.values())) for k, name in enumerate(names)]
    rows.append(("mean IoU", *(mean for _, mean in columns.values())))
    return ReportSection("Held-out evaluation", text, columns=["class", *columns], rows=rows, id="heldout",
                         replaces=("iou",))
