"""``cnnkit demo``: the built-in training demo (images or time series) and the seed questions' shapes."""

from __future__ import annotations

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
    fail,
    import_heavy,
    threads_line,
)
from cnnkit.errors import CnnkitError, ShapeError


@app.command(cls=Command)
def demo(
    out: str = typer.Option("cnnkit-demo", "--out", help="Run folder: logs, checkpoints, report/report.html. Must "
                            "be empty or new, unless --overwrite or --resume."),
    epochs: int = typer.Option(None, min=1, help="Training epochs (default 24; with --time-series 18, or 40 for "
                               "--model UTAE)."),
    seed: int = typer.Option(0, help="Seed of the built-in data set, the weights and the batch order."),
    device: str = typer.Option("cpu", help="'cpu', 'cuda' or 'cuda:<index>'."),
    shapes: bool = typer.Option(False, "--shapes", help="Only print the seed questions' shape answers, no training."),
    time_series: bool = typer.Option(False, "--time-series", help="The image time-series demo instead: cloudy "
                                     "crop-type series whose classes only time tells apart, a ConvLSTM, and two "
                                     "baselines (majority class, least cloudy single date)."),
    model: str = typer.Option(None, "--model", help="--time-series: the network, SeriesSegNet (a ConvLSTM, the "
                              "default) or UTAE (U-Net with temporal attention), named as cnnkit train --model names "
                              "them."),
    height: int = typer.Option(64, min=4, help="--shapes: height of the example image."),
    width: int = typer.Option(96, min=4, help="--shapes: width of the example image."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE),
    resume: bool = typer.Option(False, "--resume", help=RESUME),
    threads: int = typer.Option(None, min=1, help=THREADS),
    verbose: bool = typer.Option(False, "--verbose", help=VERBOSE),
) -> None:
    """Train a mask-aware segmentation network on built-in cloudy multi-band scenes and write an HTML report."""
    import_heavy(*TRAINING)
    from cnnkit.app.demo import run_demo, run_training_demo

    try:
        if model is not None and not time_series:
            raise ShapeError(f"--model chooses the network of the time-series demo: add --time-series. Received "
                             f"--model {model} without it (the image demo trains TinySegNet).")
        if time_series:
            from cnnkit.app.demo import run_series_demo

            console = console_for_output()
            console.print(threads_line(threads), markup=False, highlight=False)
            run_series_demo(out, epochs=epochs, seed=seed, model=model, device=device, overwrite=overwrite,
                            resume=resume,
                            console=console, quiet=not verbose, progress=console.is_terminal)
        elif shapes:
            run_demo(console_for_output(), height=height, width=width)
        else:
            console = console_for_output()
            console.print(threads_line(threads), markup=False, highlight=False)
            run_training_demo(out, epochs=epochs, seed=seed, device=device, overwrite=overwrite, resume=resume,
                              console=console, quiet=not verbose, progress=console.is_terminal)
    except CnnkitError as error:
        fail(error)


