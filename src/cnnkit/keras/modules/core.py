"""Keras's core layers: ``Dense``, ``Embedding``, and the graph's plumbing (a nested ``Sequential``, layers that
do nothing at inference, a ``keras.ops`` call with one constant)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.errors import ShapeError
from cnnkit.keras.modules._axes import to_channels_first, to_channels_last
from cnnkit.keras.modules.activations import _ActivationMixin

__all__ = ["Identity", "KerasDense", "KerasEmbedding", "KerasSequential", "ScalarOp"]


class KerasDense(_ActivationMixin, nn.Linear):
    """Keras ``Dense``: ``nn.Linear`` on the channel axis, then the activation.

    On a rank-2 input ``(N, in_features)`` this is ``nn.Linear``; on a channels-first ``(N, C, *S)`` input
    it acts on dim 1 (Keras's last axis) and returns ``(N, out_features, *S)``.

    Examples:
        >>> KerasDense(5, 3, activation="relu")(torch.zeros(2, 5, 7)).shape
        torch.Size([2, 3, 7])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, activation: str = "linear",
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._set_activation(activation)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.shape[1] != self.in_features:
            raise ShapeError(
                f"KerasDense expects input (N, {self.in_features}) or (N, {self.in_features}, …) with the "
                f"features on dim 1. Received input of shape {tuple(input.shape)}."
            )
        out = to_channels_first(super().forward(to_channels_last(input)))
        return self._act(out)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._activation_repr()


class KerasEmbedding(nn.Embedding):
    """Keras ``Embedding``: integer (or integral float) ids ``(N, *S)`` → ``(N, D, *S)`` channels first.

    Examples:
        >>> KerasEmbedding(10, 4)(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 4, 3])
    """

    def forward(self, input: Tensor) -> Tensor:
        if input.is_floating_point():
            input = input.long()
        return to_channels_first(super().forward(input))


_SCALAR_OPS = {"add": torch.add, "subtract": torch.sub, "multiply": torch.mul, "divide": torch.div}


class ScalarOp(nn.Module):
    """A Keras 3 ``keras.ops`` call with one constant (``x + 3``, ``x * (1/6)``, ``3 - x`` …) in a functional graph.

    Examples:
        >>> ScalarOp("subtract", 1.0, tensor_first=False)(torch.tensor([3.0]))
        tensor([-2.])
    """

    def __init__(self, op: str, value: float, tensor_first: bool = True) -> None:
        super().__init__()
        self.op = check_choice(op, tuple(_SCALAR_OPS), "op")
        self.value, self.tensor_first = float(value), bool(tensor_first)

    def forward(self, input: Tensor) -> Tensor:
        fn = _SCALAR_OPS[self.op]
        if self.tensor_first:
            return fn(input, self.value)
        return fn(torch.full_like(input, self.value), input)

    def extra_repr(self) -> str:
        return f"{self.op!r}, {self.value!r}" + ("" if self.tensor_first else ", tensor_first=False")


class KerasSequential(nn.Module):
    """A Sequential model nested inside a functional one (ConvNeXt's stem): its layers in order."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(layers)

    def forward(self, input: Tensor) -> Tensor:
        for layer in self.layers.values():
            input = layer(input)
        return input


class Identity(nn.Module):
    """A layer that does nothing at inference (``GaussianNoise``, ``GaussianDropout``, ``ActivityRegularization``)."""

    def __init__(self, keras_class: str = "") -> None:
        super().__init__()
        self.keras_class = keras_class

    def forward(self, input: Tensor) -> Tensor:
        return input

    def extra_repr(self) -> str:
        return repr(self.keras_class) if self.keras_class else ""
