"""The C bridge of :mod:`cnnkit.nn.locally_connected`: calling ``csrc/locally_connected.c`` through ctypes.

The kernel is built on first use by :mod:`cnnkit._native` (key ``"nn.locally_connected"``, the source
``cnnkit/nn/csrc/locally_connected.c``). :func:`library` says whether it applies to the tensors at hand (CPU,
float32, non-empty, the build available); :func:`forward`, :func:`grad_weight` and :func:`grad_input` lay the
arguments out as the C functions expect and call them. The kernel reads the patches straight from the
channels-last copy of the input, runs each position's products in register tiles, in parallel, and reads and
writes torch's layouts ``(N, C, *S)`` and ``(N, F, *output_size)`` itself.
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch
from torch import Tensor

from cnnkit import _native

__all__ = ["forward", "grad_input", "grad_weight", "library", "patch_offsets", "use_native"]

NAME = "nn.locally_connected"
use_native = True  # False forces the torch path (tests compare the two)


def library(*tensors: Tensor | None) -> ctypes.CDLL | None:
    """The C kernel if it applies to these tensors (CPU float32, non-empty; ``None`` entries are skipped),
    else None."""
    tensors = [t for t in tensors if t is not None]
    if not use_native or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if any(t.numel() == 0 for t in tensors):
        return None
    return _native.load(NAME)


_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_native.declare(NAME, {  # sizes are int64: a bare Python int would pass as a C int
    # each returns 0, or -1 when its scratch buffers could not be allocated
    # x, N, C, S, X, out, threads
    "lc_pack_input": ([_p, _i64, _i64, _i64, _i64, _p, _i32], _i32),
    # x, N, X, offsets, L, KK, C, w, bias, F, y, threads
    "lc_forward": ([_p, _i64, _i64, _p, _i64, _i64, _i64, _p, _p, _i64, _p, _i32], _i32),
    # x, N, X, offsets, L, KK, C, g, F, gw, threads
    "lc_grad_weight": ([_p, _i64, _i64, _p, _i64, _i64, _i64, _p, _i64, _p, _i32], _i32),
    # offsets, L, KK, C, w, F, g, N, S, gx, per_row, band, threads
    "lc_grad_input": ([_p, _i64, _i64, _i64, _p, _i64, _p, _i64, _i64, _p, _i64, _i64, _i32], _i32),
    "lc_vector_width": ([], _i32),
    "lc_build": ([], ctypes.c_char_p),  # e.g. b"AVX2+FMA, 8-float vectors, 3x4 tile"
})


@functools.lru_cache(maxsize=64)
def patch_offsets(padded_size: tuple, kernel_size: tuple, stride: tuple, dilation: tuple, channels: int,
                  output_size: tuple) -> Tensor:
    """``(L, prod(kernel_size))`` int64: where each patch's run of channels starts in a channels-last sample.

    ``patch[n, l, kk·C + c] = x_cl.view(N, -1)[n, offsets[l, kk] + c]``, with ``l`` and ``kk`` row-major.
    """
    n = len(padded_size)
    cpu = {"dtype": torch.int64, "device": "cpu"}  # the C kernel reads it: never torch's default device
    total = torch.zeros((), **cpu)
    for i in range(n):
        step = math.prod(padded_size[i + 1:]) * channels
        at_out, at_kernel = [1] * (2 * n), [1] * (2 * n)
        at_out[i], at_kernel[n + i] = output_size[i], kernel_size[i]
        total = (total + (torch.arange(output_size[i], **cpu) * (stride[i] * step)).view(at_out)
                 + (torch.arange(kernel_size[i], **cpu) * (dilation[i] * step)).view(at_kernel))
    return total.reshape(math.prod(output_size), math.prod(kernel_size)).contiguous()


def _ptr(t: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("LocallyConnected: the C kernel could not allocate its scratch buffers.")


def forward(lib: ctypes.CDLL, input: Tensor, weight: Tensor, bias: Tensor | None, kernel_size: tuple,
            stride: tuple, dilation: tuple, output_size: tuple, stride_x: int) -> tuple[Tensor, Tensor]:
    """The output ``(N, out, *output_size)`` and the ``(N, stride_x)`` channels-last copy of the input."""
    threads = torch.get_num_threads()
    batch, channels, *spatial = input.shape
    input, weight = input.resolve_neg().contiguous(), weight.resolve_neg().contiguous()
    bias = None if bias is None else bias.resolve_neg().contiguous()
    positions, _, out_channels = weight.shape
    offsets = patch_offsets(tuple(spatial), kernel_size, stride, dilation, channels, output_size)
    x_cl = input.new_empty((batch, stride_x))
    _check(lib.lc_pack_input(_ptr(input), batch, channels, math.prod(spatial), stride_x, _ptr(x_cl), threads))
    y = input.new_empty((batch, out_channels, *output_size))
    _check(lib.lc_forward(_ptr(x_cl), batch, stride_x, _ptr(offsets), positions, offsets.shape[1], channels,
                          _ptr(weight), _ptr(bias), out_channels, _ptr(y), threads))
    return y, x_cl


def grad_weight(lib: ctypes.CDLL, grad: Tensor, x_cl: Tensor, input_shape: tuple, kernel_size: tuple,
                stride: tuple, dilation: tuple) -> Tensor:
    """The ``(L, K, out)`` weight gradient from the forward's channels-last copy ``x_cl`` of the input."""
    batch, channels, *spatial = input_shape
    out_channels, *output_size = grad.shape[1:]
    grad = grad.resolve_neg().contiguous()
    offsets = patch_offsets(tuple(spatial), kernel_size, stride, dilation, channels, tuple(output_size))
    positions, kernel_offsets = offsets.shape
    grad_w = grad.new_empty((positions, kernel_offsets * channels, out_channels))
    _check(lib.lc_grad_weight(_ptr(x_cl), batch, x_cl.shape[1], _ptr(offsets), positions, kernel_offsets, channels,
                              _ptr(grad), out_channels, _ptr(grad_w), torch.get_num_threads()))
    return grad_w


def grad_input(lib: ctypes.CDLL, grad: Tensor, weight: Tensor, input_shape: tuple, kernel_size: tuple,
               stride: tuple, dilation: tuple) -> Tensor:
    """The ``(N, C, *S)`` gradient of the (padded) input of shape ``input_shape``."""
    threads = torch.get_num_threads()
    batch, channels, *spatial = input_shape
    out_channels, *output_size = grad.shape[1:]
    grad, weight = grad.resolve_neg().contiguous(), weight.resolve_neg().contiguous()
    offsets = patch_offsets(tuple(spatial), kernel_size, stride, dilation, channels, tuple(output_size))
    positions, kernel_offsets = offsets.shape
    # Bands of output rows far enough apart that every other band touches disjoint inputs.
    rows = output_size[0]
    band = max(-(-rows // (2 * threads)), -(-dilation[0] * (kernel_size[0] - 1) // stride[0]), 1)
    grad_x = grad.new_empty(input_shape)
    _check(lib.lc_grad_input(_ptr(offsets), positions, kernel_offsets, channels, _ptr(weight), out_channels,
                             _ptr(grad), batch, math.prod(spatial), _ptr(grad_x), positions // rows, band, threads))
    return grad_x
