"""Small tensor helpers shared across packages."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["argmax", "tensors_in"]


def argmax(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """``x.argmax(dim, keepdim)``: the same indices (the first maximum; a NaN counts as the maximum), faster on CPU.

    torch's CPU argmax over a dimension that is not the last (the class axis of (N, C, H, W) scores) is about ten
    times slower than ``torch.max(x, dim)``, which returns the same indices: 13 ms against 1 ms for scores of
    shape (8, 5, 96, 96) on 2 threads (torch 2.14.1, the 2-core AVX2 host).

    Examples:
        >>> argmax(torch.tensor([[1.0, 3.0], [2.0, 3.0]]), 0)
        tensor([1, 0])
    """
    return torch.max(x, dim, keepdim=keepdim).indices


def tensors_in(value) -> list[Tensor]:
    """Every tensor in ``value``, looking through tuples, lists and dict values (depth first, in order).

    Examples:
        >>> import torch
        >>> [t.item() for t in tensors_in((torch.tensor(1), [2, {"a": torch.tensor(3)}]))]
        [1, 3]
    """
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []
