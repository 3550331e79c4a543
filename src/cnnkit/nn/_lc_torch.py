"""The pure-torch path of :mod:`cnnkit.nn.locally_connected`: forward and both gradients with ``torch.bmm``.

Used by the operators of :mod:`cnnkit.nn._lc_ops` whenever the C kernel does not apply (dtypes other than
float32, devices other than the CPU, no C compiler, ``CNNKIT_NATIVE=0``). Every function reads the input as the
channels-last ``(N, *S, C)`` copy the forward operator makes, gathers each window's patch in Keras's order
(``*kernel_size``, then channels) and multiplies slab by slab of output rows.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = ["SLAB_BYTES", "forward", "grad_input", "grad_weight"]


# Positions are processed in slabs of whole output rows whose gathered patches take about this many bytes:
# the slab's patches, weights and gradients then stay in cache between the gather and the matmuls.
SLAB_BYTES = 1 << 21


def _windows(x_cl: Tensor, kernel_size, stride, dilation) -> Tensor:
    """View ``(N, *O, *k, C)`` of the windows of a channels-last ``(N, *S, C)`` tensor (no copy)."""
    n = len(kernel_size)
    w = x_cl
    for i in range(n):
        w = w.unfold(1 + i, dilation[i] * (kernel_size[i] - 1) + 1, stride[i])  # window dim at the end
    if any(d > 1 for d in dilation):
        w = w[(..., *(slice(None, None, d) for d in dilation))]
    # (N, *O, C, *k) -> (N, *O, *k, C): the Keras patch order, channels fastest.
    return w.permute(0, *range(1, n + 1), *range(n + 2, 2 * n + 2), n + 1)


def _slabs(batch: int, output_size, inputs: int, itemsize: int):
    """``(first row, last row + 1, first position, last position + 1)`` slabs along output dim 0."""
    per_row = math.prod(output_size[1:])
    rows = max(1, SLAB_BYTES // max(1, batch * per_row * inputs * itemsize))  # batch may be 0
    for r0 in range(0, output_size[0], rows):
        r1 = min(r0 + rows, output_size[0])
        yield r0, r1, r0 * per_row, r1 * per_row


def forward(x_cl: Tensor, weight: Tensor, bias: Tensor | None, kernel_size, stride, dilation,
            output_size) -> Tensor:
    """The pure-torch forward: per slab of output rows, gather the patches ``(N, m, K)`` from the
    channels-last input ``(N, *S, C)`` and ``torch.bmm`` them as ``(m, N, K) @ (m, K, out)`` with the slab's
    own weights (a view: the weight is never copied)."""
    batch = x_cl.shape[0]
    positions, inputs, out_channels = weight.shape
    windows = _windows(x_cl, kernel_size, stride, dilation)
    out = x_cl.new_empty((positions, batch, out_channels))
    for r0, r1, l0, l1 in _slabs(batch, output_size, inputs, x_cl.element_size()):
        patches = windows[:, r0:r1].reshape(batch, l1 - l0, inputs)
        torch.bmm(patches.transpose(0, 1), weight[l0:l1], out=out[l0:l1])
    # (L, N, out) -> (N, out, L) in two cheap moves; a direct permute reads with a stride of N·out
    # numbers (often a multiple of 4 KiB, which thrashes the cache).
    out = out.transpose(0, 1).contiguous().transpose(1, 2).reshape(batch, out_channels, *output_size)
    result = torch.empty_like(out, memory_format=torch.contiguous_format).copy_(out)
    if bias is not None:
        result.add_(bias)
    return result


def _batch_last(grad: Tensor) -> Tensor:
    """``(L, N, out)`` copy of the ``(N, out, *output_size)`` gradient, in two cheap moves."""
    batch, out_channels = grad.shape[:2]
    g = grad.reshape(batch, out_channels, math.prod(grad.shape[2:]))  # not -1: a zero-size batch is ambiguous
    return g.transpose(1, 2).contiguous().transpose(0, 1).contiguous()


def grad_weight(grad: Tensor, x_cl: Tensor, kernel_size, stride, dilation) -> Tensor:
    """Pure-torch weight gradient ``(L, K, out)``: per slab, re-gather the patches and ``bmm``."""
    batch, out_channels, *output_size = grad.shape
    g = _batch_last(grad)
    windows = _windows(x_cl, kernel_size, stride, dilation)
    inputs = math.prod(kernel_size) * x_cl.shape[-1]
    grad_w = g.new_empty((g.shape[0], inputs, out_channels))
    for r0, r1, l0, l1 in _slabs(batch, output_size, inputs, g.element_size()):
        patches = windows[:, r0:r1].reshape(batch, l1 - l0, inputs)
        torch.bmm(patches.transpose(0, 1).transpose(1, 2), g[l0:l1], out=grad_w[l0:l1])
    return grad_w


def grad_input(grad: Tensor, weight: Tensor, shape, kernel_size, stride, dilation) -> Tensor:
    """Pure-torch input gradient ``(N, C, *S)``: per slab, ``bmm`` for the patch gradient, then one strided
    ``add_`` per kernel offset to scatter it back onto the input."""
    n = len(kernel_size)
    batch, channels = shape[:2]
    output_size = tuple(grad.shape[2:])
    inputs = weight.shape[1]
    g = _batch_last(grad)
    grad_cl = g.new_zeros((batch, *shape[2:], channels))
    offsets = list(itertools.product(*(range(k) for k in kernel_size)))
    lead = (slice(None),) * (n + 1)
    for r0, r1, l0, l1 in _slabs(batch, output_size, inputs, g.element_size()):
        grad_p = torch.bmm(g[l0:l1], weight[l0:l1].transpose(1, 2))
        grad_p = grad_p.view(r1 - r0, *output_size[1:], batch, *kernel_size, channels)
        sizes = (r1 - r0, *output_size[1:])
        firsts = (r0, *(0,) * (n - 1))
        for offset in offsets:
            window = tuple(
                slice(o * d + s * f, o * d + s * (f + m - 1) + 1, s)
                for o, d, s, f, m in zip(offset, dilation, stride, firsts, sizes)
            )
            grad_cl[(slice(None), *window)].add_(grad_p[(*lead, *offset)].movedim(n, 0))
    return grad_cl.movedim(-1, 1).contiguous()
