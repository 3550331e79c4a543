"""Small helpers shared by the layers in :mod:`cnnkit.nn` (argument checks, Keras weight exchange)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cnnkit._checks import check_choice, is_int, ntuple
from cnnkit.errors import ShapeError
from cnnkit.layouts import from_keras, keras_shapes, to_keras

__all__: list[str] = []

PaddingArg = str | int | Sequence[int]
SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1, or a ``ShapeError`` naming ``name``."""
    if not is_int(value) or value < 1:
        raise ShapeError(f"{name} must be a positive integer. Received {name}={value!r}.")
    return int(value)


def check_padding(padding: PaddingArg, n: int, choices: Sequence[str] = ("valid", "same")):
    """A padding string from ``choices``, or a tuple of ``n`` non-negative ints."""
    if isinstance(padding, str):
        return check_choice(padding, tuple(choices), "padding")
    return ntuple(padding, n, "padding", minimum=0)


def shape_text(shape: Sequence[int]) -> str:
    """``(2, 3)`` → ``"(2, 3)"``; ``(4,)`` → ``"(4,)"``."""
    return str(tuple(int(s) for s in shape))


class KerasWeightsMixin:
    """``keras_weights()`` / ``load_keras_weights()`` for a module with a registered Keras layout."""

    def keras_weights(self) -> dict[str, Tensor]:
        """The weights as Keras's ``get_weights()`` holds them, by name and in that order (copies)."""
        return {k: v.clone(memory_format=torch.contiguous_format) for k, v in to_keras(self).items()}

    def load_keras_weights(self, arrays: Mapping[str, Any] | Sequence[Any]) -> None:
        """Load Keras arrays: a name → array mapping (names as :meth:`keras_weights`) or a list in
        ``get_weights()`` order. Every shape is checked before anything is written."""
        if not isinstance(arrays, Mapping):
            names = list(keras_shapes(self))
            arrays = list(arrays)
            if len(arrays) != len(names):
                raise ShapeError(
                    f"{type(self).__name__} expects {len(names)} Keras arrays in get_weights() order "
                    f"{names}. Received {len(arrays)} arrays."
                )
            arrays = dict(zip(names, arrays))
        state = from_keras(self, arrays)
        with torch.no_grad():
            for name, value in state.items():
                getattr(self, name).copy_(value)
