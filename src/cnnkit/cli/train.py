"""``cnnkit train`` and ``cnnkit models``: train a network on a folder, list the networks it can build."""

from __future__ import annotations

from pathlib import Path

import typer

from cnnkit.cli.common import (
    OVERWRITE,
    RESUME,
    THREADS,
    TRAINING,
    VERBOSE,
    Command,
    app,
    console_for_output,
    csv_list,
    fail,
    import_heavy,
    parse_rgb_bands,
    threads_line,
)
from cnnkit.cli.inspect import model_args_json
from cnnkit.errors import CnnkitError, ShapeError


@app.command(cls=Command)
def train(
    root: str = typer.Argument(..., help="Data folder with images/ and masks/ (PNG or multi-band TIFF, by stem), or "
                               "a folder of image time series: series/ (T×C×H×W TIFF stacks or per-date folders) and "
                               "labels/ (label images or one-hot .npy), optional masks/; or a PASTIS folder "
                               "(metadata.geojson, DATA_S2/, ANNOTATIONS/; see --fold)."),
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
    bands: str = typer.Option(None, help="Bands to keep, in order, comma-separated: indices counted from 0 (3,2,1) or "
                              "the names the TIFFs' band descriptions give (red,green,nir); default all."),
    rgb_bands: str = typer.Option(None, "--rgb-bands", help="The three bands the report draws as red, green, blue, "
                                  "counted from 0 among the bands the network reads: 2,1,0 (default: the bands named "
                                  "red, green and blue, else the first three)."),
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
    warmup_epochs: int = typer.Option(None, "--warmup-epochs", min=0, help="Epochs of linear learning-rate warm-up "
                                      "(default: the network family's, 0 for convolutional networks, 1 for "
                                      "transformers)."),
    encoder_lr_factor: float = typer.Option(None, "--encoder-lr-factor", help="The encoder's learning rate is --lr "
                                            "times this (default: 0.1 for a pretrained smp encoder, else 1)."),
    freeze_encoder: int = typer.Option(0, "--freeze-encoder", min=0, metavar="EPOCHS", help="Keep the encoder "
                                       "frozen for this many first epochs (smp networks)."),
    accumulate_grad_batches: int = typer.Option(1, "--accumulate-grad-batches", min=1, help="One optimizer step "
                                                "every this many batches (gradient accumulation)."),
    time_series: bool = typer.Option(False, "--time-series", help="Read ROOT as a folder of image time series "
                                     "(series/ and labels/); recognised without this flag too."),
    hidden: int = typer.Option(16, min=1, help="Time series: hidden channels of the ConvLSTM."),
    crop_size: int = typer.Option(32, min=4, help="Time series: side of the training crops (all dates kept)."),
    fold: int = typer.Option(None, "--fold", help="PASTIS folders (metadata.geojson, DATA_S2/): the published fold "
                             "arrangement K, 1-5 (1: train on folds 1-3, evaluate on test fold 5; default 1)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE),
    resume: bool = typer.Option(False, "--resume", help=RESUME),
    threads: int = typer.Option(None, min=1, help=THREADS),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE),
) -> None:
    """Train a mask-aware network on your folder of images and masks (or image time series); write an HTML report."""
    from rich.rule import Rule

    import_heavy(*TRAINING)
    from cnnkit.app.console import console_log
    from cnnkit.train.distributed import launched_as_rank_zero

    console = console_for_output()
    log = console_log(console)
    rank_zero = launched_as_rank_zero()  # Lightning's ddp runs this command again in each other process
    try:
        names, band_list = csv_list(classes, "classes"), _band_list(bands)
        args = model_args_json(model_args)
        if encoder is not None and model is None:
            raise ShapeError(f"--encoder needs --model (an smp architecture such as Unet). Received --encoder "
                             f"{encoder} without --model.")
        if names is not None and num_classes is None:
            num_classes = len(names)
        from cnnkit.data.pastis import is_pastis_folder

        pastis = is_pastis_folder(root)
        if fold is not None and not pastis:
            raise ShapeError(f"--fold {fold}: chooses a PASTIS folder's published fold arrangement; {root!r} is not "
                             "one (it needs metadata.geojson and DATA_S2/).")
        series = pastis or time_series or ((Path(root) / "series").is_dir() and (Path(root) / "labels").is_dir())
        if rank_zero:
            console.print(Rule(f"cnnkit train — {root}" + (" (image time series)" if series else "")))
            console.print(threads_line(threads), markup=False, highlight=False)
        else:
            threads_line(threads)
        scaling = dict(devices=devices.strip().lower(), num_nodes=num_nodes, strategy=strategy, precision=precision)
        common = dict(heldout=heldout, heldout_fraction=heldout_fraction, num_classes=num_classes, class_names=names,
                      ignore_index=ignore_index, nodata=nodata, seed=seed, epochs=epochs, device=device,
                      batch_size=batch_size, lr=lr, overwrite=overwrite, resume=resume, quiet=not verbose,
                      progress=console.is_terminal, log=log, rgb_bands=parse_rgb_bands(rgb_bands),
                      warmup_epochs=warmup_epochs, encoder_lr_factor=encoder_lr_factor,
                      freeze_encoder_epochs=freeze_encoder, accumulate_grad_batches=accumulate_grad_batches)
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
            given = [name for name, value in (("--encoder", encoder), ("--weights", weights),
                                              ("--band-names", band_names)) if value is not None]
            if given:
                raise ShapeError(f"{', '.join(given)}: a time-series run trains a series network (SeriesSegNet, "
                                 f"UTAE) from random weights, for now. Received {', '.join(given)} with the "
                                 f"time-series folder {root!r}.")
            series_spec = None
            if model is not None and (model != "SeriesSegNet" or model_args is not None):
                from cnnkit.models import spec_for

                series_spec = spec_for(model, args={"width": width, **args} if width is not None else args)
            elif model_args is not None:
                raise ShapeError("--model-args needs --model. Received --model-args without --model.")
            if pastis:
                from cnnkit.app.pastis import train_pastis

                fixed = [f"{name} {value}" for name, value, default in (
                    ("--heldout", heldout, None), ("--heldout-fraction", heldout_fraction, 0.2),
                    ("--classes", classes, None), ("--num-classes", None if classes else num_classes, None),
                    ("--ignore-index", ignore_index, None), ("--nodata", nodata, None)) if value != default]
                if fixed:
                    raise ShapeError(f"{', '.join(fixed)}: a PASTIS folder fixes its split (--fold), its 19 classes, "
                                     f"its void label 19 and its validity (finite values). Received {', '.join(fixed)} "
                                     f"with the PASTIS folder {root!r}.")
                for name in ("heldout", "heldout_fraction", "num_classes", "class_names", "ignore_index", "nodata"):
                    common.pop(name)
                result = train_pastis(root, out, fold=1 if fold is None else fold, width=width or 8, hidden=hidden,
                                      crop_size=crop_size, model_spec=series_spec, **common)
            else:
                result = train_series_folder(root, out, width=width or 8, hidden=hidden, crop_size=crop_size,
                                             model_spec=series_spec, **common)
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
                                  model_spec=spec, weights=weights, band_names=csv_list(band_names, "band-names"),
                                  **scaling, **common)
    except CnnkitError as error:
        fail(error)
    if result is None:  # a process other than rank 0: rank 0 prints the result and writes the report
        return
    console.print(Rule("result"))
    for line in result.lines():
        log(line)


@app.command(cls=Command)
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
    import_heavy("torch")
    import fnmatch

    from cnnkit.models import describe_models, list_encoders

    console = console_for_output()
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
        fail(error)


def _band_list(text: str | None) -> list[int | str] | None:
    """``--bands 3,2,1`` → ``[3, 2, 1]``; ``--bands red,green,nir`` → names, looked up in each TIFF's band
    descriptions by the data folder (digits are indices, anything else a name)."""
    items = csv_list(text, "bands")
    if items is None:
        return None
    return [int(item) if item.isdigit() else item for item in items]


def _yes_no(value: bool | None) -> str:
    return "—" if value is None else ("exact" if value else "no")


