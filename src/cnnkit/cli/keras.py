"""``cnnkit convert`` and ``cnnkit keras-explain``: Keras model files read without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import typer

from cnnkit.cli.common import Command, app, console_for_output, fail, import_heavy
from cnnkit.errors import CnnkitError


@app.command(cls=Command)
def convert(
    model: str = typer.Argument(..., help="A Keras model: .keras archive or legacy .h5 file."),
    output: str = typer.Argument(..., help="Where to write the PyTorch weights (.safetensors)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Record that the model takes NHWC input."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print every layout conversion made."),
) -> None:
    """Convert a Keras model to PyTorch weights (safetensors), without TensorFlow or running its code."""
    import_heavy("torch")
    from cnnkit.keras import load, save_safetensors

    try:
        module, report = load(model, channels_last_input=channels_last)
        save_safetensors(module, output, metadata={"source": Path(model).name, "keras_version": report.keras_version,
                                                   "channels_last": str(channels_last)})
    except (CnnkitError, OSError) as error:
        fail(error)
    if verbose:
        print(report)
    print(f"wrote {len(module.state_dict())} tensors ({report.num_params:,} parameters) of "
          f"{len(report.layers)} Keras layers to {output}")


@app.command("keras-explain", cls=Command)
def keras_explain(
    model: str = typer.Argument(..., help="A Keras model: .keras archive or legacy .h5 file."),
) -> None:
    """Show how a Keras model converts: every layer, its weights in Keras and torch layout, and a summary."""
    import_heavy("torch")
    from cnnkit.explainers import summary as summarise
    from cnnkit.keras import load

    try:
        module, report = load(model)
        print(report)
        shapes = module.input_shapes
        if len(shapes) == 1 and all(s is not None for s in shapes[0]):
            print()
            # Shapes only: on the meta device nothing is allocated, whatever size the file declares.
            console_for_output().print(summarise(module.to("meta"), shapes[0]))
        else:
            print("\n(no summary table: it needs one input of known shape; this model has "
                  f"{', '.join(str(s) for s in shapes)})")
    except CnnkitError as error:
        fail(error)


