"""cnnkit._tensors: small tensor helpers, checked against the torch functions they stand for."""

from __future__ import annotations

import pytest
import torch

from cnnkit._tensors import argmax


@pytest.mark.parametrize("shape, dim", [((8, 5, 9, 7), 1), ((5, 9, 7), 0), ((4, 3), 1), ((3, 6, 2), 2),
                                        ((2, 3, 4, 5, 6), 1), ((7,), 0), ((3, 4), -1)])
@pytest.mark.parametrize("kind", ["random", "ties", "nan", "int", "float64"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax_equals_torch_argmax(shape, dim, kind, keepdim):
    g = torch.Generator().manual_seed(len(shape) * 10 + dim)
    x = torch.randn(shape, generator=g)
    if kind == "ties":  # the first maximum wins
        x = torch.randint(0, 2, shape, generator=g).float()
    elif kind == "nan":  # a NaN counts as the maximum
        x[x > 1.0] = float("nan")
    elif kind == "int":
        x = torch.randint(0, 3, shape, generator=g)
    elif kind == "float64":
        x = x.double()
    assert torch.equal(argmax(x, dim, keepdim), x.argmax(dim, keepdim=keepdim))
