"""The three demos behind ``cnnkit demo``.

* :func:`run_training_demo` (``cnnkit demo``): :func:`train_demo` trains a mask-aware segmentation network on
  the built-in data set, prints the held-out mean IoU next to a majority-class baseline, and writes the HTML
  report. It generates a training and a held-out split of :class:`~cnnkit.data.SyntheticLandCover` (seeds
  ``2·seed`` and ``2·seed + 1``) and hands them to :func:`cnnkit.app.train_segmentation`, the same pipeline
  ``cnnkit train`` runs on a user's folder: class weights, rare-class crops, bucketed masked training,
  held-out IoU against a majority-class baseline, the report, and the manifest ``cnnkit predict`` reads.
* :func:`run_series_demo` (``cnnkit demo --time-series``): :func:`series_demo` trains a series network on
  seeded cloudy crop-type series (:func:`cnnkit.data.crop_series`) through :func:`cnnkit.app.train_series`.
* :func:`run_demo` (``cnnkit demo --shapes``): the seed questions' shapes answered by
  :func:`cnnkit.explainers.explain` and a model summary.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.rule import Rule
from torch import nn

from cnnkit._checks import check_choice, check_int
from cnnkit.app.console import console_log
from cnnkit.app.timeseries import SeriesRun, train_series
from cnnkit.app.train import train_segmentation
from cnnkit.data.synthetic import CLASS_NAMES, SyntheticLandCover
from cnnkit.explainers import explain, summary
from cnnkit.models import TinySegNet
from cnnkit.nn import LocallyConnected2d
from cnnkit.train.rundir import SAMPLES

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_HELDOUT", "DEFAULT_TRAIN", "DEMO_MODEL", "DEMO_NETWORKS", "DEMO_SETTINGS",
           "SEED_QUESTIONS", "run_demo",
           "run_series_demo", "run_training_demo", "series_demo", "train_demo"]

DEFAULT_EPOCHS = 24
"""Training epochs of `cnnkit demo`: held-out mean IoU 0.917 at seed 0 (0.925 with 30, 0.922 with 26 and 28)."""
DEFAULT_TRAIN = 160
DEFAULT_HELDOUT = 32
BAND_NAMES = ("blue", "green", "red", "NIR")
"""The built-in data set's spectral bands (:data:`cnnkit.data.synthetic.SPECTRA`), before its validity band."""
SAMPLE_COUNT = 8
"""Held-out scenes the demo writes into its run folder's ``samples/`` as TIFFs (input for ``cnnkit predict``)."""

# (question, layer, input shape without batch) — the shapes people asked about in the seed questions.
SEED_QUESTIONS: list[tuple[str, nn.Module, tuple[int, ...]]] = [
    ("Keras Conv2D(32, (5, 5)) on a 32×32×3 image: what do its filters look like?",
     nn.Conv2d(3, 32, 5), (3, 32, 32)),
    ("Theano tutorial: why is a 28×28 input 24×24 after a 5×5 filter ('valid')?",
     nn.Conv2d(1, 20, 5), (1, 28, 28)),
    ("… and 32×32 with border_mode='full'?", nn.Conv2d(1, 20, 5, padding=4), (1, 28, 28)),
    ("Convolution1D(111, 5) over 300 channels: why is the kernel (5, 300, 111)?",
     nn.Conv1d(300, 111, 5), (300, 300)),
    ("Dense from 2000 to 4800 units: (4800, 2000) or (2000, 4800)?", nn.Linear(2000, 4800), (2000,)),
    ("LocallyConnected2D, 4 filters 3×3 on 6×6×4: why is the kernel (16, 36, 4)?",
     LocallyConnected2d(4, 4, 3, input_size=(6, 6)), (4, 6, 6)),
]


def run_demo(console: Console | None = None, height: int = 64, width: int = 96) -> None:
    """Print the seed answers and the summary of :class:`TinySegNet` on a 4-band ``height×width`` image."""
    console = console or Console()
    console.print(Rule("cnnkit demo — shapes, explained"))
    for question, layer, shape in SEED_QUESTIONS:
        console.print(f"\n[bold]{question}[/bold]")
        console_log(console)(str(explain(layer, shape)))
    net = TinySegNet(in_channels=4, num_classes=5)
    console.print(Rule(f"A small segmentation network on a 4-band {height}×{width} image"))
    console.print(summary(net, (4, height, width)))


def train_demo(
    out: str | os.PathLike = "cnnkit-demo",
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: str = "cpu",
    n_train: int = DEFAULT_TRAIN,
    n_heldout: int = DEFAULT_HELDOUT,
    progress: bool = True,
    log=print,
    **kwargs,
):
    """Train the demo network on the built-in data set, evaluate it, and write the report into ``out``.

    Args:
        out: Run folder (created). It must be empty or new; pass ``overwrite=True`` to replace an earlier
            run there (only the files cnnkit wrote) or ``resume=True`` to continue it (see
            :func:`~cnnkit.app.train_segmentation`).
        epochs: Training epochs (>= 1).
        seed: Seed of the data, the initial weights and the batch order.
        device: ``"cpu"`` or a CUDA device such as ``"cuda"`` / ``"cuda:0"``.
        n_train, n_heldout: Number of training and held-out scenes.
        progress: Show Lightning's progress bar.
        log: Called with each line of text to print.
        kwargs: Further options of :func:`~cnnkit.app.train_segmentation` (``width``,
            ``batch_size``, ``lr``, ``crop_size``, ``overwrite``, ``resume`` …).

    Returns:
        A :class:`~cnnkit.app.SegmentationRun`.
    """
    check_int(n_train, "n_train", 2)
    check_int(n_heldout, "n_heldout")
    train = SyntheticLandCover(n_train, seed=2 * seed)
    heldout = SyntheticLandCover(n_heldout, seed=2 * seed + 1)
    log(f"built-in data: seeded synthetic land cover, {train.bands} bands + a validity band (0 under clouds)")
    # The scenes come as bands (0 under clouds) + the validity band: what Preprocessing makes of the bands with
    # NaN under clouds, mean 0 and std 1. So `cnnkit predict` on such files sees exactly what training saw.
    preprocessing = {"mean": [0.0] * train.bands, "std": [1.0] * train.bands, "nodata": None, "bands": None,
                     "multiple_of": 4, "validity_band": True, "band_count": train.bands}
    band_names = [*BAND_NAMES[: train.bands], "validity"]
    kwargs.setdefault("rgb_bands", (3, 2, 1) if train.bands == 4 else None)  # false colour: NIR, red, green
    # Validation every other epoch: 12 of the 24 epoch lines show held-out figures, for ~2 s of a ~55 s demo.
    kwargs.setdefault("val_every", 2)
    result = train_segmentation(
        train, heldout, len(CLASS_NAMES), out, class_names=CLASS_NAMES, epochs=epochs, seed=seed, device=device,
        title="cnnkit demo: TinySegNet on synthetic land cover with clouds", progress=progress, log=log,
        preprocessing=preprocessing, sample_names=[sample_name(i) for i in range(len(heldout))],
        band_names=band_names, recipe={"data": f"built-in synthetic land cover ({n_train} scenes, seed {2 * seed})",
                                       "split": f"{n_heldout} generated held-out scenes (seed {2 * seed + 1})",
                                       "nodata": "clouds (validity band 0)"}, **kwargs,
    )
    written = write_samples(heldout, Path(out) / SAMPLES, count=min(SAMPLE_COUNT, len(heldout)))
    log(f"held-out scenes to try `cnnkit predict` on: {written[0].parent}/ ({len(written)} TIFFs, NaN under clouds)")
    return result


def sample_name(index: int) -> str:
    """The file name of held-out scene ``index`` (``samples/heldout_NN.tif``; the report's rows use it too)."""
    return f"heldout_{index:02d}.tif"


def write_samples(dataset: SyntheticLandCover, folder: Path, count: int) -> list[Path]:
    """The first ``count`` scenes of ``dataset`` as float32 (H, W, C) TIFFs with NaN under clouds."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image, _ = dataset[index]
        bands = image[:-1].masked_fill(image[-1:] == 0, float("nan"))
        path = folder / sample_name(index)
        tifffile.imwrite(path, bands.permute(1, 2, 0).numpy(), photometric="minisblack", planarconfig="contig")
        paths.append(path)
    return paths


def run_training_demo(
    out: str | os.PathLike = "cnnkit-demo",
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    console: Console | None = None,
    **kwargs,
):
    """Run :func:`train_demo` and print the report's path, the time and both mean IoUs.

    ``kwargs`` go to ``train_demo`` (``n_train``, ``n_heldout``, ``width``, ``progress`` …). Returns its
    :class:`~cnnkit.app.SegmentationRun`.
    """
    console = console or Console()
    console.print(Rule("cnnkit demo — mask-aware segmentation of synthetic land cover with clouds"))
    log = console_log(console)
    result = train_demo(out, epochs=DEFAULT_EPOCHS if epochs is None else epochs, seed=seed, device=device, log=log,
                        **kwargs)
    console.print(Rule("result"))
    for line in result.lines():
        log(line)
    return result


# -- the time-series demo ----------------------------------------------------------------------------------------

DEMO_TRAIN = 192
DEMO_HELDOUT = 16
DEMO_EPOCHS = 18
DEMO_SETTINGS = {"crop_size": 24, "crops_per_series": 1, "batch_size": 8, "val_every": 6, "weighting": None,
                 "rare_share": 0.05}
"""The demo's training, whichever the network: chosen by CPU time on 2 cores and held-out IoU on seeds 2 and 4,
the hardest (see ``docs/timeseries.md``). 192 series × 1 crop × 18 epochs costs what 48 × 2 × 36 did (432 steps)
and overfits less (the former fitted its 48 series to a training loss of 0.01). No class weights and 5 % of the
crops on the rare class: the rare class (fallow; 171 held-out pixels for seed 2) was over-predicted on pixels with
few clear dates, its IoU falling to 0.1–0.3 with ENet's weights or 20 % of the crops."""
DEMO_NETWORKS = {
    "SeriesSegNet": ({"width": 8, "hidden": 16, "kernel_size": 1, "harmonics": 2, "phasors": 8, "context": 7}, 1e-2,
                     DEMO_EPOCHS),
    "UTAE": ({"encoder_widths": [16, 16], "d_model": 64, "num_heads": 4, "encoding": "modulate", "basis": "harmonic",
              "period": 365, "harmonics": 2, "phasors": 8}, 3e-3, 40),
}
"""The time-series demo's networks by ``--model`` name: ``(the network's arguments, learning rate, epochs)``
(UTAE was still learning after 18 epochs: 0.777 / 0.752 on seeds 1 / 2, 0.881 / 0.810 after 30; with
``harmonics=2`` its five-seed mean was 0.909 after 30 epochs and 0.931–0.937 after 40). Both read the
acquisition days through harmonics of the season (0, 1 and 2 cycles a year), as the demo's crops differ only
by their rhythm over the season."""
DEMO_MODEL = "SeriesSegNet"
"""The time-series demo's default network."""
NETWORK_NAMES = {"SeriesSegNet": "a ConvLSTM", "UTAE": "U-TAE (temporal attention)"}


def series_demo(
    out: str | os.PathLike = "cnnkit-demo-series",
    *,
    epochs: int | None = None,
    seed: int = 0,
    n_train: int = DEMO_TRAIN,
    n_heldout: int = DEMO_HELDOUT,
    model: str = DEMO_MODEL,
    log: Callable[[str], None] = print,
    **kwargs,
) -> SeriesRun:
    """``cnnkit demo --time-series``: :func:`train_series` on seeded synthetic crop-type series with clouds.

    The training and held-out splits are :func:`cnnkit.data.crop_series` (seeds ``2·seed`` and ``2·seed + 1``):
    6–24 dates, 32–64 px a side, about 30 % of every date under cloud (NaN), unlabelled field borders and
    fields, and a rare class; the crops differ only by the rhythm of their bands over the season, so a
    single date cannot tell them apart.

    Args:
        out: Run folder.
        epochs: Training epochs (``None``: the network's, :data:`DEMO_NETWORKS`).
        seed: Seed of the data and the training.
        n_train, n_heldout: Number of training and held-out series.
        model: The network, a name of :data:`DEMO_NETWORKS` (``"SeriesSegNet"``: the ConvLSTM; ``"UTAE"``).
        log: Called with each line of text.
        kwargs: Further options of :func:`train_series` (they override :data:`DEMO_SETTINGS` and the network's
            entry of :data:`DEMO_NETWORKS`; ``model_spec`` replaces the network).

    Examples:
        >>> series_demo("/tmp/x", model="ConvLSTM")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: Unknown model 'ConvLSTM'. Expected one of ('SeriesSegNet', 'UTAE').
    """
    from cnnkit.data.series import SeriesItem
    from cnnkit.data.synthetic_series import CROP_CLASSES, crop_series
    from cnnkit.models import spec_for

    check_choice(model, tuple(DEMO_NETWORKS), "model")
    check_int(n_train, "n_train", 2)
    check_int(n_heldout, "n_heldout")

    def items(scenes):
        return [SeriesItem((s, torch.isfinite(s).all(1), y), days=days) for s, y, days in scenes]

    train = items(crop_series(n_train, seed=2 * seed, with_days=True))
    heldout = items(crop_series(n_heldout, seed=2 * seed + 1, with_days=True))
    log("built-in data: seeded synthetic crop-type series, 6 bands + the date's position in the season; the crops "
        "differ only by how their bands oscillate over the season; NaN under clouds")
    args, lr, network_epochs = DEMO_NETWORKS[model]
    epochs = network_epochs if epochs is None else epochs
    settings = {**DEMO_SETTINGS, "lr": lr, "model_spec": spec_for(model, args=args), **kwargs}
    return train_series(train, heldout, len(CROP_CLASSES), out, class_names=CROP_CLASSES, epochs=epochs, seed=seed,
                        log=log, title=f"cnnkit demo --time-series: {NETWORK_NAMES[model]} on cloudy crop-type series",
                        profile_bands=(0, 3), rgb_bands=(0, 2, 4),
                        recipe={"data": f"built-in seeded synthetic crop-type series ({n_train} series, seed "
                                        f"{2 * seed})",
                                "split": f"{n_heldout} generated held-out series (seed {2 * seed + 1})",
                                "nodata": "clouds (NaN)"}, **settings)


def run_series_demo(out: str | os.PathLike = "cnnkit-demo-series", *, epochs: int | None = None,
                    model: str | None = None, console=None, **kwargs) -> SeriesRun:
    """Run :func:`series_demo` and print the held-out mean IoU beside both baselines, the report and the time."""
    from rich.console import Console
    from rich.rule import Rule

    model = DEMO_MODEL if model is None else check_choice(model, tuple(DEMO_NETWORKS), "model")
    console = console or Console()
    console.print(Rule(f"cnnkit demo --time-series — {NETWORK_NAMES[model]} on cloudy crop-type series"))
    log = console_log(console)
    result = series_demo(out, epochs=epochs, model=model, log=log, **kwargs)
    console.print(Rule("result"))
    for line in result.lines():
        log(line)
    return result
