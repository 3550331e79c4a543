"""The ``cnnkit`` command line: ``demo``, ``train``, ``predict``, ``explain``, ``summary``, ``convert``,
``keras-explain`` and ``report``."""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from cnnkit import __version__
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError

# torch (and everything that imports it) is imported inside the commands that need it, so that `cnnkit --help`
# and `cnnkit --version` answer at once.

__all__ = ["app", "main"]


class _NoFlagTypes:
    """Help without a type column for on/off flags: typer shows ``<bool>`` beside ``--overwrite`` or ``--help``,
    which take no value (an empty metavar hides it; flags never use a metavar otherwise)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:  # typer's options (its own vendored click's), duck-typed
            if getattr(param, "is_flag", False) and not param.metavar:
                param.metavar = ""
        return params


class _Command(_NoFlagTypes, TyperCommand):
    pass


class _Group(_NoFlagTypes, TyperGroup):
    pass


app = typer.Typer(
    help="Convolutional networks on real-world data: shapes explained, exact masks, a look inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)


def _console() -> Console:
    """The terminal's width; 120 columns when the output is a file or a pipe (a log) and COLUMNS is not set."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=120)
    return console


def _log_lines(console: Console) -> bool:
    """Whether ``console`` writes a log, whose long lines are kept whole (``soft_wrap``): the rule of
    :mod:`cnnkit.app.console`, which imports no torch."""
    from cnnkit.app.console import wraps_lines

    return not wraps_lines(console)


def _fail(error: Exception) -> None:
    """Print ``error: …`` on one logical line (the terminal wraps it, not cnnkit) and exit with code 2."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {error}", markup=True, highlight=False)
    raise typer.Exit(code=2)


def _version(value: bool) -> None:
    if value:
        print(f"cnnkit {__version__}")
        raise typer.Exit()


@app.callback(cls=_Group)
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print cnnkit's version and exit."),
) -> None:
    """Convolutional networks on real-world data: shapes explained, exact masks, a look inside."""


_OVERWRITE = ("--out holds an earlier cnnkit run: remove its checkpoints, logs and report (only files cnnkit wrote; "
              "anything else is kept) and train afresh.")
_RESUME = "--out holds an earlier cnnkit run: continue its training from checkpoints/last.ckpt."
_THREADS = ("CPU threads (default: the cores this process may use, less those busy with other work; one thread per "
            "core on a shared machine makes torch wait for preempted threads).")
_VERBOSE = "Show Lightning's own messages and warnings too."


_FREEZE = False
"""Set by :func:`main`: only the ``cnnkit`` process freezes its objects. A command run inside another process
(typer's ``CliRunner`` in the tests) leaves that process's collector as it found it (a pytest process that had
frozen every object of 1,500 tests crashed at exit)."""


def _import_heavy(*modules: str) -> None:
    """Import torch-side libraries with Python's cycle collector paused; in the ``cnnkit`` process (:data:`_FREEZE`)
    exempt them from later collections too.

    torch, Lightning, torchmetrics (and torchvision, sympy, scipy, which they pull in) create millions of objects
    that live until the process exits. Left alone, the collector walks all of them again and again while they
    are imported, and once more at exit: for ``import lightning.pytorch`` on the 2-core benchmark host that was
    9.4 s to import and 2.4 s to exit, against 6.9 s and 0.5 s this way. (``gc.freeze`` moves what exists now into
    a generation the collector does not visit; objects made later are collected as usual. The price: cyclic
    garbage left by those imports is kept, 12,557 objects and about 7 MB for torch and Lightning here.)
    """
    gc.disable()
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        if _FREEZE:
            gc.freeze()
        gc.enable()


_TRAINING = ("torch", "lightning.pytorch")


def _threads(requested: int | None) -> str:
    from cnnkit.app import choose_threads

    return choose_threads(requested)[1]


@app.command(cls=_Command)
def demo(
    out: str = typer.Option("cnnkit-demo", "--out", help="Run folder: logs, checkpoints, report/report.html. Must "
                            "be empty or new, unless --overwrite or --resume."),
    epochs: int = typer.Option(None, min=1, help="Training epochs (default 24; 36 with --time-series)."),
    seed: int = typer.Option(0, help="Seed of the built-in data set, the weights and the batch order."),
    device: str = typer.Option("cpu", help="'cpu', 'cuda' or 'cuda:<index>'."),
    shapes: bool = typer.Option(False, "--shapes", help="Only print the seed questions' shape answers, no training."),
    time_series: bool = typer.Option(False, "--time-series", help="The image time-series demo instead: cloudy "
                                     "crop-type series whose classes only time tells apart, a ConvLSTM, and two "
                                     "baselines (majority class, least cloudy single date)."),
    height: int = typer.Option(64, min=4, help="--shapes: height of the example image."),
    width: int = typer.Option(96, min=4, help="--shapes: width of the example image."),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE),
    resume: bool = typer.Option(False, "--resume", help=_RESUME),
    threads: int = typer.Option(None, min=1, help=_THREADS),
    verbose: bool = typer.Option(False, "--verbose", help=_VERBOSE),
) -> None:
    """Train a mask-aware segmentation network on built-in cloudy multi-band scenes and write an HTML report."""
    _import_heavy(*_TRAINING)
    from cnnkit.app.demo import run_demo, run_training_demo

    try:
        if time_series:
            from cnnkit.app.timeseries import run_series_demo

            console = _console()
            console.print(_threads(threads), markup=False, highlight=False)
            run_series_demo(out, epochs=epochs, seed=seed, device=device, overwrite=overwrite, resume=resume,
                            console=console, quiet=not verbose, progress=console.is_terminal)
        elif shapes:
            run_demo(_console(), height=height, width=width)
        else:
            console = _console()
            console.print(_threads(threads), markup=False, highlight=False)
            run_training_demo(out, epochs=epochs, seed=seed, device=device, overwrite=overwrite, resume=resume,
                              console=console, quiet=not verbose, progress=console.is_terminal)
    except CnnkitError as error:
        _fail(error)


def _csv(text: str | None, name: str, cast=str):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    try:
        return [cast(t) for t in items if t]
    except ValueError:
        message = f"{name} must be a comma-separated list of {cast.__name__}s. Received {name}={text!r}."
        raise ShapeError(message) from None


@app.command(cls=_Command)
def train(
    root: str = typer.Argument(..., help="Data folder with images/ and masks/ (PNG or multi-band TIFF, by stem), or "
                               "a folder of image time series: series/ (T×C×H×W TIFF stacks or per-date folders) and "
                               "labels/ (label images or one-hot .npy), optional masks/."),
    out: str = typer.Option("cnnkit-run", "--out", help="Run folder: logs, checkpoints, report/report.html. Must "
                            "be empty or new, unless --overwrite or --resume."),
    epochs: int = typer.Option(30, min=1, help="Training epochs."),
    seed: int = typer.Option(0, help="Seed of the held-out split, the weights, the crops and the batch order."),
    device: str = typer.Option("cpu", help="'cpu', 'cuda' or 'cuda:<index>'."),
    devices: str = typer.Option("1", "--devices", help="Processes per node: CPU processes (gloo) with --device cpu, "
                                "GPUs with --device cuda; 'auto': every GPU. --batch-size is the global batch, shared "
                                "among them: the weights do not depend on their number (docs/train.md)."),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, help="Machines (under torchrun or SLURM: --nnodes, "
                                  "--nodes)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning's strategy: auto or ddp (the other processes "
                                 "run this command again; ddp_spawn is refused)."),
    precision: str = typer.Option(None, "--precision", help="Lightning's precision: 32-true (default), 64-true, "
                                  "16-mixed, bf16-mixed, 16-true, bf16-true."),
    heldout: str = typer.Option(None, help="A held-out folder with the same layout (default: hold out a share)."),
    heldout_fraction: float = typer.Option(0.2, help="Share of the images held out when no --heldout is given."),
    classes: str = typer.Option(None, help="Class names in label order, comma-separated: water,forest,urban."),
    num_classes: int = typer.Option(None, min=2, help="Number of classes (default: largest label + 1)."),
    ignore_index: int = typer.Option(None, help="Mask value meaning 'not labelled', e.g. 255."),
    nodata: float = typer.Option(None, help="Band value meaning 'no data' (NaN and inf always are)."),
    bands: str = typer.Option(None, help="Band indices to keep, counted from 0, comma-separated: 3,2,1 (default all)."),
    images: str = typer.Option("images", help="Sub-folder of the images."),
    masks: str = typer.Option("masks", help="Sub-folder of the label masks."),
    batch_size: int = typer.Option(8, min=1, help="Images (or crops) per batch."),
    width: int = typer.Option(None, min=1, help="Channels of the network's first stage (default 16; series: 8)."),
    model: str = typer.Option(None, "--model", help="The network: TinySegNet (default), TinyResNet, or an smp "
                              "architecture (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Linknet, PAN, MAnet, PSPNet, …; "
                              "cnnkit models lists them)."),
    encoder: str = typer.Option(None, "--encoder", help="smp's encoder (resnet18, mobilenet_v2, efficientnet-b0, "
                                "tu-<timm model>, …; default the architecture's own, resnet34 for most)."),
    weights: str = typer.Option(None, "--weights", help="Initial weights: imagenet (smp/timm's download and cache), "
                                "a .safetensors/.pt/.pth state dict, a cnnkit run folder (fine-tune it) or a Keras "
                                ".keras/.h5 file. Default: random."),
    model_args: str = typer.Option(None, "--model-args", help="The network's keyword arguments as a JSON object: "
                                   '\'{"decoder_channels": [128, 64, 32, 16, 8]}\' (JSON values only).'),
    band_names: str = typer.Option(None, "--band-names", help="Names of the bands the network reads, in order "
                                   "(blue,green,red,nir): a pretrained RGB first layer gives red, green, blue their "
                                   "filters and other bands their mean (docs/models.md)."),
    lr: float = typer.Option(None, help="AdamW learning rate (default: the network family's, 1e-2 for cnnkit's "
                             "networks, 1e-3 for smp's; shown in the log)."),
    time_series: bool = typer.Option(False, "--time-series", help="Read ROOT as a folder of image time series "
                                     "(series/ and labels/); recognised without this flag too."),
    hidden: int = typer.Option(16, min=1, help="Time series: hidden channels of the ConvLSTM."),
    crop_size: int = typer.Option(32, min=4, help="Time series: side of the training crops (all dates kept)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE),
    resume: bool = typer.Option(False, "--resume", help=_RESUME),
    threads: int = typer.Option(None, min=1, help=_THREADS),
    verbose: bool = typer.Option(False, "--verbose", help=_VERBOSE),
) -> None:
    """Train a mask-aware network on your folder of images and masks (or image time series); write an HTML report."""
    from rich.rule import Rule

    _import_heavy(*_TRAINING)
    from cnnkit.app.console import console_log
    from cnnkit.train.distributed import launched_as_rank_zero

    console = _console()
    log = console_log(console)
    rank_zero = launched_as_rank_zero()  # Lightning's ddp runs this command again in each other process
    try:
        names, band_list = _csv(classes, "classes"), _csv(bands, "bands", int)
        args = _model_args(model_args)
        if encoder is not None and model is None:
            raise ShapeError(f"--encoder needs --model (an smp architecture such as Unet). Received --encoder "
                             f"{encoder} without --model.")
        if names is not None and num_classes is None:
            num_classes = len(names)
        series = time_series or ((Path(root) / "series").is_dir() and (Path(root) / "labels").is_dir())
        if rank_zero:
            console.print(Rule(f"cnnkit train — {root}" + (" (image time series)" if series else "")))
            console.print(_threads(threads), markup=False, highlight=False)
        else:
            _threads(threads)
        scaling = dict(devices=devices.strip().lower(), num_nodes=num_nodes, strategy=strategy, precision=precision)
        common = dict(heldout=heldout, heldout_fraction=heldout_fraction, num_classes=num_classes, class_names=names,
                      ignore_index=ignore_index, nodata=nodata, seed=seed, epochs=epochs, device=device,
                      batch_size=batch_size, lr=lr, overwrite=overwrite, resume=resume, quiet=not verbose,
                      progress=console.is_terminal, log=log)
        if series:
            from cnnkit.app.timeseries import train_series_folder

            given = [f"{name} {value}" for name, value, default in (
                ("--devices", devices, "1"), ("--num-nodes", num_nodes, 1), ("--strategy", strategy, "auto"),
                ("--precision", precision, None)) if value != default]
            if given:
                raise ShapeError(f"{', '.join(given)}: a time-series run trains in one process, for now. Received "
                                 f"{', '.join(given)} with the time-series folder {root!r}.")
            if band_list is not None:
                raise ShapeError("--bands is not supported for time series yet: every band of the stacks is used. "
                                 f"Received --bands {bands}.")
            given = [name for name, value in (("--model", model if model != "SeriesSegNet" else None),
                                              ("--weights", weights), ("--model-args", model_args),
                                              ("--band-names", band_names)) if value is not None]
            if given:
                raise ShapeError(f"{', '.join(given)}: a time-series run trains cnnkit's SeriesSegNet only, for now. "
                                 f"Received {', '.join(given)} with the time-series folder {root!r}.")
            if lr is None:
                from cnnkit.models import spec_for, training_defaults

                common["lr"] = training_defaults(spec_for("SeriesSegNet")).lr
            result = train_series_folder(root, out, width=width or 8, hidden=hidden, crop_size=crop_size, **common)
        else:
            from cnnkit.app.train import train_folder

            spec = None
            if model is not None:
                from cnnkit.models import spec_for

                if width is not None:
                    args = {"width": width, **args}
                spec = spec_for(model, encoder=encoder, args=args)
            elif model_args is not None:
                raise ShapeError("--model-args needs --model. Received --model-args without --model.")
            result = train_folder(root, out, images=images, masks=masks, bands=band_list, width=width or 16,
                                  model_spec=spec, weights=weights, band_names=_csv(band_names, "band-names"),
                                  **scaling, **common)
    except CnnkitError as error:
        _fail(error)
    if result is None:  # a process other than rank 0: rank 0 prints the result and writes the report
        return
    console.print(Rule("result"))
    for line in result.lines():
        log(line)


@app.command(cls=_Command)
def models(
    encoders: str = typer.Option(None, "--encoders", help="List smp's encoders matching this pattern (fnmatch, e.g. "
                                 "'resnet*' or '*efficientnet*'), with Unet's parameter count on each."),
    check: bool = typer.Option(False, "--check", help="Also run the exactness checks on each architecture (a small "
                               "random-weight network: masked() on a padded batch == each image alone; tiled "
                               "predict == whole); slow, a few seconds to a minute per architecture."),
    in_channels: int = typer.Option(5, "--in-channels", min=1, help="Input channels the counts are for (the validity "
                                    "band included)."),
    num_classes: int = typer.Option(5, "--num-classes", min=1, help="Classes the counts are for."),
) -> None:
    """List the networks cnnkit train can build (--model, --encoder), with parameter counts."""
    _import_heavy("torch")
    import fnmatch

    from cnnkit.models import describe_models, list_encoders

    console = _console()
    try:
        if encoders is not None:
            chosen = [name for name in list_encoders() if fnmatch.fnmatch(name, encoders)]
            if not chosen:
                raise CnnkitError(f"--encoders {encoders!r} matches none of smp's {len(list_encoders())} encoders "
                                  "(cnnkit models --encoders '*' lists them; timm's are tu-<name>).")
            rows = [r for r in describe_models(in_channels, num_classes, encoders=chosen, libraries=["smp"])
                    if r.architecture == "Unet"]
        else:
            rows = describe_models(in_channels, num_classes)
        header = f"{'library':<8} {'architecture':<14} {'encoder':<36} {'parameters':>13}  family"
        if check:
            header += "          masked()  tiled"
        console.print(header, markup=False, highlight=False)
        for row in rows:
            count = f"{row.parameters:,}" if row.parameters is not None else "—"
            line = f"{row.library:<8} {row.architecture:<14} {row.encoder or '—':<36} {count:>13}  {row.family:<15}"
            if check and row.parameters is not None:
                from cnnkit.app.networks import check_exactness
                from cnnkit.models import ModelSpec

                found = check_exactness(ModelSpec(row.library, row.architecture, row.encoder))
                line += (f" {_yes_no(found.masked):<9} {_yes_no(found.tiled)}"
                         + (f"  ({found.note})" if found.note else ""))
            console.print((line + (f"  {row.note}" if row.note else "")).rstrip(), markup=False, highlight=False,
                          soft_wrap=True)
    except CnnkitError as error:
        _fail(error)


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("exact" if value else "no")


# `cnnkit predict`'s defaults, also read to tell which image-only options a series run was given
_MAX_PIXELS, _TILE, _BATCH_SIZE = 1_048_576, 512, 8


@app.command(cls=_Command)
def predict(
    run: str = typer.Argument(..., help="A run folder of cnnkit train or cnnkit demo (it holds manifest.json)."),
    inputs: list[str] = typer.Argument(..., help="Images (PNG, JPEG, TIFF), folders of them, or glob patterns; "  # noqa: B008
                                       "for a time-series run: series stacks, per-date folders, or a folder "
                                       "with series/."),
    out: str = typer.Option("predictions", "--out", help="Output folder: STEM_labels.png, STEM_overlay.png, …"),
    tiff: bool = typer.Option(False, "--tiff", help="Also write the label map as a Cloud-Optimized GeoTIFF (input's "
                              "CRS and transform, palette as colour table, class names in its metadata)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Write class probabilities, a COG."),
    confidence: bool = typer.Option(False, "--confidence", help="Write the winning class's probability, a COG."),
    probability_dtype: str = typer.Option("uint8", "--probability-dtype",
                                          help="How probabilities and confidence are stored: uint8 (v/255, the scale "
                                               "recorded in the file) or float16."),
    rgb_bands: str = typer.Option(None, "--rgb-bands", help="Bands drawn as red, green, blue in the overlay, counted "
                                  "from 0 (e.g. 2,1,0); default: the bands the file names red, green, blue."),
    max_pixels: int = typer.Option(_MAX_PIXELS, min=1,
                                   help="Larger images run tile by tile (same result, less memory)."),
    tile: int = typer.Option(_TILE, min=8, help="Tile side in pixels for images over --max-pixels."),
    batch_size: int = typer.Option(_BATCH_SIZE, min=1, help="Images per padded batch."),
    device: str = typer.Option("cpu", help="'cpu', 'cuda' or 'cuda:<index>'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier outputs of the same names in --out."),
    threads: int = typer.Option(None, min=1, help=_THREADS),
) -> None:
    """Apply a trained run to new images and whole scenes: label maps, overlays, probabilities.

    Images are grouped by size and run as padded batches (each result equal to the image alone); images over
    --max-pixels are read, run and written tile by tile with a halo from the network's receptive field, so
    the result is identical to the whole-image pass while memory follows the tile. A run trained on image time
    series predicts whole series (stacks or per-date folders), one label map each (and probabilities or
    confidence on request), without tiling.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    _import_heavy("torch")
    from cnnkit.app.predict import expand_inputs, is_series_run, load_predictor, predict_files, predict_series_files
    from cnnkit.train.rundir import read_manifest

    console = _console()
    try:
        console.print(_threads(threads), markup=False, highlight=False)
        if is_series_run(read_manifest(run)):
            ignored = [flag for flag, given in (("--max-pixels", max_pixels != _MAX_PIXELS), ("--tile", tile != _TILE),
                                                ("--batch-size", batch_size != _BATCH_SIZE)) if given]
            if ignored:
                raise UnsupportedError(f"{', '.join(ignored)}: not available for a run trained on time series "
                                       f"({run!r}), which predicts each series whole (no tiles, one at a time).")
            result = predict_series_files(run, inputs, out, device=device, tiff=True, probabilities=probabilities,
                                          confidence=confidence, overwrite=overwrite,
                                          probability_dtype=probability_dtype)
            names = read_manifest(run)["classes"]["names"]
            console.print(result.summary(names).replace(" images,", " series,"), markup=False, highlight=False,
                          soft_wrap=_log_lines(console))
            extra = "".join(f", STEM_{kind}.tif" for kind, given in (("probabilities", probabilities),
                                                                     ("confidence", confidence)) if given)
            console.print(f"outputs: {out}/ (STEM_labels.png, STEM_labels.tif{extra} per series; 255 = no valid "
                          "date)", markup=False, highlight=False)
            return
        predictor, manifest = load_predictor(run, device=device)
        band_count = (manifest.get("input") or {}).get("band_count")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} images"),
                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                      transient=False) as bar:
            files = expand_inputs(inputs)  # once: the bar's total, and what predict_files reads
            task = bar.add_task("predicting", total=len(files), rate="")

            def progress(images: int, pixels: int) -> None:
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(task, completed=images,
                           rate=f"{images / elapsed:.1f} img/s, {pixels / elapsed / 1e6:.2f} Mpx/s")

            result = predict_files(predictor, files, out, band_count=band_count, tiff=tiff,
                                   probabilities=probabilities, confidence=confidence, max_pixels=max_pixels,
                                   tile=tile, batch_size=batch_size, overwrite=overwrite, progress=progress,
                                   probability_dtype=probability_dtype, rgb_bands=_rgb_bands(rgb_bands))
    except CnnkitError as error:
        _fail(error)
    console.print(result.summary(predictor.class_names), markup=False, highlight=False, soft_wrap=_log_lines(console))
    console.print(f"outputs: {out}/", markup=False, highlight=False)


def _rgb_bands(text: str | None) -> tuple[int, int, int] | None:
    """``--rgb-bands 2,1,0`` → ``(2, 1, 0)``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CnnkitError(f"--rgb-bands must be three band indices counted from 0, e.g. 2,1,0. Received {text!r}.")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


@app.command(cls=_Command)
def explain(
    layer: str = typer.Argument(..., help='A layer as Python call syntax, e.g. "Conv2d(3, 32, 5)".'),
    input: str = typer.Option(..., "--input", "-i", help="One sample's shape, no batch: 3x32x32."),
) -> None:
    """Explain one layer: output shape, weights in torch and Keras layout, parameters, and why.

    Shapes only: the layer is built on the meta device, so no weights or activations are allocated and
    any size is answered at once.
    """
    _import_heavy("torch")
    from cnnkit.explainers import explain as explain_layer

    try:
        from cnnkit.cli.layer_expr import parse_input_shape, parse_layer

        print(explain_layer(parse_layer(layer, device="meta"), parse_input_shape(input)))
    except CnnkitError as error:
        _fail(error)


def _model_args(text: str | None) -> dict:
    """``--model-args``: a JSON object of keyword arguments (parsed as data, never evaluated as code)."""
    if text is None:
        return {}
    import json

    try:
        value = json.loads(text)
    except ValueError as error:
        raise ShapeError(f"--model-args must be a JSON object such as '{{\"in_channels\": 4}}'. Received "
                         f"--model-args={text!r} ({error}).") from None
    if not isinstance(value, dict):
        raise ShapeError(f"--model-args must be a JSON object (keyword arguments). Received --model-args={text!r}.")
    return value


_MODEL_ARGS = 'Keyword arguments for the model function, as a JSON object: \'{"in_channels": 4}\'.'


def load_factory(target: str, *, device: str | None = None, kwargs: dict | None = None):
    """``path/to/file.py:build_model`` or ``package.module:build_model`` → the model it returns.

    The file is the user's own code: it is imported (its top level runs) and the attribute called, with
    the user's rights, exactly as ``python file.py`` would. The attribute may be an ``nn.Module``
    instance, a class, or a function; ``kwargs`` (``--model-args``) are passed to it. With ``device="meta"`` it is
    called under
    ``torch.device("meta")``, so the weights it creates have shapes and no memory (``cnnkit summary``);
    if the factory cannot build on the meta device it is called once more normally.
    """
    source, sep, attr = target.rpartition(":")
    if not sep or not source or not attr:
        raise CnnkitError(f"MODEL must look like path/to/file.py:build_model. Received MODEL={target!r}.")
    if source.endswith(".py") or "/" in source:
        path = Path(source)
        if not path.is_file():
            raise CnnkitError(f"No such file: {source!r} (from MODEL={target!r}).")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise CnnkitError(f"Importing {source!r} (MODEL={target!r}) raised {type(error).__name__}: {error}") \
                from error
    else:
        try:
            module = importlib.import_module(source)
        except Exception as error:
            raise CnnkitError(f"Cannot import {source!r} (MODEL={target!r}): {type(error).__name__}: {error}") \
                from error
    from torch import nn

    if not hasattr(module, attr):
        raise CnnkitError(f"{source!r} has no attribute {attr!r} (MODEL={target!r}). {_defined_names(module, attr)}")
    obj = getattr(module, attr)

    if isinstance(obj, nn.Module) and kwargs:
        raise CnnkitError(f"MODEL={target!r} is a module instance: it takes no --model-args.")
    model = obj if isinstance(obj, nn.Module) else _call_factory(obj, target, device, kwargs or {})
    if not isinstance(model, nn.Module):
        raise CnnkitError(f"MODEL={target!r} gave a {type(model).__name__}, not a torch.nn.Module.")
    return model


def _defined_names(module, wanted: str) -> str:
    """What a MODEL target could have named in ``module``: the public functions and classes defined there (or
    exported by its ``__all__``) and the modules it holds, in the file's order; first the name closest to ``wanted``
    (difflib)."""
    import difflib

    from torch import nn

    exported = getattr(module, "__all__", None)
    names = [name for name, value in vars(module).items() if not name.startswith("_") and (
        isinstance(value, nn.Module) or (callable(value) and (name in exported if exported is not None else
                                                              getattr(value, "__module__", None) == module.__name__)))]
    if not names:
        return "It defines no public function, class or module to build the model from."
    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(wanted.lower(), list(lowered), n=1)
    return (f"Did you mean {lowered[close[0]]!r}? " if close else "") + "It defines: " + ", ".join(names) + "."


def _call_factory(factory, target: str, device: str | None, kwargs: dict):
    if not callable(factory):
        raise CnnkitError(f"MODEL={target!r} is a {type(factory).__name__}: expected a torch.nn.Module, a class "
                          "or a function.")
    if device is not None:
        import torch

        try:
            with torch.device(device):
                return factory(**kwargs)
        except Exception:
            pass
    try:
        return factory(**kwargs)
    except TypeError as error:
        hint = "" if kwargs else " If it needs arguments, pass them as --model-args '{\"name\": value}'."
        raise CnnkitError(f"Calling MODEL={target!r} raised TypeError: {error}.{hint}") from error
    except Exception as error:
        raise CnnkitError(f"Calling MODEL={target!r} raised {type(error).__name__}: {error}") from error


_RUNS_CODE = ("The model file is your own Python code: it is imported and its function called, with your rights, as "
              "'python file.py' would. Use it only on code you trust.")


@app.command(cls=_Command,
             help="Summarise a whole model: every layer's output shape, weights, parameters, receptive field.\n\n"
                  + _RUNS_CODE + " The model is built and run on the meta device where it can be (shapes "
                  "only, no memory).")
def summary(
    model: str = typer.Argument(..., help="path/to/file.py:build_model (a function, class or module). Imported "
                                          "and run: your own code only."),
    input: str = typer.Option(..., "--input", "-i", help="One sample's shape, no batch: 3x224x224."),
    batch_size: int = typer.Option(1, min=1, help="Batch size of the input run through the model."),
    model_args: str = typer.Option(None, "--model-args", help=_MODEL_ARGS),
) -> None:
    _import_heavy("torch")
    from cnnkit.explainers import summary as summarise

    try:
        from cnnkit.cli.layer_expr import parse_input_shape

        shape = parse_input_shape(input)
        result = summarise(load_factory(model, device="meta", kwargs=_model_args(model_args)), shape,
                           batch_size=batch_size)
        _console().print(result)
    except CnnkitError as error:
        _fail(error)


@app.command(cls=_Command)
def convert(
    model: str = typer.Argument(..., help="A Keras model: .keras archive or legacy .h5 file."),
    output: str = typer.Argument(..., help="Where to write the PyTorch weights (.safetensors)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Record that the model takes NHWC input."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print every layout conversion made."),
) -> None:
    """Convert a Keras model to PyTorch weights (safetensors), without TensorFlow or running its code."""
    _import_heavy("torch")
    from cnnkit.keras import load, save_safetensors

    try:
        module, report = load(model, channels_last_input=channels_last)
        save_safetensors(module, output, metadata={"source": Path(model).name, "keras_version": report.keras_version,
                                                   "channels_last": str(channels_last)})
    except (CnnkitError, OSError) as error:
        _fail(error)
    if verbose:
        print(report)
    print(f"wrote {len(module.state_dict())} tensors ({report.num_params:,} parameters) of "
          f"{len(report.layers)} Keras layers to {output}")


@app.command("keras-explain", cls=_Command)
def keras_explain(
    model: str = typer.Argument(..., help="A Keras model: .keras archive or legacy .h5 file."),
) -> None:
    """Show how a Keras model converts: every layer, its weights in Keras and torch layout, and a summary."""
    _import_heavy("torch")
    from cnnkit.explainers import summary as summarise
    from cnnkit.keras import load

    try:
        module, report = load(model)
        print(report)
        shapes = module.input_shapes
        if len(shapes) == 1 and all(s is not None for s in shapes[0]):
            print()
            # Shapes only: on the meta device nothing is allocated, whatever size the file declares.
            _console().print(summarise(module.to("meta"), shapes[0]))
        else:
            print("\n(no summary table: it needs one input of known shape; this model has "
                  f"{', '.join(str(s) for s in shapes)})")
    except CnnkitError as error:
        _fail(error)


@app.command(cls=_Command, help="Write a static HTML report of a training run (curves, IoU, filters) to "
                  "RUN_DIR/report/report.html.\n\n--model: " + _RUNS_CODE + " An earlier report is replaced "
                  "only if cnnkit wrote it and this one has all its sections; a richer report (from cnnkit train or "
                  "demo) is kept: write this one elsewhere with --out.")
def report(
    run_dir: str = typer.Argument(..., help="The run folder given to cnnkit.train.fit (logs/, checkpoints/)."),
    model: str = typer.Option(None, "--model", "-m", help="path/to/file.py:build_model, for the model sections. "
                                                         "Imported and run: your own code only."),
    input: str = typer.Option(None, "--input", "-i", help="One sample's shape for the summary, no batch: 3x64x64."),
    title: str = typer.Option(None, "--title", help="Page title (default: the run folder's name)."),
    out: str = typer.Option(None, "--out", help="Folder of the report (default RUN_DIR/report)."),
    model_args: str = typer.Option(None, "--model-args", help=_MODEL_ARGS),
) -> None:
    import warnings

    _import_heavy("torch")
    from cnnkit.report import load_run_weights, write_report

    try:
        network = None
        if model is not None:
            network = load_factory(model, kwargs=_model_args(model_args))
            from cnnkit.train.rundir import last_checkpoint

            if last_checkpoint(run_dir) is not None:
                load_run_weights(network, run_dir)
        from cnnkit.cli.layer_expr import parse_input_shape

        shape = parse_input_shape(input) if input is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = write_report(run_dir, model=network, input_shape=shape, title=title, report_dir=out)
    except (CnnkitError, OSError) as error:
        _fail(error)
    for warning in caught:
        if issubclass(warning.category, UserWarning) and warning.filename == __file__:
            print(f"note: {warning.message}", file=sys.stderr)
    print(f"wrote {path}")


def main() -> None:
    """Entry point of the ``cnnkit`` script."""
    global _FREEZE
    _FREEZE = True
    atexit.register(gc.freeze)  # at exit, the collector's last pass need not walk every object torch made
    app()
