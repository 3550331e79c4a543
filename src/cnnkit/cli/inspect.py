"""``cnnkit explain`` and ``cnnkit summary``: shapes, weights and receptive fields of a layer or of a model of your own
(``path/to/file.py:build_model``, loaded by :func:`load_factory`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import typer

from cnnkit.cli.common import Command, app, console_for_output, fail, import_heavy
from cnnkit.errors import CnnkitError, ShapeError


@app.command(cls=Command)
def explain(
    layer: str = typer.Argument(..., help='A layer as Python call syntax, e.g. "Conv2d(3, 32, 5)".'),
    input: str = typer.Option(..., "--input", "-i", help="One sample's shape, no batch: 3x32x32."),
) -> None:
    """Explain one layer: output shape, weights in torch and Keras layout, parameters, and why.

    Shapes only: the layer is built on the meta device, so no weights or activations are allocated and
    any size is answered at once.
    """
    import_heavy("torch")
    from cnnkit.explainers import explain as explain_layer

    try:
        from cnnkit.cli.layer_expr import parse_input_shape, parse_layer

        print(explain_layer(parse_layer(layer, device="meta"), parse_input_shape(input)))
    except CnnkitError as error:
        fail(error)


def model_args_json(text: str | None) -> dict:
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


MODEL_ARGS = 'Keyword arguments for the model function, as a JSON object: \'{"in_channels": 4}\'.'


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


RUNS_CODE = ("The model file is your own Python code: it is imported and its function called, with your rights, as "
              "'python file.py' would. Use it only on code you trust.")


@app.command(cls=Command,
             help="Summarise a whole model: every layer's output shape, weights, parameters, receptive field.\n\n"
                  + RUNS_CODE + " The model is built and run on the meta device where it can be (shapes "
                  "only, no memory).")
def summary(
    model: str = typer.Argument(..., help="path/to/file.py:build_model (a function, class or module). Imported "
                                          "and run: your own code only."),
    input: str = typer.Option(..., "--input", "-i", help="One sample's shape, no batch: 3x224x224."),
    batch_size: int = typer.Option(1, min=1, help="Batch size of the input run through the model."),
    model_args: str = typer.Option(None, "--model-args", help=MODEL_ARGS),
) -> None:
    import_heavy("torch")
    from cnnkit.explainers import summary as summarise

    try:
        from cnnkit.cli.layer_expr import parse_input_shape

        shape = parse_input_shape(input)
        result = summarise(load_factory(model, device="meta", kwargs=model_args_json(model_args)), shape,
                           batch_size=batch_size)
        console_for_output().print(result)
    except CnnkitError as error:
        fail(error)


