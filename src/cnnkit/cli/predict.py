"""``cnnkit predict``: apply a trained run to images, scenes and series."""

from __future__ import annotations

import typer

from cnnkit.cli.common import (
    THREADS,
    Command,
    app,
    console_for_output,
    fail,
    import_heavy,
    log_lines,
    parse_rgb_bands,
    threads_line,
)
from cnnkit.errors import CnnkitError, UnsupportedError

# `cnnkit predict`'s defaults, also read to tell which image-only options a series run was given
_MAX_PIXELS, _TILE, _BATCH_SIZE = 1_048_576, 512, 8


@app.command(cls=Command)
def predict(
    run: str = typer.Argument(..., help="A run folder of cnnkit train or cnnkit demo (it holds manifest.json)."),
    inputs: list[str] = typer.Argument(..., help="Images (PNG, JPEG, TIFF), folders of them, or glob patterns; "  # noqa: B008
                                       "for a time-series run: series stacks, per-date folders, a folder "
                                       "with series/, or PASTIS folders and their DATA_S2/S2_<id>.npy patches."),
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
                                   help="Larger images run tile by tile (same result, less memory); a series: more "
                                        "pixel-dates (T × H × W), tiled in space with every date kept."),
    tile: int = typer.Option(_TILE, min=8, help="Tile side in pixels for images (and series) over --max-pixels."),
    fold: int = typer.Option(None, "--fold", help="PASTIS folders: predict the test patches of the published fold "
                             "arrangement K (1-5; those cnnkit train --fold K held out); default every patch."),
    batch_size: int = typer.Option(_BATCH_SIZE, min=1, help="Images per padded batch."),
    device: str = typer.Option("cpu", help="'cpu', 'cuda' or 'cuda:<index>'."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier outputs of the same names in --out."),
    resume: bool = typer.Option(False, "--resume", help="Finish what an interrupted run into --out left (same run and "
                                "options): inputs it finished are kept, the others predicted again."),
    external_vrt_sources: bool = typer.Option(False, "--allow-external-vrt-sources",
                                              help="Let a VRT input read files outside its own folder (refused by "
                                                   "default: a VRT from elsewhere could read any of your files)."),
    devices: str = typer.Option("1", "--devices", help="Processes sharing the images and a large scene's tiles: CPU "
                                "processes (at most the usable cores) with --device cpu, GPUs with --device cuda; "
                                "'auto': every GPU. The files equal one process's, byte for byte "
                                "(docs/distributed.md). Under torchrun, the launcher decides."),
    threads: int = typer.Option(None, min=1, help=THREADS),
) -> None:
    """Apply a trained run to new images and whole scenes: label maps, overlays, probabilities.

    Images are grouped by size and run as padded batches (each result equal to the image alone); images over
    --max-pixels are read, run and written tile by tile with a halo from the network's receptive field, so
    the result is identical to the whole-image pass while memory follows the tile. A run trained on image time
    series predicts series (stacks, per-date folders, PASTIS patches with their metadata's dates), one label map
    each (and probabilities or confidence on request); a series over --max-pixels pixel-dates runs in tiles in
    space, every date kept, equal to the whole series.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from cnnkit.rasters.destination import prepare_folder

    try:  # before torch is imported or the run read: a wrong --out fails at once
        prepare_folder(out)
    except CnnkitError as error:
        fail(error)
    import_heavy("torch")
    from cnnkit.app.pastis import is_pastis_input, predict_pastis
    from cnnkit.app.predict import expand_inputs, is_series_run, load_predictor, predict_files, predict_series_files
    from cnnkit.app.predict_distributed import launched, predict_distributed
    from cnnkit.train.rundir import read_manifest

    console = console_for_output()
    try:
        console.print(threads_line(threads), markup=False, highlight=False)
        series = is_series_run(read_manifest(run))
        pastis = [item for item in inputs if is_pastis_input(item)] if series else []
        if fold is not None and not series:
            raise UnsupportedError(f"--fold {fold}: chooses the test patches of a PASTIS folder, for a run trained on "
                                   f"image time series; the run {run!r} was trained on images.")
        if fold is not None and not pastis:
            raise UnsupportedError(f"--fold {fold}: chooses the test patches of a PASTIS folder (metadata.geojson and "
                                   f"DATA_S2/); none of the inputs is one. Received {', '.join(inputs)}.")
        if series:
            ignored = [flag for flag, given in (("--batch-size", batch_size != _BATCH_SIZE), ("--resume", resume),
                                                ("--devices", devices != "1"),
                                                ("--allow-external-vrt-sources", external_vrt_sources)) if given]
            if ignored:
                raise UnsupportedError(f"{', '.join(ignored)}: not available for a run trained on time series "
                                       f"({run!r}), which predicts one series at a time in one process.")
            if pastis and len(pastis) != len(inputs):
                other = next(item for item in inputs if item not in pastis)
                raise UnsupportedError(f"PASTIS folders and other series in one call: {other!r} is not in a PASTIS "
                                       "folder. Predict them in two calls.")
            options = dict(device=device, tiff=True, probabilities=probabilities, confidence=confidence,
                           overwrite=overwrite, probability_dtype=probability_dtype, max_pixels=max_pixels, tile=tile)
            if pastis:
                result = predict_pastis(run, inputs, out, fold=fold, **options)
            else:
                result = predict_series_files(run, inputs, out, **options)
            names = read_manifest(run)["classes"]["names"]
            console.print(result.summary(names).replace(" images,", " series,"), markup=False, highlight=False,
                          soft_wrap=log_lines(console))
            extra = "".join(f", STEM_{kind}.tif" for kind, given in (("probabilities", probabilities),
                                                                     ("confidence", confidence)) if given)
            console.print(f"outputs: {out}/ (STEM_labels.png, STEM_labels.tif{extra} per series; 255 = no valid "
                          "date)", markup=False, highlight=False)
            return
        several = devices != "1" or launched()
        if several and device not in ("cpu", "cuda"):
            raise UnsupportedError(f"--device {device} with --devices {devices}: with several processes use --device "
                                   "cuda (rank i of a node takes GPU i) or --device cpu.")
        if several:
            class_names = read_manifest(run)["classes"]["names"]
        else:
            predictor, manifest = load_predictor(run, device=device)
            class_names = predictor.class_names
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} images"),
                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console,
                      transient=False) as bar:
            files = expand_inputs(inputs)  # once: the bar's total, and what predict_files reads
            task = bar.add_task("predicting", total=len(files), rate="")

            def progress(images: int, pixels: int) -> None:
                elapsed = bar.tasks[task].elapsed or 1e-9
                bar.update(task, completed=images,
                           rate=f"{images / elapsed:.1f} img/s, {pixels / elapsed / 1e6:.2f} Mpx/s")

            options = dict(tiff=tiff, probabilities=probabilities, confidence=confidence, max_pixels=max_pixels,
                           tile=tile, batch_size=batch_size, overwrite=overwrite, resume=resume,
                           external_sources=external_vrt_sources, progress=progress,
                           probability_dtype=probability_dtype, rgb_bands=parse_rgb_bands(rgb_bands))
            if several:
                result = predict_distributed(run, files, out, devices=devices, accelerator=device, threads=threads,
                                             **options)
            else:
                result = predict_files(predictor, files, out, band_count=(manifest.get("input") or {}).get(
                    "band_count"), **options)
    except CnnkitError as error:
        fail(error)
    if result is None:  # a rank other than 0 under torchrun: rank 0 prints the summary
        return
    console.print(result.summary(class_names), markup=False, highlight=False, soft_wrap=log_lines(console))
    console.print(f"outputs: {out}/", markup=False, highlight=False)
