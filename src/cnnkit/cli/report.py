"""``cnnkit report``: the static HTML report of a training run."""

from __future__ import annotations

import sys

import typer

from cnnkit.cli.common import Command, app, fail, import_heavy
from cnnkit.cli.inspect import MODEL_ARGS, RUNS_CODE, load_factory, model_args_json
from cnnkit.errors import CnnkitError


@app.command(cls=Command, help="Write a static HTML report of a training run (curves, IoU, filters) to "
                  "RUN_DIR/report/report.html.\n\n--model: " + RUNS_CODE + " An earlier report is replaced "
                  "only if cnnkit wrote it and this one has all its sections; a richer report (from cnnkit train or "
                  "demo) is kept: write this one elsewhere with --out.")
def report(
    run_dir: str = typer.Argument(..., help="The run folder given to cnnkit.train.fit (logs/, checkpoints/)."),
    model: str = typer.Option(None, "--model", "-m", help="path/to/file.py:build_model, for the model sections. "
                                                         "Imported and run: your own code only."),
    input: str = typer.Option(None, "--input", "-i", help="One sample's shape for the summary, no batch: 3x64x64."),
    title: str = typer.Option(None, "--title", help="Page title (default: the run folder's name)."),
    out: str = typer.Option(None, "--out", help="Folder of the report (default RUN_DIR/report)."),
    model_args: str = typer.Option(None, "--model-args", help=MODEL_ARGS),
) -> None:
    import warnings

    import_heavy("torch")
    from cnnkit.report import load_run_weights, write_report

    try:
        network = None
        if model is not None:
            network = load_factory(model, kwargs=model_args_json(model_args))
            from cnnkit.train.rundir import last_checkpoint

            if last_checkpoint(run_dir) is not None:
                load_run_weights(network, run_dir)
        from cnnkit.cli.layer_expr import parse_input_shape

        shape = parse_input_shape(input) if input is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            path = write_report(run_dir, model=network, input_shape=shape, title=title, report_dir=out)
    except (CnnkitError, OSError) as error:
        fail(error)
    for warning in caught:
        if issubclass(warning.category, UserWarning) and warning.filename == __file__:
            print(f"note: {warning.message}", file=sys.stderr)
    print(f"wrote {path}")


