"""``KerasModel``: the module :func:`cnnkit.keras.load` returns, running the converted layers in graph order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from cnnkit.errors import ShapeError

__all__ = ["KerasModel", "format_shape"]


def format_shape(shape: Sequence) -> str:
    """A Keras shape as Keras prints it, ``None`` for a free size.

    Examples:
        >>> format_shape((None, 28, 28, 1)), format_shape((7,))
        ('(None, 28, 28, 1)', '(7,)')
    """
    inner = ", ".join("None" if s is None else str(s) for s in shape)
    return f"({inner}{',' if len(shape) == 1 else ''})"

Shape = tuple

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
                                 f"{format_shape(expected)[1:]} ({layout}; None = any). Received {got}.")
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

