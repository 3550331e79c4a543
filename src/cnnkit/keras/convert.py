"""``load(path)``: a Keras model file in, an equivalent PyTorch module out, with a report of every layout
conversion made.

How it works, in four steps, none of which runs code from the file:

1. :mod:`cnnkit.keras.reader` parses the JSON config and lists the stored arrays (shapes only).
2. The layer graph (Sequential or functional, several inputs and outputs, shared layers) is walked in
   topological order; each layer's Keras output shape is inferred and a PyTorch module is built for it
   **on the meta device** (no memory), by the builder registered for its ``class_name``. Anything not
   registered — ``Lambda``, custom objects, unknown classes, nested models — is refused.
3. Each module's expected Keras weight shapes (:func:`cnnkit.keras.keras_shapes`) are compared with the
   stored ones, and its size with :data:`MAX_LAYER_PARAMS`, *before* any array is read.
4. Arrays are read and converted by :func:`cnnkit.keras.from_keras` (the one place that knows each
   layout), and loaded into the materialised module.

Layout convention: between layers every tensor of rank ≥ 3 is channels first — Keras's last axis moved to
dim 1 (``(N, H, W, C)`` → ``(N, C, H, W)``, ``(N, T, F)`` → ``(N, F, T)``, ``(N, T, H, W, C)`` →
``(N, C, T, H, W)``). Rank-2 tensors ``(N, F)`` and integer token ids ``(N, T)`` are unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnkit._checks import ntuple
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.keras import modules as M
from cnnkit.keras.graph import call_refs, input_shape, parse_graph, topological_order
from cnnkit.keras.layouts import from_keras, keras_shapes
from cnnkit.keras.reader import KerasFile, KerasFileError, _snake_case, open_keras_file
from cnnkit.shapes import conv_output_size

__all__ = [
    "MAX_BYTES",
    "MAX_LAYER_PARAMS",
    "ConversionReport",
    "KerasModel",
    "LayerConversion",
    "LoadedModel",
    "load",
    "supported_layers",
]

MAX_LAYER_PARAMS = 10**9
#: Default budget of :func:`load` for all weights and buffers together (bytes); see its ``max_bytes``.
MAX_BYTES = 4 * 2**30
_MAX_INT = 2**31 - 1

Shape = tuple  # Keras shape without the batch dimension; entries int or None


# --- the report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerConversion:
    """What was done for one Keras layer.

    Attributes:
        name: The Keras layer name (also its key in :attr:`KerasModel.layers`, made a valid attribute).
        keras_class: The Keras ``class_name``.
        module: The PyTorch module built for it, as its repr's first line.
        input_shapes / output_shape: Keras shapes (channels last, ``None`` = any, batch left out).
        keras_weights / torch_weights: Name → shape on both sides of the layout conversion.
        notes: Every semantic or layout conversion made, in plain words.
        num_params: Parameters of the module (buffers such as BatchNorm's running statistics not counted).
    """

    name: str
    keras_class: str
    module: str
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    keras_weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    torch_weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    num_params: int = 0


@dataclass(frozen=True)
class ConversionReport:
    """Every layer converted, with the layout conversions made; ``str(report)`` shows them as text."""

    path: str
    format: str
    keras_version: str
    model_class: str
    layers: tuple[LayerConversion, ...]
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    channels_last: bool

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    def __str__(self) -> str:
        fmt = _fmt_shape
        kind = {"keras": "Keras 3 archive", "h5": "legacy HDF5"}[self.format]
        io = "channels-last" if self.channels_last else "channels-first (PyTorch)"
        lines = [
            f"{self.path}: {self.model_class} from a {kind}, Keras {self.keras_version}",
            f"  inputs  (Keras) {', '.join(fmt(s) for s in self.input_shapes)}",
            f"  outputs (Keras) {', '.join(fmt(s) for s in self.output_shapes)}",
            f"  the module takes and returns {io} tensors; parameters: {self.num_params:,}",
        ]
        for layer in self.layers:
            lines.append(f"- {layer.name} ({layer.keras_class}) → {layer.module}  output {fmt(layer.output_shape)}")
            if layer.keras_weights:
                keras = ", ".join(f"{k} {fmt(v)}" for k, v in layer.keras_weights.items())
                torch_side = ", ".join(f"{k} {fmt(v)}" for k, v in layer.torch_weights.items())
                lines.append(f"    Keras {keras}  →  torch {torch_side}")
            lines += [f"    {note}" for note in layer.notes]
        return "\n".join(lines)


def _fmt_shape(shape: Sequence) -> str:
    inner = ", ".join("None" if s is None else str(s) for s in shape)
    return f"({inner}{',' if len(shape) == 1 else ''})"


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load` returns: the module and the report. Unpacks as ``module, report = load(path)``."""

    module: KerasModel
    report: ConversionReport

    def __iter__(self) -> Iterator:
        return iter((self.module, self.report))


# --- the interpreter module --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    layer: str
    args: str | tuple[str, ...]
    output: str


class KerasModel(nn.Module):
    """A converted Keras model: its layers in an ``nn.ModuleDict``, run in topological order.

    The graph (which layer reads which tensors) is plain data taken from the config; ``forward`` only
    looks layers up by name and calls them. Built by :func:`load`.

    Attributes:
        layers: Keras layer name → module.
        input_names / output_names: Tensor names of the graph's inputs and outputs.
        input_shapes: Expected input shapes without the batch dimension, in the layout ``forward`` takes
            (channels first unless ``channels_last``), ``None`` = any size.
        channels_last: Whether ``forward`` takes and returns Keras's channels-last layout.

    Shape:
        - Input: one tensor per Keras input, ``(N, C, *S)`` (or ``(N, *S, C)`` with ``channels_last``);
          rank-2 inputs ``(N, F)`` and token ids ``(N, T)`` as in Keras.
        - Output: a tensor, or a tuple for several outputs, in the same layout.
    """

    def __init__(self, layers: dict[str, nn.Module], calls: Sequence[_Call], input_names: Sequence[str],
                 output_names: Sequence[str], input_shapes: Sequence[Shape], *, channels_last: bool = False,
                 name: str = "model") -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.calls = tuple(calls)
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.keras_input_shapes = tuple(tuple(s) for s in input_shapes)
        self.channels_last = bool(channels_last)
        self.name = name

    @property
    def input_shapes(self) -> tuple[Shape, ...]:
        if self.channels_last:
            return self.keras_input_shapes
        return tuple((s[-1], *s[:-1]) if len(s) >= 2 else s for s in self.keras_input_shapes)

    def forward(self, *inputs: Tensor):
        if len(inputs) != len(self.input_names):
            raise ShapeError(f"{self.name} takes {len(self.input_names)} input tensor(s) "
                             f"({', '.join(self.input_names)}). Received {len(inputs)}.")
        env: dict[str, Tensor] = {}
        for name, x, expected in zip(self.input_names, inputs, self.input_shapes):
            if not isinstance(x, Tensor) or x.dim() != len(expected) + 1 or any(
                e is not None and e != g for e, g in zip(expected, x.shape[1:])
            ):
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                layout = "channels-last" if self.channels_last else "channels-first"
                raise ShapeError(f"{self.name}: input {name!r} must have shape (N, "
                                 f"{_fmt_shape(expected)[1:]} ({layout}; None = any). Received {got}.")
            env[name] = x.movedim(-1, 1) if self.channels_last and x.dim() >= 3 else x
        for call in self.calls:
            arg = env[call.args] if isinstance(call.args, str) else [env[a] for a in call.args]
            env[call.output] = self.layers[call.layer](arg)
        outs = [env[o] for o in self.output_names]
        if self.channels_last:
            outs = [o.movedim(1, -1) if o.dim() >= 3 else o for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, inputs={list(self.input_names)}, outputs={list(self.output_names)}" + (
            ", channels_last=True" if self.channels_last else "")


# --- layer builders ----------------------------------------------------------------------------------


@dataclass
class _Built:
    module: nn.Module
    output_shape: Shape
    weights: tuple[str, ...] = ()  # Keras names of the stored arrays, in storage order
    defaults: dict[str, Callable[[tuple[int, ...]], Tensor]] = field(default_factory=dict)


class _Layer:
    """One layer's config, input shapes and notes, with checked accessors for config values."""

    def __init__(self, name: str, cls: str, config: dict, shapes: list[Shape], keras_major: int):
        self.name, self.cls, self.config, self.shapes, self.keras_major = name, cls, config, shapes, keras_major
        self.notes: list[str] = []

    def error(self, message: str, kind: type = ShapeError) -> CnnkitError:
        return kind(f"Layer {self.name!r} ({self.cls}): {message}")

    def get(self, key: str, default=None):
        value = self.config.get(key, default)
        return default if value is None else value

    def int(self, key: str, default=None, minimum: int = 1) -> int:
        value = self.get(key, default)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= _MAX_INT:
            raise self.error(f"{key} must be an integer in [{minimum}, {_MAX_INT}]. Received {key}={value!r}.")
        return value

    def ints(self, key: str, n: int, default=None, minimum: int = 1) -> tuple[int, ...]:
        value = self.get(key, default)
        if isinstance(value, list):
            value = tuple(value)
        try:
            out = ntuple(value, n, key, minimum=minimum)
        except ShapeError as error:
            raise self.error(str(error)) from None
        if any(v > _MAX_INT for v in out):
            raise self.error(f"{key} must be at most {_MAX_INT}. Received {key}={value!r}.")
        return out

    def number(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.error(f"{key} must be a finite number. Received {key}={value!r}.")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{key} must be true or false. Received {key}={value!r}.")
        return value

    def choice(self, key: str, allowed: Sequence[str], default: str) -> str:
        value = self.get(key, default)
        value = value.lower() if isinstance(value, str) else value
        if value not in allowed:
            raise self.error(f"{key} must be one of {tuple(allowed)}. Received {key}={value!r}.", UnsupportedError)
        return value

    def refuse_if(self, key: str, bad, default=None, why: str = "") -> None:
        value = self.get(key, default)
        if value == bad or (bad is True and value not in (None, False)):
            raise self.error(f"{key}={value!r} is not supported{why}.", UnsupportedError)

    def channels_last(self) -> None:
        self.choice("data_format", ("channels_last",), "channels_last")

    def activation(self, key: str = "activation", default: str = "linear") -> str:
        value = self.config.get(key, default)
        if value is None:
            value = "linear"
        if isinstance(value, dict):
            inner = value.get("config")
            if value.get("module") in ("keras.activations", "keras.src.activations") and isinstance(inner, str):
                value = inner
            else:
                raise self.error(f"{key} is a custom object ({value.get('class_name')!r} from module "
                                 f"{value.get('module')!r}); cnnkit never runs code from a file.",
                                 UnsupportedError)
        if value == "hard_sigmoid" and self.keras_major < 3:
            self.notes.append("hard_sigmoid with Keras 2's definition clip(0.2·x + 0.5, 0, 1)")
            value = "hard_sigmoid_keras2"
        elif not isinstance(value, str) or value not in M.ACTIVATIONS or value == "hard_sigmoid_keras2":
            supported = ", ".join(k for k in M.ACTIVATIONS if k != "hard_sigmoid_keras2")
            raise self.error(f"unknown {key} {value!r}. Supported: {supported}.", UnsupportedError)
        return value

    def one_input(self, ranks: Sequence[int] | None = None) -> Shape:
        if len(self.shapes) != 1:
            raise self.error(f"takes one input tensor. Received {len(self.shapes)}.")
        shape = self.shapes[0]
        if ranks is not None and len(shape) + 1 not in ranks:
            expected = " or ".join(str(r) for r in ranks)
            raise self.error(f"expects an input of rank {expected} (batch included). Received shape "
                             f"{_fmt_shape((None, *shape))}.")
        return shape

    def known(self, value, what: str) -> int:
        if value is None:
            raise self.error(f"needs a known {what}; the input shape {_fmt_shape((None, *self.shapes[0]))} "
                             "leaves it open.")
        return value


_BUILDERS: dict[str, Callable[[_Layer], _Built]] = {}


def _builds(*class_names: str):
    def register(fn):
        for name in class_names:
            _BUILDERS[name] = fn
        return fn
    return register


def supported_layers() -> tuple[str, ...]:
    """The Keras ``class_name`` values :func:`load` converts (plus ``InputLayer``).

    Examples:
        >>> "Conv2D" in supported_layers() and "Lambda" not in supported_layers()
        True
    """
    return tuple(sorted({*_BUILDERS, "InputLayer"}))


def _spatial_out(c: _Layer, spatial: Shape, kernel, stride, padding, dilation) -> Shape:
    out = []
    for i, size in enumerate(spatial):
        if size is None:
            out.append(None)
            continue
        try:
            out.append(conv_output_size(size, kernel[i], stride[i], padding, dilation[i]))
        except ShapeError as error:
            raise c.error(str(error)) from None
    return tuple(out)


def _bias_names(c: _Layer) -> tuple[str, ...]:
    return ("kernel", "bias") if c.flag("use_bias", True) else ("kernel",)


@_builds("Conv1D", "Conv2D", "Convolution1D", "Convolution2D")
def _conv(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel = c.ints("kernel_size", n)
    stride = c.ints("strides", n, 1)
    dilation = c.ints("dilation_rate", n, 1)
    groups = c.int("groups", 1)
    padding = c.choice("padding", ("valid", "same", "causal") if n == 1 else ("valid", "same"), "valid")
    if cin % groups or filters % groups:
        raise c.error(f"input channels and filters must be divisible by groups. Received input channels="
                      f"{cin}, filters={filters}, groups={groups}.")
    act = c.activation()
    cls = M.KerasConv1d if n == 1 else M.KerasConv2d
    module = cls(cin, filters, kernel, stride, padding, dilation, groups, c.flag("use_bias", True), activation=act)
    c.notes.append(f"kernel {_fmt_shape((*kernel, cin // groups, filters))} (*k, in/groups, out) → weight "
                   f"{_fmt_shape((filters, cin // groups, *kernel))} (out, in/groups, *k)")
    if padding == "same" and any(s > 1 for s in stride):
        c.notes.append(f"padding 'same' with strides {stride}: TensorFlow's zeros (odd one at the end) added "
                       "with F.pad at run time (cnnkit.shapes.tf_same_padding)")
    elif padding == "causal":
        c.notes.append(f"padding 'causal': {dilation[0] * (kernel[0] - 1)} zeros before the sequence")
    out = _spatial_out(c, shape[:-1], kernel, stride, padding, dilation)
    return _Built(module, (*out, filters), _bias_names(c))


@_builds("Dense")
def _dense(c: _Layer) -> _Built:
    shape = c.one_input()
    if not shape:
        raise c.error("expects an input of rank 2 or more (batch included). Received shape (None,).")
    fin = c.known(shape[-1], "number of input features (last axis)")
    units = c.int("units")
    module = M.KerasDense(fin, units, c.flag("use_bias", True), activation=c.activation())
    c.notes.append(f"kernel ({fin}, {units}) (in, out) → weight ({units}, {fin}) (out, in): transposed")
    if len(shape) >= 2:
        c.notes.append("applied on the channel axis (dim 1) of the channels-first input, as Keras on the last axis")
    return _Built(module, (*shape[:-1], units), _bias_names(c))


@_builds("Embedding")
def _embedding(c: _Layer) -> _Built:
    shape = c.one_input()
    if c.get("mask_zero", False):
        raise c.error("mask_zero=True (masks) is not supported; save the model with mask_zero=False.",
                      UnsupportedError)
    num, dim = c.int("input_dim"), c.int("output_dim")
    module = M.KerasEmbedding(num, dim)
    if len(shape) >= 1:
        c.notes.append("output (N, T, D) → (N, D, T): the embedding axis moved to dim 1 (channels first)")
    return _Built(module, (*shape, dim), ("embeddings",))


@_builds("BatchNormalization")
def _batch_norm(c: _Layer) -> _Built:
    shape = c.one_input([2, 3, 4, 5])
    rank = len(shape) + 1
    axis = c.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, rank - 1):
        raise c.error(f"axis must be the channel axis (-1 or {rank - 1}) of a rank-{rank} input. "
                      f"Received axis={axis!r}.", UnsupportedError)
    for key in ("renorm",):
        c.refuse_if(key, True)
    channels = c.known(shape[-1], "number of channels")
    momentum, eps = c.number("momentum", 0.99), c.number("epsilon", 1e-3)
    if not 0 <= momentum <= 1 or eps <= 0:
        raise c.error(f"momentum must be in [0, 1] and epsilon > 0. Received momentum={momentum}, epsilon={eps}.")
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    # round() keeps 1 − 0.9 from showing as 0.09999999999999998 (a difference of 2e-17).
    module = cls(channels, eps=eps, momentum=round(1.0 - momentum, 12))
    c.notes.append(f"momentum {momentum:g} (Keras: weight of the old mean) → torch momentum "
                   f"{1 - momentum:g} (weight of the new batch); epsilon {eps:g} kept; axis -1 → dim 1")
    names, defaults = [], {}
    if c.flag("scale", True):
        names.append("gamma")
    else:
        defaults["gamma"] = torch.ones
        c.notes.append("scale=False: weight (gamma) fixed at ones")
    if c.flag("center", True):
        names.append("beta")
    else:
        defaults["beta"] = torch.zeros
        c.notes.append("center=False: bias (beta) fixed at zeros")
    return _Built(module, shape, (*names, "moving_mean", "moving_variance"), defaults)


_POOLS = {f"{kind}{alias}{n}D": (mode, n) for n in (1, 2)
          for kind, mode in (("Max", "max"), ("Average", "average"), ("Avg", "average"))
          for alias in ("Pooling", "Pool") if not (kind == "Avg" and alias == "Pooling")}


@_builds(*_POOLS)
def _pool(c: _Layer) -> _Built:
    mode, n = _POOLS[c.cls]
    shape = c.one_input([n + 2])
    c.channels_last()
    kernel = c.ints("pool_size", n, 2)
    stride = c.ints("strides", n, kernel)
    padding = c.choice("padding", ("valid", "same"), "valid")
    if padding == "valid":
        module = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("average", 1): nn.AvgPool1d,
                  ("average", 2): nn.AvgPool2d}[(mode, n)](kernel, stride)
    else:
        module = M.KerasPool(mode, n, kernel, stride)
        c.notes.append("padding 'same': TensorFlow's rule — " + (
            "pads with -inf" if mode == "max" else "padding not counted in the averages"))
    out = _spatial_out(c, shape[:-1], kernel, stride, padding, (1,) * n)
    return _Built(module, (*out, shape[-1]))


_GLOBAL = {f"Global{kind}{alias}{n}D": (mode, n) for n in (1, 2)
           for kind, mode in (("Max", "max"), ("Average", "average"), ("Avg", "average"))
           for alias in ("Pooling", "Pool") if not (kind == "Avg" and alias == "Pooling")}


@_builds(*_GLOBAL)
def _global_pool(c: _Layer) -> _Built:
    mode, n = _GLOBAL[c.cls]
    shape = c.one_input([n + 2])
    c.channels_last()
    keepdims = c.flag("keepdims", False)
    out = (*(1,) * n, shape[-1]) if keepdims else (shape[-1],)
    return _Built(M.GlobalPool(mode, n, keepdims), out)


@_builds("Flatten")
def _flatten(c: _Layer) -> _Built:
    shape = c.one_input()
    c.channels_last()
    if len(shape) >= 2:
        c.notes.append("channels-last order kept: (N, C, *S) permuted to (N, *S, C) before flattening")
    size = None if any(s is None for s in shape) else math.prod(shape)
    return _Built(M.ChannelsLastFlatten(), (size,))


@_builds("Reshape")
def _reshape(c: _Layer) -> _Built:
    shape = c.one_input()
    target = c.get("target_shape")
    if not isinstance(target, list) or not target or not all(
            isinstance(t, int) and not isinstance(t, bool) and (t >= 1 or t == -1) for t in target) or (
            target.count(-1) > 1):
        raise c.error(f"target_shape must be a list of positive integers with at most one -1. "
                      f"Received target_shape={target!r}.")
    total = None if any(s is None for s in shape) else math.prod(shape)
    known = math.prod(t for t in target if t != -1)
    if -1 in target:
        if total is None or total % known:
            raise c.error(f"cannot infer the -1 of target_shape={target} from input shape "
                          f"{_fmt_shape((None, *shape))}.")
        target = [total // known if t == -1 else t for t in target]
    elif total is not None and total != known:
        raise c.error(f"target_shape={target} holds {known} values; the input {_fmt_shape((None, *shape))} "
                      f"holds {total}.")
    if len(shape) >= 2 or len(target) >= 2:
        c.notes.append("reshaped in Keras's channels-last order (permuted before and after)")
    return _Built(M.ChannelsLastReshape(target), tuple(target))


def _torch_dim(c: _Layer, axis, rank: int) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < rank or axis % rank == 0:
        raise c.error(f"axis must be an axis of the rank-{rank} input other than the batch axis 0. "
                      f"Received axis={axis!r}.")
    a = axis % rank
    return a if rank < 3 else (1 if a == rank - 1 else a + 1)


@_builds("Concatenate")
def _concatenate(c: _Layer) -> _Built:
    if len(c.shapes) < 2:
        raise c.error(f"needs at least 2 inputs. Received {len(c.shapes)}.")
    ranks = {len(s) for s in c.shapes}
    if len(ranks) != 1:
        raise c.error(f"inputs must have the same rank. Received shapes {[_fmt_shape(s) for s in c.shapes]}.")
    rank = ranks.pop() + 1
    axis = c.get("axis", -1)
    dim = _torch_dim(c, axis, rank)
    a = axis % rank - 1
    out = list(c.shapes[0])
    for i in range(rank - 1):
        sizes = [s[i] for s in c.shapes]
        if i == a:
            out[i] = None if None in sizes else sum(sizes)
        elif len({s for s in sizes if s is not None}) > 1:
            raise c.error(f"inputs must agree on every axis but {axis}. Received shapes "
                          f"{[_fmt_shape((None, *s)) for s in c.shapes]}.")
    if rank >= 3:
        c.notes.append(f"Keras axis {axis} → torch dim {dim} (channels first)")
    return _Built(M.Concatenate(dim), tuple(out))


_MERGES = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
           "Maximum": "maximum", "Minimum": "minimum"}


@_builds(*_MERGES)
def _merge(c: _Layer) -> _Built:
    op = _MERGES[c.cls]
    if len(c.shapes) < 2 or (op == "subtract" and len(c.shapes) != 2):
        raise c.error(f"needs {'exactly' if op == 'subtract' else 'at least'} 2 inputs. Received {len(c.shapes)}.")
    first = c.shapes[0]
    for s in c.shapes[1:]:
        if len(s) != len(first) or any(a is not None and b is not None and a != b for a, b in zip(s, first)):
            raise c.error(f"inputs must have the same shape. Received {[_fmt_shape((None, *x)) for x in c.shapes]}.")
    out = tuple(next((s[i] for s in c.shapes if s[i] is not None), None) for i in range(len(first)))
    return _Built(M.Merge(op), out)


@_builds("Dropout", "SpatialDropout1D", "SpatialDropout2D")
def _dropout(c: _Layer) -> _Built:
    shape = c.one_input()
    rate = c.number("rate", 0.5)
    if not 0 <= rate < 1:
        raise c.error(f"rate must be in [0, 1). Received rate={rate}.")
    if c.get("noise_shape") is not None:
        raise c.error("noise_shape is not supported.", UnsupportedError)
    cls = {"Dropout": nn.Dropout, "SpatialDropout1D": nn.Dropout1d, "SpatialDropout2D": nn.Dropout2d}[c.cls]
    return _Built(cls(rate), shape)


@_builds("Activation")
def _activation_layer(c: _Layer) -> _Built:
    shape = c.one_input()
    name = c.activation("activation", None)
    if name in ("softmax", "log_softmax") and len(shape) >= 2:
        c.notes.append("softmax over the channel axis (Keras's last axis → dim 1)")
    return _Built(M.KerasActivation(name), shape)


@_builds("ReLU")
def _relu(c: _Layer) -> _Built:
    shape = c.one_input()
    max_value = c.get("max_value")
    if max_value is not None:
        max_value = c.number("max_value", 0.0)
    module = M.KerasReLU(max_value, c.number("negative_slope", 0.0), c.number("threshold", 0.0))
    return _Built(module, shape)


@_builds("LeakyReLU")
def _leaky_relu(c: _Layer) -> _Built:
    shape = c.one_input()
    slope = c.number("negative_slope", c.number("alpha", 0.3))
    return _Built(nn.LeakyReLU(slope), shape)


@_builds("Softmax")
def _softmax(c: _Layer) -> _Built:
    shape = c.one_input()
    axis = c.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    dim = _torch_dim(c, axis, len(shape) + 1)
    if len(shape) >= 2:
        c.notes.append(f"Keras axis {axis} → torch dim {dim}")
    return _Built(nn.Softmax(dim), shape)


def _pair(c: _Layer, value) -> tuple[int, int]:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_INT for v in value)):
        return value[0], value[1]
    raise c.error(f"padding must be an integer or pairs of non-negative integers. Received padding="
                  f"{c.get('padding')!r}.")


@_builds("ZeroPadding1D", "ZeroPadding2D")
def _zero_padding(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    value = c.get("padding", 1)
    if n == 2 and isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        pads = [_pair(c, v) for v in value]
    elif n == 2:
        pads = [(p, p) for p in c.ints("padding", 2, 1, minimum=0)]
    else:
        pads = [_pair(c, value) if isinstance(value, list) else (c.int("padding", 1, minimum=0),) * 2]
    out = tuple(None if s is None else s + lo + hi for s, (lo, hi) in zip(shape[:-1], pads))
    flat = tuple(p for pair in reversed(pads) for p in pair)
    module = nn.ZeroPad1d(flat) if n == 1 else nn.ZeroPad2d(flat)
    return _Built(module, (*out, shape[-1]))


def _rnn_checks(c: _Layer) -> None:
    for key in ("return_state", "go_backwards", "stateful", "time_major"):
        c.refuse_if(key, True)
    for key in ("dropout", "recurrent_dropout"):
        if c.get(key, 0):
            c.notes.append(f"{key}={c.get(key)} not reproduced (it only acts in training)")


@_builds("LSTM")
def _lstm(c: _Layer) -> _Built:
    shape = c.one_input([3])
    _rnn_checks(c)
    if c.activation() != "tanh" or c.activation("recurrent_activation", "sigmoid") != "sigmoid":
        raise c.error("only activation='tanh' with recurrent_activation='sigmoid' (PyTorch's LSTM) is supported. "
                      f"Received activation={c.get('activation')!r}, recurrent_activation="
                      f"{c.get('recurrent_activation')!r}.", UnsupportedError)
    fin = c.known(shape[-1], "number of input features")
    units = c.int("units")
    seq = c.flag("return_sequences", False)
    module = M.KerasLSTM(fin, units, c.flag("use_bias", True), return_sequences=seq)
    c.notes.append("kernel (in, 4H) → weight_ih (4H, in), recurrent_kernel (H, 4H) → weight_hh (4H, H); "
                   "gates i, f, c, o = torch's i, f, g, o")
    if c.flag("use_bias", True):
        c.notes.append("Keras's single bias → bias_ih; bias_hh zeros")
    c.notes.append("input (N, F, T) is transposed to batch-first (N, T, F) inside")
    out = (shape[0], units) if seq else (units,)
    names = ("kernel", "recurrent_kernel", "bias") if c.flag("use_bias", True) else ("kernel", "recurrent_kernel")
    return _Built(module, out, names)


@_builds("ConvLSTM2D")
def _conv_lstm(c: _Layer) -> _Built:
    shape = c.one_input([5])
    _rnn_checks(c)
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel, stride = c.ints("kernel_size", 2), c.ints("strides", 2, 1)
    dilation = c.ints("dilation_rate", 2, 1)
    padding = c.choice("padding", ("valid", "same"), "valid")
    act = c.activation("activation", "tanh")
    rec = c.activation("recurrent_activation", "hard_sigmoid" if c.keras_major < 3 else "sigmoid")
    if act not in ("tanh", "relu") or rec not in ("sigmoid", "hard_sigmoid", "hard_sigmoid_keras2"):
        raise c.error(f"activation must be 'tanh' or 'relu' and recurrent_activation 'sigmoid' or 'hard_sigmoid'. "
                      f"Received activation={act!r}, recurrent_activation={rec!r}.", UnsupportedError)
    seq = c.flag("return_sequences", False)
    use_bias = c.flag("use_bias", True)
    module = M.KerasConvLSTM2d(cin, filters, kernel, stride, padding, dilation, use_bias,
                               recurrent_activation=rec, activation=act, return_sequences=seq)
    c.notes.append("kernel (*k, in, 4F) → weight_ih (4F, in, *k); recurrent_kernel → weight_hh; "
                   "input (N, C, T, H, W) → (N, T, C, H, W) for cnnkit.nn.ConvLSTM2d")
    out = _spatial_out(c, shape[1:-1], kernel, stride, padding, dilation)
    out_shape = (shape[0], *out, filters) if seq else (*out, filters)
    names = ("kernel", "recurrent_kernel", "bias") if use_bias else ("kernel", "recurrent_kernel")
    return _Built(module, out_shape, names)


@_builds("LocallyConnected1D", "LocallyConnected2D")
def _locally_connected(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    if c.get("implementation", 1) != 1:
        raise c.error(f"only implementation=1 is supported. Received implementation={c.get('implementation')!r}.",
                      UnsupportedError)
    c.choice("padding", ("valid",), "valid")
    spatial = tuple(c.known(s, "input size (locally connected weights are tied to positions)") for s in shape[:-1])
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel, stride = c.ints("kernel_size", n), c.ints("strides", n, 1)
    out = _spatial_out(c, spatial, kernel, stride, "valid", (1,) * n)
    cls = M.KerasLocallyConnected1d if n == 1 else M.KerasLocallyConnected2d
    module = cls(cin, filters, kernel, spatial, stride, bias=c.flag("use_bias", True), activation=c.activation())
    c.notes.append("kernel (L, prod(k)·in, out) kept as is (cnnkit.nn layout = Keras's); bias (*S', out) → (out, *S')")
    return _Built(module, (*out, filters), _bias_names(c))


# --- building -----------------------------------------------------------------------------------


def _key(name: str, taken: set[str]) -> str:
    key = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name) or "layer"
    if key[0].isdigit() or hasattr(nn.ModuleDict, key):
        key = "layer_" + key
    base, i = key, 1
    while key in taken:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


def _module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (BatchNorm's moving statistics included)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _check_stored(c: _Layer, built: _Built, refs: list, path: str) -> dict:
    """Check the stored arrays' count and shapes against the module built from the config (nothing read)."""
    if len(refs) != len(built.weights):
        stored = [f"{r.name} {_fmt_shape(r.shape)}" for r in refs]
        if not refs and built.weights:
            raise c.error(f"weights missing in {path}: expected {list(built.weights)}.")
        raise c.error(f"the config asks for {len(built.weights)} weight arrays {list(built.weights)}; "
                      f"{path} stores {len(refs)}: {stored}.")
    expected = keras_shapes(built.module) if built.weights or built.defaults else {}
    for name, ref in zip(built.weights, refs):
        if tuple(ref.shape) != tuple(expected[name]):
            raise c.error(
                f"Keras weight {name!r} must have shape {_fmt_shape(expected[name])} (from the config and the "
                f"input shape {', '.join(_fmt_shape((None, *s)) for s in c.shapes)}). {path} stores "
                f"{ref.name} with shape {_fmt_shape(ref.shape)}."
            )
    return expected


def _materialise(c: _Layer, built: _Built, refs: list, expected: dict) -> dict:
    """Read the (checked) arrays, convert their layouts and load them into the module, made real."""
    module = built.module
    arrays = {name: torch.from_numpy(ref.read()) for name, ref in zip(built.weights, refs)}
    for name, make in built.defaults.items():
        arrays[name] = make(expected[name])
    state = from_keras(module, arrays) if arrays else {}
    module.to_empty(device="cpu")
    missing, _ = module.load_state_dict(state, strict=False)
    with torch.no_grad():
        for key, buffer in module.named_buffers():
            if key.endswith("num_batches_tracked"):  # BatchNorm keeps its own (uninitialised) counter
                buffer.zero_()
    for key in missing:
        if not key.endswith("num_batches_tracked"):  # pragma: no cover - every layout covers its tensors
            raise c.error(f"internal error: no Keras array for {key!r}.", CnnkitError)
    return {k: tuple(v.shape) for k, v in state.items()}


def _weights_file_cap(elements: int, layers: int) -> int:
    """How many bytes an archive's ``model.weights.h5`` may hold for a config of ``elements`` values.

    16 bytes per value (float64 weights, or float32 weights with an optimizer's two moments), 16 KiB of
    HDF5 metadata per layer and 1 MiB besides. Past 256 MiB the spool is on disk, not in memory.
    """
    return 16 * elements + 16 * 2**10 * (layers + 1) + 2**20


def _convert(kf: KerasFile, channels_last: bool, max_bytes: int) -> LoadedModel:
    path = kf.path
    layers, calls, input_refs, output_refs, model_class = parse_graph(kf.config, path, _BUILDERS)
    by_name = {name: (cls, config) for name, cls, config in layers}
    tensors: dict[tuple[str, int, int], tuple[str, Shape]] = {}
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for name, cls, config in layers:
        keys[name] = _key(name, taken)
        if cls == "InputLayer":
            tensors[(name, 0, 0)] = (keys[name], input_shape(config, f"{path}: input layer {name!r}"))
    for ref in (*input_refs, *output_refs):
        if ref[0] not in by_name:
            raise KerasFileError(
                f"{path}: the model's inputs/outputs name a layer {ref[0]!r} that is not in the config.")
    for ref in input_refs:
        if by_name[ref[0]][0] != "InputLayer" or ref[1:] != (0, 0):
            raise KerasFileError(f"{path}: model input {list(ref)} is not an InputLayer's output.")

    # Storage index for files without layer names on their weight groups (Keras's snake_case rule).
    counts: dict[str, int] = {}
    storage_index = {}
    for name, cls, _ in layers:
        if model_class == "Sequential" and cls == "InputLayer":
            continue
        snake = _snake_case(cls)
        storage_index[name] = counts.get(snake, 0)
        counts[snake] = storage_index[name] + 1

    # 1. Every layer built on the meta device (no memory), in an order where its inputs exist.
    ordered, stuck = topological_order(calls, set(tensors))
    first: dict[str, tuple[_Layer, _Built]] = {}
    order: list[_Call] = []
    for i in ordered:
        name, index, structure = calls[i]
        refs = call_refs(structure)
        cls, config = by_name[name]
        shapes = [tensors[r][1] for r in refs]
        layer = _Layer(name, cls, config, shapes, kf.keras_major)
        try:
            with torch.device("meta"):
                built = _BUILDERS[cls](layer)
        except CnnkitError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError, OverflowError) as error:
            raise KerasFileError(f"Layer {name!r} ({cls}): malformed config ({type(error).__name__}: "
                                 f"{error}).") from None
        if name not in first:
            numel = sum(p.numel() for p in built.module.parameters())
            if numel > MAX_LAYER_PARAMS:
                raise layer.error(f"the config asks for {numel:,} parameters; at most {MAX_LAYER_PARAMS:,} are "
                                  "allowed per layer.")
            first[name] = (layer, built)
        elif keras_shapes(first[name][1].module) != keras_shapes(built.module):
            raise layer.error("a shared layer is called on inputs that need different weight shapes.")
        out_name = f"{keys[name]}:{index}" if index else keys[name]
        tensors[(name, index, 0)] = (out_name, built.output_shape)
        args = tensors[refs[0]][0] if not isinstance(structure, list) else tuple(tensors[r][0] for r in refs)
        order.append(_Call(keys[name], args, out_name))
    if stuck:
        missing = sorted({r for i in stuck for r in call_refs(calls[i][2])} - set(tensors))
        waiting = sorted({calls[i][0] for i in stuck})[:20]
        raise KerasFileError(f"{path}: the layer graph cannot be run: layers {waiting} "
                             f"wait for tensors {[list(m) for m in missing][:5]} that no layer produces "
                             "(a cycle, or a reference to a missing layer or node).")
    for ref in output_refs:
        if tuple(ref) not in tensors:
            raise KerasFileError(f"{path}: model output {list(ref)} is not produced by any layer call.")

    # 2. The memory budget, over all weights and buffers, from the declared shapes alone.
    sizes = {name: _module_bytes(built.module) for name, (_, built) in first.items()}
    total = sum(sizes.values())
    if total > max_bytes:
        largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
        raise ShapeError(
            f"{path}: the config asks for {total:,} bytes of weights and buffers; the budget is max_bytes="
            f"{max_bytes:,} (largest layers: {', '.join(f'{n!r} {b:,}' for n, b in largest)}). If you trust "
            "the file and have the memory, pass a larger max_bytes to cnnkit.keras.load.")

    # 3. The stored arrays listed and checked against the config; nothing read yet.
    elements = sum(t.numel() for _, b in first.values() for t in (*b.module.parameters(), *b.module.buffers()))
    kf.open_weights(_weights_file_cap(elements, len(layers)))
    listed = {}
    stored_bytes = 0
    for name, (layer, built) in first.items():
        refs = kf.weights(name, layer.cls, storage_index.get(name, 0))
        listed[name] = (refs, _check_stored(layer, built, refs, path))
        stored_bytes += sum(r.nbytes for r in refs)
    if stored_bytes > max_bytes:
        raise ShapeError(f"{path}: the weights to read hold {stored_bytes:,} bytes; the budget is max_bytes="
                         f"{max_bytes:,}. If you trust the file, pass a larger max_bytes to cnnkit.keras.load.")

    # 4. Read, convert, load.
    reports: dict[str, LayerConversion] = {}
    for name, (layer, built) in first.items():
        refs, expected = listed[name]
        torch_w = _materialise(layer, built, refs, expected)
        reports[name] = LayerConversion(
            name, layer.cls, repr(built.module).splitlines()[0], tuple(layer.shapes), built.output_shape,
            {n: tuple(v) for n, v in expected.items()}, torch_w, tuple(layer.notes),
            sum(p.numel() for p in built.module.parameters()))

    module = KerasModel(
        {keys[n]: b.module for n, (_, b) in first.items()}, order,
        [tensors[tuple(r)][0] for r in input_refs], [tensors[tuple(r)][0] for r in output_refs],
        [tensors[tuple(r)][1] for r in input_refs], channels_last=channels_last,
        name=str(kf.config.get("config", {}).get("name", "model")) if isinstance(kf.config.get("config"), dict)
        else "model",
    )
    module.eval()
    report = ConversionReport(
        path=path, format=kf.format, keras_version=kf.keras_version, model_class=model_class,
        layers=tuple(reports[n] for n, _, _ in layers if n in reports),
        input_shapes=tuple(tensors[tuple(r)][1] for r in input_refs),
        output_shapes=tuple(tensors[tuple(r)][1] for r in output_refs),
        channels_last=channels_last,
    )
    return LoadedModel(module, report)


def load(path: str | Path, channels_last_input: bool = False, *, max_bytes: int = MAX_BYTES) -> LoadedModel:
    """Convert a Keras model file (``.keras`` archive or legacy ``.h5``) to a PyTorch module.

    Reads the file with ``zipfile``, ``json`` and ``h5py`` only: no TensorFlow, no Keras, no unpickling,
    and no code from the file is run (``Lambda`` layers and custom objects are refused). The file is
    treated as untrusted (see ``docs/keras.md``, "Untrusted files"): only data stored inside it is read
    (no links, external storage or virtual datasets), every array must hold the bytes it declares, and
    the memory it may take is bounded by ``max_bytes`` before anything is read.

    Args:
        path: The ``.keras`` or ``.h5`` file (the format is recognised from the content).
        channels_last_input: If ``True``, the module takes and returns Keras's channels-last tensors
            (``(N, H, W, C)``); by default it takes and returns PyTorch's channels-first ``(N, C, H, W)``.
        max_bytes: The budget for all weights and buffers together (BatchNorm's moving statistics
            included), checked against the shapes the config declares before any array is read; also
            the cap on the arrays read. Default :data:`MAX_BYTES` (4 GiB).

    Returns:
        A :class:`LoadedModel` ``(module, report)``: ``module`` is a :class:`KerasModel` in eval mode;
        ``report`` (:class:`ConversionReport`) lists every layer and layout conversion made.

    Raises:
        UnsupportedError: for a Lambda layer, a custom object, an unknown layer class or option.
        ShapeError: if stored weights disagree with the config, a layer asks for more than
            :data:`MAX_LAYER_PARAMS` parameters, or the model for more than ``max_bytes``.
        KerasFileError: (a ``ValueError``) for a missing, truncated, malformed or hostile file; every
            error from the libraries reading it (h5py, zipfile, zlib, json) arrives as one, naming the file.

    Examples:
        >>> from pathlib import Path
        >>> import cnnkit
        >>> fixtures = Path(cnnkit.__file__).parents[2] / "tests" / "keras" / "fixtures"
        >>> model, report = load(fixtures / "classifier.keras")
        >>> model(torch.zeros(2, 3, 10, 10)).shape                 # NCHW in
        torch.Size([2, 5])
        >>> print(report.layers[0].keras_weights, report.layers[0].torch_weights)
        {'kernel': (3, 3, 3, 4), 'bias': (4,)} {'weight': (4, 3, 3, 3), 'bias': (4,)}
    """
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ShapeError(f"max_bytes must be a positive integer. Received max_bytes={max_bytes!r}.")
    try:
        kf = open_keras_file(path)
        try:
            return _convert(kf, bool(channels_last_input), max_bytes)
        finally:
            kf.close()
    except CnnkitError:
        raise
    except RecursionError:
        raise KerasFileError(f"{path}: the file is nested too deeply to read (RecursionError); it is damaged "
                             "or hostile.") from None
    except MemoryError:
        raise KerasFileError(f"{path}: reading the file ran out of memory (MemoryError); it is damaged or "
                             "declares more than it holds.") from None
    except Exception as error:
        # h5py, zipfile, zlib, struct, numpy: one error naming the file, whatever broke deep inside.
        raise KerasFileError(f"{path}: the file could not be read ({type(error).__name__}: {error}); it is "
                             "damaged or was not written by Keras. Re-save it with Keras "
                             "(model.save('model.keras')) from a copy you trust.") from error
