"""Keras's merging layers: ``Concatenate``, ``Add`` / ``Subtract`` / ``Multiply`` / ``Average`` / ``Maximum`` /
``Minimum``, and InceptionResNetV2's scaled sum."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cnnkit._checks import check_choice

__all__ = ["Concatenate", "Merge", "ScaledSum"]


class Concatenate(nn.Module):
    """Keras ``Concatenate``, on the torch dimension ``dim`` (the Keras axis mapped to channels first)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(inputs), self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _fold(fn):
    return lambda ts: functools.reduce(fn, ts)


# Broadcasting over axes of size 1, as Keras 3's merge layers.
_MERGES: dict[str, Callable[[list[Tensor]], Tensor]] = {
    "add": _fold(torch.add),
    "subtract": lambda ts: ts[0] - ts[1],
    "multiply": _fold(torch.mul),
    "average": lambda ts: functools.reduce(torch.add, ts) / len(ts),
    "maximum": _fold(torch.maximum),
    "minimum": _fold(torch.minimum),
}


class Merge(nn.Module):
    """Keras ``Add`` / ``Subtract`` / ``Multiply`` / ``Average`` / ``Maximum`` / ``Minimum`` (same shapes).

    Examples:
        >>> Merge("add")([torch.ones(2), torch.ones(2)])
        tensor([2., 2.])
    """

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = check_choice(op, tuple(_MERGES), "op")

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return _MERGES[self.op](list(inputs))

    def extra_repr(self) -> str:
        return repr(self.op)


class ScaledSum(nn.Module):
    """``inputs[0] + scale · inputs[1]`` (InceptionResNetV2's ``CustomScaleLayer``)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return inputs[0] + self.scale * inputs[1]

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
