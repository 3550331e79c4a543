"""Keras's pooling: ``MaxPooling*D`` / ``AveragePooling*D`` with TensorFlow's ``"same"`` rule, and the global
poolings."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.shapes import tf_same_padding

__all__ = ["GlobalPool", "KerasPool"]


class KerasPool(nn.Module):
    """Keras ``MaxPooling*D`` / ``AveragePooling*D`` with ``padding="same"`` (TensorFlow's rule).

    The input is padded with ``tf_same_padding`` amounts (odd one at the end); max pooling pads with
    ``-inf`` so padding never wins, average pooling divides each window's sum by its number of real
    inputs (padding is not counted), as TensorFlow does.

    Examples:
        >>> KerasPool("average", 2, 2, 2)(torch.ones(1, 1, 3, 3))
        tensor([[[[1., 1.],
                  [1., 1.]]]])
    """

    def __init__(self, mode: str, ndim: int, kernel_size: Sequence[int] | int, stride: Sequence[int] | int):
        super().__init__()
        self.mode = check_choice(mode, ("max", "average"), "mode")
        self.ndim = ndim
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, Sequence) else (kernel_size,) * ndim
        self.stride = tuple(stride) if isinstance(stride, Sequence) else (stride,) * ndim

    def forward(self, input: Tensor) -> Tensor:
        pads = [tf_same_padding(int(s), k, st) for s, k, st in zip(input.shape[2:], self.kernel_size, self.stride)]
        flat = [p for pair in reversed(pads) for p in pair]
        if self.mode == "max":
            padded = F.pad(input, flat, value=-math.inf)
            return (F.max_pool1d if self.ndim == 1 else F.max_pool2d)(padded, self.kernel_size, self.stride)
        pool = F.avg_pool1d if self.ndim == 1 else F.avg_pool2d
        sums = pool(F.pad(input, flat), self.kernel_size, self.stride)
        ones = torch.ones((1, 1, *input.shape[2:]), dtype=input.dtype, device=input.device)
        counts = pool(F.pad(ones, flat), self.kernel_size, self.stride)
        return sums / counts

    def extra_repr(self) -> str:
        return f"{self.mode!r}, kernel_size={self.kernel_size}, stride={self.stride}, padding='same'"


class GlobalPool(nn.Module):
    """Keras ``GlobalMax/AveragePooling*D``: ``(N, C, *S)`` → ``(N, C)`` (or ``(N, C, 1, …)`` with keepdims).

    Examples:
        >>> GlobalPool("max", 1)(torch.arange(6.0).reshape(1, 2, 3))
        tensor([[2., 5.]])
    """

    def __init__(self, mode: str, ndim: int, keepdims: bool = False) -> None:
        super().__init__()
        self.mode = check_choice(mode, ("max", "average"), "mode")
        self.ndim = ndim
        self.keepdims = bool(keepdims)

    def forward(self, input: Tensor) -> Tensor:
        dims = tuple(range(2, 2 + self.ndim))
        if self.mode == "max":
            return input.amax(dims, keepdim=self.keepdims)
        return input.mean(dims, keepdim=self.keepdims)

    def extra_repr(self) -> str:
        return f"{self.mode!r}, ndim={self.ndim}" + (", keepdims=True" if self.keepdims else "")
