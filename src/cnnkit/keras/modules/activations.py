"""Keras's activations: the ``activation`` argument every layer takes, and the activation layers
(``Activation``, ``ReLU``, ``PReLU``, ``ELU``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice

__all__ = ["ACTIVATIONS", "KerasActivation", "KerasELU", "KerasPReLU", "KerasReLU", "activation"]


def _hard_sigmoid_keras2(t: Tensor) -> Tensor:
    return (t * 0.2 + 0.5).clamp(0.0, 1.0)


# Keras activation name → function on a channels-first tensor (softmax over the channel axis, dim 1).
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda t: t,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda t: F.softmax(t, dim=1),
    "log_softmax": lambda t: F.log_softmax(t, dim=1),
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,  # Keras's default approximate=False
    "swish": F.silu,
    "silu": F.silu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "hard_sigmoid": F.hardsigmoid,  # Keras 3: relu6(x + 3) / 6
    "hard_sigmoid_keras2": _hard_sigmoid_keras2,  # Keras 2: clip(0.2·x + 0.5, 0, 1)
    "hard_silu": F.hardswish,
    "hard_swish": F.hardswish,
    "relu6": F.relu6,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.2),  # Keras's default negative_slope
    "mish": F.mish,
    "exponential": torch.exp,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The function of Keras activation ``name`` for channels-first tensors.

    Examples:
        >>> activation("hard_sigmoid")(torch.tensor([1.0])), activation("hard_sigmoid_keras2")(torch.tensor([1.0]))
        (tensor([0.6667]), tensor([0.7000]))
    """
    return ACTIVATIONS[check_choice(name, tuple(ACTIVATIONS), "activation")]


class _ActivationMixin:
    """The Keras ``activation`` argument, applied after the layer's own op."""

    def _set_activation(self, name: str) -> None:
        self.activation = name
        self._act = activation(name)

    def _activation_repr(self) -> str:
        return "" if self.activation == "linear" else f", activation={self.activation!r}"


class KerasActivation(nn.Module):
    """Keras's ``Activation(name)`` (also the ``activation`` argument of Dense, Conv*D …).

    Examples:
        >>> KerasActivation("softmax")(torch.zeros(1, 4, 2)).sum(1)
        tensor([[1., 1.]])
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = activation(name)
        self.name = name

    def forward(self, input: Tensor) -> Tensor:
        return self.fn(input)

    def extra_repr(self) -> str:
        return repr(self.name)


class KerasReLU(nn.Module):
    """Keras's ``ReLU(max_value, negative_slope, threshold)``: ``x`` for ``x ≥ threshold``, else
    ``negative_slope·(x − threshold)``, then capped at ``max_value``.

    Examples:
        >>> KerasReLU(max_value=1.0, negative_slope=0.1, threshold=0.5)(torch.tensor([-0.5, 0.7, 3.0]))
        tensor([-0.1000,  0.7000,  1.0000])
    """

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0):
        super().__init__()
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope = float(negative_slope)
        self.threshold = float(threshold)

    def forward(self, input: Tensor) -> Tensor:
        out = torch.where(input >= self.threshold, input, self.negative_slope * (input - self.threshold))
        return out if self.max_value is None else out.clamp(max=self.max_value)

    def extra_repr(self) -> str:
        return f"max_value={self.max_value}, negative_slope={self.negative_slope}, threshold={self.threshold}"


class KerasPReLU(nn.Module):
    """Keras ``PReLU``: ``max(x, 0) + alpha · min(x, 0)``, ``alpha`` of Keras's shape (channels-last, shared
    axes of size 1), moved to channels first.

    Examples:
        >>> KerasPReLU((1, 1, 3))(torch.zeros(1, 3, 2, 2)).shape
        torch.Size([1, 3, 2, 2])
    """

    def __init__(self, alpha_shape: Sequence[int]) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.empty(tuple(alpha_shape)))

    def forward(self, input: Tensor) -> Tensor:
        alpha = self.alpha
        if alpha.dim() >= 2:
            alpha = alpha.movedim(-1, 0)
        return F.relu(input) - alpha * F.relu(-input)


class KerasELU(nn.Module):
    """Keras ``ELU(alpha)``: ``x`` for ``x > 0``, else ``alpha·(exp(x) − 1)``."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, input: Tensor) -> Tensor:
        return F.elu(input, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
