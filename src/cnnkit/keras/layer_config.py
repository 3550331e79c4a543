"""One Keras layer's config with checked accessors (:class:`_Layer`), what a builder returns (:class:`_Built`),
and the builder registry keyed by Keras ``class_name``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn

from cnnkit._checks import ntuple
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.keras import modules as M
from cnnkit.keras.model import format_shape
from cnnkit.shapes import conv_output_size

_MAX_INT = 2**31 - 1
Shape = tuple

# --- layer builders ----------------------------------------------------------------------------------


@dataclass
class _Built:
    module: nn.Module
    output_shape: Shape
    weights: tuple[str, ...] = ()  # Keras names of the stored arrays, in storage order
    defaults: dict[str, Callable[[tuple[int, ...]], Tensor]] = field(default_factory=dict)
    # A layer made of other layers (Bidirectional, TimeDistributed, a nested Sequential): one _Part per
    # sub-module with weights, in storage order; ``module``'s own ``weights``/``defaults`` are then unused.
    parts: tuple[_Part, ...] = ()
    #: Keras's own count of non-trainable values when it differs from the stored moving statistics rule.
    keras_non_trainable: int | None = None

    def all_parts(self) -> tuple[_Part, ...]:
        return self.parts or (_Part("", self.module, self.weights, self.defaults, ""),)


@dataclass
class _Part:
    """One sub-module of a composite layer: its weights are stored as ``prefix + name``; in a ``.keras``
    archive they live under the layer group's sub-path ``subpath`` (``forward_layer``, ``layers/conv2d``)."""

    prefix: str
    module: nn.Module
    weights: tuple[str, ...]
    defaults: dict = field(default_factory=dict)
    subpath: str = ""


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
                             f"{format_shape((None, *shape))}.")
        return shape

    def known(self, value, what: str) -> int:
        if value is None:
            raise self.error(f"needs a known {what}; the input shape {format_shape((None, *self.shapes[0]))} "
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

