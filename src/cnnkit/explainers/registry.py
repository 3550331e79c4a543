"""The explainer registry and :func:`explain`.

An *explainer* is a function ``(module, input_shape) -> LayerReport`` registered for a module type with
:func:`register_explainer`. Lookup walks the module's class hierarchy (``type(module).__mro__``, through
:class:`cnnkit._registry.TypeRegistry`), so a subclass of ``nn.Conv2d`` is explained as a ``Conv2d`` unless it
registers its own explainer. The torch layers' explainers are in :mod:`cnnkit.explainers.layers`, cnnkit's own
layers' (``LocallyConnected2d``, ``ConvLSTM2d``) in :mod:`cnnkit.explainers.cnnkit_layers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnkit._checks import is_int
from cnnkit._registry import TypeRegistry
from cnnkit.errors import ArgumentTypeError, CnnkitError, ShapeError, UnsupportedError
from cnnkit.explainers._meta import REAL_RUN_LIMIT, check_one_input, is_meta, meta_failure, run_for_shapes
from cnnkit.layouts import find_layout, has_keras_layout, keras_shapes

__all__ = ["Explanation", "LayerReport", "explain", "find_explainer", "register_explainer"]

Explainer = Callable[[nn.Module, tuple[int, ...]], "LayerReport"]
_EXPLAINERS = TypeRegistry[Explainer]("explainer")


@dataclass(frozen=True)
class LayerReport:
    """What an explainer returns.

    Attributes:
        output_shape: Output shape without the batch dimension.
        steps: The derivation, one plain-words line each (shape rule, weight meaning, parameter count).
        geometry: ``(kernel_size, stride, dilation)`` tuples if the layer slides a window over the spatial
            dimensions (used for receptive fields), ``"pointwise"`` if every output position depends on
            the same input position only, ``None`` if neither (flatten, dense over space, recurrence).
    """

    output_shape: tuple[int, ...]
    steps: Sequence[str] = ()
    geometry: tuple | str | None = None


@dataclass(frozen=True)
class Explanation:
    """The answer of :func:`explain`: shapes, weights in both layouts, parameter count, and why.

    ``str(explanation)`` gives the derivation in plain words.
    """

    layer: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weights: dict[str, tuple[int, ...]]
    keras_weights: dict[str, tuple[int, ...]]
    num_params: int
    steps: tuple[str, ...] = ()
    keras_class: str | None = None
    geometry: tuple | str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        lines = [f"{self.layer}", f"  input  {_fmt(self.input_shape)}  →  output {_fmt(self.output_shape)}"]
        lines += [f"  {s}" for s in self.steps]
        if self.weights:
            torch_side = ", ".join(f"{k} {_fmt(v)}" for k, v in self.weights.items())
            lines.append(f"  torch weights: {torch_side}")
        if self.keras_weights:
            keras_side = ", ".join(f"{k} {_fmt(v)}" for k, v in self.keras_weights.items())
            lines.append(f"  Keras {self.keras_class} weights: {keras_side}")
        lines.append(f"  parameters: {self.num_params:,}")
        return "\n".join(lines)


def _fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def register_explainer(*types: type) -> Callable[[Explainer], Explainer]:
    """Decorator: use the function to explain modules of ``types`` (and their subclasses).

    Examples:
        >>> class Double(nn.Module):
        ...     def forward(self, x):
        ...         return torch.cat([x, x], dim=0)
        >>> @register_explainer(Double)
        ... def _double(module, input_shape):
        ...     c, *rest = input_shape
        ...     return LayerReport((2 * c, *rest), ["channels doubled by concatenation"], "pointwise")
        >>> explain(Double(), (3, 8, 8)).output_shape
        (6, 8, 8)
    """
    return _EXPLAINERS.registering(*types)


def find_explainer(module: nn.Module) -> Explainer | None:
    """The explainer registered for ``module``'s class or its nearest registered base class."""
    return _EXPLAINERS.find(module)


def check_input_shape(input_shape: object) -> tuple[int, ...]:
    """Validate an input shape given without the batch dimension."""
    if is_int(input_shape):
        input_shape = (input_shape,)
    if (
        not isinstance(input_shape, Sequence)
        or isinstance(input_shape, str)
        or len(input_shape) == 0
        or not all(is_int(s) and s >= 1 for s in input_shape)
    ):
        raise ShapeError(
            "input_shape must be a non-empty tuple of positive integers, without the batch dimension, "
            f"e.g. (3, 32, 32). Received input_shape={input_shape!r}."
        )
    return tuple(int(s) for s in input_shape)


def _measured(module: nn.Module, input_shape: tuple[int, ...]) -> LayerReport:
    """Fallback for modules without an explainer: run them once for the output shape (eval mode, no grad).

    The run is on the meta device (:mod:`cnnkit.explainers._meta`): shapes only, no memory. A module that
    cannot run there (it reads values) is run on real zeros if its weights are real and the input is small.
    """
    name = type(module).__name__
    check_one_input(module, "explain")
    param = next(module.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.empty((1, *input_shape), dtype=dtype, device="meta")
    how = "running it once on meta tensors (shapes only, no memory)"
    was_training = module.training
    try:
        module.eval()
        try:
            out = run_for_shapes(module, x)
        except Exception as error:
            if not meta_failure(error):
                raise _run_error(module, input_shape, error) from error
            if is_meta(module) or math.prod(input_shape) > REAL_RUN_LIMIT:
                raise UnsupportedError(
                    f"explain: {name} cannot run on the meta device ({type(error).__name__}: {error}), so its "
                    "output shape cannot be measured without memory"
                    + (", and its weights exist on the meta device only (built from the command line); "
                       "explain it from Python with a real module" if is_meta(module) else
                       f"; input_shape={input_shape} is too large to run it for real on zeros")
                    + f". Register an explainer for {name} (cnnkit.explainers.register_explainer)."
                ) from error
            device = param.device if param is not None else "cpu"
            try:
                with torch.no_grad():
                    out = module(torch.zeros((1, *input_shape), device=device, dtype=dtype))
            except Exception as real_error:
                raise _run_error(module, input_shape, real_error) from real_error
            how = "running it once on zeros (it cannot run on meta tensors)"
    finally:
        module.train(was_training)
    first = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(first, torch.Tensor):
        raise UnsupportedError(f"explain: {name} returned {type(first).__name__}, not a tensor, so it has no "
                               "output shape to explain.")
    return LayerReport(
        tuple(first.shape[1:]),
        [f"no explainer is registered for {name}: the output shape was measured by {how}"],
        None,
    )


def _run_error(module: nn.Module, input_shape: tuple[int, ...], error: Exception) -> CnnkitError:
    if isinstance(error, CnnkitError):
        return error
    return ShapeError(f"explain: {type(module).__name__} cannot take input_shape={input_shape} (one sample, "
                      f"without the batch dimension): {type(error).__name__}: {error}")


def explain(module: nn.Module, input_shape: Sequence[int]) -> Explanation:
    """Explain what ``module`` does to an input of ``input_shape`` (no batch dimension, NCHW layout).

    Args:
        module: A layer (``nn.Conv2d``, ``nn.Linear``, …) or a ``nn.Sequential`` of layers. Modules
            without a registered explainer are run once on the meta device to measure their output
            (shapes only: no weights or activations of real size are allocated). It may itself live on
            the meta device (``with torch.device("meta"): layer = nn.Linear(60000, 60000)``).
        input_shape: The shape of one sample, without the batch dimension, e.g. ``(3, 32, 32)``.

    Returns:
        An :class:`Explanation` with ``output_shape``, ``weights`` (torch shapes), ``keras_weights``
        (the shapes Keras stores), ``num_params`` and a plain-words derivation as ``str()``.

    Raises:
        ShapeError: ``input_shape`` does not fit the module (the message says why; if it only includes a
            batch dimension, the message says to leave it out).
        UnsupportedError: the module needs several inputs (``Transformer``), or has no explainer and
            cannot run on the meta device.

    Examples:
        >>> e = explain(nn.Conv2d(3, 32, 5), (3, 32, 32))
        >>> e.output_shape, e.weights["weight"], e.keras_weights["kernel"], e.num_params
        ((32, 28, 28), (32, 3, 5, 5), (5, 5, 3, 32), 2432)
        >>> explain(nn.Linear(2000, 4800), (2000,)).keras_weights
        {'kernel': (2000, 4800), 'bias': (4800,)}
    """
    if not isinstance(module, nn.Module):
        raise ArgumentTypeError(f"module must be a torch.nn.Module. Received {type(module).__name__}.")
    shape = check_input_shape(input_shape)
    try:
        return _explain(module, shape)
    except ShapeError as error:
        if len(shape) < 2:
            raise
        try:
            _explain(module, shape[1:])
        except CnnkitError:
            raise error from None
        raise ShapeError(batch_hint(module, shape)) from error


def batch_hint(module: nn.Module, shape: tuple[int, ...], batch_size: str = "") -> str:
    """The message for an ``input_shape`` that works once its first entry (a batch size) is dropped."""
    one = shape[1:]
    return (
        f"input_shape={shape} does not fit {type(module).__name__}, but {one} does: leave the batch dimension "
        f"out and give one sample's shape, input_shape={one} (on the command line --input "
        f"{'x'.join(map(str, one))}){batch_size}."
    )


def _explain(module: nn.Module, shape: tuple[int, ...]) -> Explanation:
    explainer = find_explainer(module)
    if explainer is not None:
        report = explainer(module, shape)
    elif isinstance(module, nn.Sequential):
        return _explain_sequential(module, shape)
    else:
        report = _measured(module, shape)
    weights = {name: tuple(p.shape) for name, p in module.named_parameters()}
    keras, keras_class, layout = {}, None, find_layout(module)
    if has_keras_layout(module):
        keras = keras_shapes(module)
        keras_class = layout.keras_class(module)
    elif layout is not None:
        report = LayerReport(report.output_shape, [*report.steps, "no Keras equivalent"], report.geometry)
    return Explanation(
        layer=_layer_repr(module),
        input_shape=shape,
        output_shape=tuple(report.output_shape),
        weights=weights,
        keras_weights=keras,
        num_params=sum(p.numel() for p in module.parameters()),
        steps=tuple(report.steps),
        keras_class=keras_class,
        geometry=report.geometry,
    )


def _layer_repr(module: nn.Module) -> str:
    text = repr(module)
    return text if "\n" not in text else type(module).__name__


def _explain_sequential(module: nn.Sequential, shape: tuple[int, ...]) -> Explanation:
    steps: list[str] = []
    weights: dict[str, tuple[int, ...]] = {}
    keras: dict[str, tuple[int, ...]] = {}
    current = shape
    for name, child in module.named_children():
        sub = _explain(child, current)
        steps.append(f"[{name}] {sub.layer}: {_fmt(sub.input_shape)} → {_fmt(sub.output_shape)}")
        steps += [f"    {s}" for s in sub.steps]
        weights.update({f"{name}.{k}": v for k, v in sub.weights.items()})
        keras.update({f"{name}/{k}": v for k, v in sub.keras_weights.items()})
        current = sub.output_shape
    return Explanation(
        layer=f"Sequential({len(module)} layers)",
        input_shape=shape,
        output_shape=current,
        weights=weights,
        keras_weights=keras,
        num_params=sum(p.numel() for p in module.parameters()),
        steps=tuple(steps),
        keras_class="Sequential",
    )
