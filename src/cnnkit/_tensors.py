"""Small tensor helpers shared across packages."""

from __future__ import annotations

from torch import Tensor

__all__ = ["tensors_in"]


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
