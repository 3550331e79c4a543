"""Locally connected layers: a convolution whose filters are not shared between output positions.

The functional op :func:`locally_connected_nd` holds the math once; :func:`locally_connected1d`,
:func:`locally_connected2d` and the modules :class:`LocallyConnected1d`, :class:`LocallyConnected2d` are
thin rank-specific wrappers over it.

Weight layout (torch and Keras alike)
-------------------------------------
The kernel is ``(L, K, out_channels)`` with ``L = prod(output_size)`` output positions in row-major
order (for 2-D: ``l = i·W' + j``) and ``K = prod(kernel_size)·in_channels`` inputs per patch. A patch is
flattened **row-major over (kh, kw, in_channels)** — Keras/TensorFlow's channels-last order, channels
varying fastest::

    k = (a·kw + b)·in_channels + c     # kernel row a, kernel column b, input channel c

This is exactly the ``kernel`` that Keras's ``LocallyConnected2D`` (``implementation=1``) returns from
``get_weights()``, so the torch ``weight`` needs no conversion. It is also the fastest order for torch on
CPU: patches are gathered from a channels-last copy of the input in runs of ``kw·in_channels``
contiguous numbers. The bias is ``(out_channels, *output_size)`` in torch (it is added to the
``(N, out, H', W')`` output) and ``(*output_size, out_channels)`` in Keras.

Two implementations, one operator
---------------------------------
The op is registered with :mod:`torch.library` as ``cnnkit::locally_connected`` (forward, which also
returns the channels-last copy of the input that the weight gradient reads) plus
``cnnkit::locally_connected_grad_weight`` and ``cnnkit::locally_connected_grad_input``, with fake
implementations and ``register_autograd``: ``torch.compile(fullgraph=True)`` and ``torch.export`` see one
node each. Inside, each operator runs

* the C kernel (``csrc/locally_connected.c``, built on first use by :mod:`cnnkit._native`) for float32 on
  CPU: it reads the patches straight from the channels-last input, runs each position's products in
  register tiles, in parallel, and reads and writes torch's layouts itself;
* else the pure-torch path (other dtypes and devices, no C compiler, ``CNNKIT_NATIVE=0``): gathered
  patches and ``torch.bmm`` per slab of output rows.

Both give the same numbers up to rounding; the tests hold both to the same references.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit import _native, _ops
from cnnkit._checks import check_bool, check_choice, ntuple
from cnnkit.errors import ShapeError
from cnnkit.explainers.layers import dot, expect_channels, expect_rank, x
from cnnkit.explainers.registry import LayerReport, register_explainer
from cnnkit.init import fans, glorot_uniform_, register_initializer
from cnnkit.layouts import KerasLayout, register_layout
from cnnkit.nn._common import (
    SPATIAL,
    KerasWeightsMixin,
    PaddingArg,
    check_padding,
    positive_int,
    shape_text,
)
from cnnkit.shapes import conv_output_size, describe_conv_size, padding_amounts

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "locally_connected1d",
    "locally_connected2d",
    "locally_connected_nd",
]

INITS = ("torch", "keras")


# --- the op ------------------------------------------------------------------------------------------


# Positions are processed in slabs of whole output rows whose gathered patches take about this many bytes:
# the slab's patches, weights and gradients then stay in cache between the gather and the matmuls.
_SLAB_BYTES = 1 << 21


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
    rows = max(1, _SLAB_BYTES // max(1, batch * per_row * inputs * itemsize))  # batch may be 0
    for r0 in range(0, output_size[0], rows):
        r1 = min(r0 + rows, output_size[0])
        yield r0, r1, r0 * per_row, r1 * per_row


def _sample_stride(per_sample: int) -> int:
    """Floats from one sample to the next in the channels-last copy of the input: ``per_sample``, plus 16
    when that is a multiple of 512 floats (2 KiB). The weight gradient reads the batch's patches that many
    floats apart; at a multiple of 4 KiB they all fall into one L1 set (measured on one thread, the
    benchmark layer's 32 samples of 32·32·16: 7.0 ms → 5.5 ms for that product)."""
    return per_sample + 16 if per_sample % 512 == 0 else per_sample


def _channels_last_view(x_cl: Tensor, shape: Sequence[int]) -> Tensor:
    """``(N, *S, C)`` view of the ``(N, X)`` channels-last copy of an input of ``shape`` ``(N, C, *S)``."""
    return x_cl[:, :math.prod(shape[1:])].view(shape[0], *shape[2:], shape[1])


def _torch_forward(x_cl: Tensor, weight: Tensor, bias: Tensor | None, kernel_size, stride, dilation,
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


def _torch_grad_weight(grad: Tensor, x_cl: Tensor, kernel_size, stride, dilation) -> Tensor:
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


def _torch_grad_input(grad: Tensor, weight: Tensor, shape, kernel_size, stride, dilation) -> Tensor:
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


# --- the C kernel --------------------------------------------------------------------------------------

_use_native = True  # False forces the torch path (tests compare the two)


def _kernel(*tensors: Tensor | None) -> ctypes.CDLL | None:
    """The C kernel if it applies to these tensors (CPU float32, non-empty; ``None`` entries are skipped),
    else None."""
    tensors = [t for t in tensors if t is not None]
    if not _use_native or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if any(t.numel() == 0 for t in tensors):
        return None
    return _native.load("nn.locally_connected")


_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_native.declare("nn.locally_connected", {  # sizes are int64: a bare Python int would pass as a C int
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
def _patch_offsets(padded_size: tuple, kernel_size: tuple, stride: tuple, dilation: tuple, channels: int,
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


# --- the registered operators ---------------------------------------------------------------------------
#
# The op is three operators of the "cnnkit" namespace, so that torch.compile(fullgraph=True) and
# torch.export see one opaque node each instead of tracing into ctypes: the forward (which also returns the
# channels-last copy of the input that the weight gradient reads) and the two gradients. Each runs the C
# kernel (csrc/locally_connected.c, float32 on CPU) when it applies, else the pure-torch functions above;
# their fake implementations give the shapes. Torch's layouts in and out: the C kernel reads and writes
# (N, C, *S) and (N, F, *output_size) itself, with only the channels-last copy of the input in between.

_FORWARD_SCHEMA = ("(Tensor input, Tensor weight, Tensor? bias, int[] kernel_size, int[] stride, int[] dilation, "
                   "int[] output_size) -> (Tensor, Tensor)")
_GRAD_SCHEMA = ("(Tensor grad, Tensor {0}, SymInt[] input_shape, int[] kernel_size, int[] stride, int[] dilation) "
                "-> Tensor")


@torch.library.custom_op("cnnkit::locally_connected", mutates_args=(), schema=_FORWARD_SCHEMA)
def _forward_op(input: Tensor, weight: Tensor, bias: Tensor | None, kernel_size: Sequence[int],
                stride: Sequence[int], dilation: Sequence[int], output_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(N, out, *output_size)`` output of the (already padded) input, and the ``(N, X)`` channels-last copy
    of the input (``X = _sample_stride(C·prod(S))``, zero-padded) that the weight gradient reads."""
    kernel_size, stride, dilation, output_size = map(tuple, (kernel_size, stride, dilation, output_size))
    batch, channels, *spatial = input.shape
    per_sample = channels * math.prod(spatial)
    stride_x = _sample_stride(per_sample)
    lib = _kernel(input, weight, bias)
    if lib is None:
        x_cl = input.new_zeros((batch, stride_x))
        _channels_last_view(x_cl, input.shape).copy_(input.movedim(1, -1))
        y = _torch_forward(_channels_last_view(x_cl, input.shape), weight, bias, kernel_size, stride, dilation,
                           output_size)
        return y, x_cl
    threads = torch.get_num_threads()
    input, weight = input.resolve_neg().contiguous(), weight.resolve_neg().contiguous()
    bias = None if bias is None else bias.resolve_neg().contiguous()
    positions, _, out_channels = weight.shape
    offsets = _patch_offsets(tuple(spatial), kernel_size, stride, dilation, channels, output_size)
    x_cl = input.new_empty((batch, stride_x))
    _check(lib.lc_pack_input(_ptr(input), batch, channels, math.prod(spatial), stride_x, _ptr(x_cl), threads))
    y = input.new_empty((batch, out_channels, *output_size))
    _check(lib.lc_forward(_ptr(x_cl), batch, stride_x, _ptr(offsets), positions, offsets.shape[1], channels,
                          _ptr(weight), _ptr(bias), out_channels, _ptr(y), threads))
    return y, x_cl


@_forward_op.register_fake
def _forward_fake(input, weight, bias, kernel_size, stride, dilation, output_size):
    batch, channels, *spatial = input.shape
    return (input.new_empty((batch, weight.shape[2], *output_size)),
            input.new_empty((batch, _sample_stride(channels * math.prod(spatial)))))


@torch.library.custom_op("cnnkit::locally_connected_grad_weight", mutates_args=(),
                         schema=_GRAD_SCHEMA.format("x_cl"))
def _grad_weight_op(grad: Tensor, x_cl: Tensor, input_shape: Sequence[int], kernel_size: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """``(L, K, out)`` weight gradient from the ``(N, out, *output_size)`` gradient and the forward's
    channels-last copy ``x_cl`` of the input of shape ``input_shape``."""
    kernel_size, stride, dilation, input_shape = map(tuple, (kernel_size, stride, dilation, input_shape))
    lib = _kernel(grad, x_cl)
    if lib is None:
        return _torch_grad_weight(grad, _channels_last_view(x_cl, input_shape), kernel_size, stride, dilation)
    batch, channels, *spatial = input_shape
    out_channels, *output_size = grad.shape[1:]
    grad = grad.resolve_neg().contiguous()
    offsets = _patch_offsets(tuple(spatial), kernel_size, stride, dilation, channels, tuple(output_size))
    positions, kernel_offsets = offsets.shape
    grad_w = grad.new_empty((positions, kernel_offsets * channels, out_channels))
    _check(lib.lc_grad_weight(_ptr(x_cl), batch, x_cl.shape[1], _ptr(offsets), positions, kernel_offsets, channels,
                              _ptr(grad), out_channels, _ptr(grad_w), torch.get_num_threads()))
    return grad_w


@_grad_weight_op.register_fake
def _grad_weight_fake(grad, x_cl, input_shape, kernel_size, stride, dilation):
    return grad.new_empty((math.prod(grad.shape[2:]), math.prod(kernel_size) * input_shape[1], grad.shape[1]))


@torch.library.custom_op("cnnkit::locally_connected_grad_input", mutates_args=(),
                         schema=_GRAD_SCHEMA.format("weight"))
def _grad_input_op(grad: Tensor, weight: Tensor, input_shape: Sequence[int], kernel_size: Sequence[int],
                   stride: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """``(N, C, *S)`` gradient of the (padded) input of shape ``input_shape``."""
    kernel_size, stride, dilation, input_shape = map(tuple, (kernel_size, stride, dilation, input_shape))
    lib = _kernel(grad, weight)
    if lib is None:
        return _torch_grad_input(grad, weight, input_shape, kernel_size, stride, dilation)
    threads = torch.get_num_threads()
    batch, channels, *spatial = input_shape
    out_channels, *output_size = grad.shape[1:]
    grad, weight = grad.resolve_neg().contiguous(), weight.resolve_neg().contiguous()
    offsets = _patch_offsets(tuple(spatial), kernel_size, stride, dilation, channels, tuple(output_size))
    positions, kernel_offsets = offsets.shape
    # Bands of output rows far enough apart that every other band touches disjoint inputs.
    rows = output_size[0]
    band = max(-(-rows // (2 * threads)), -(-dilation[0] * (kernel_size[0] - 1) // stride[0]), 1)
    grad_x = grad.new_empty(input_shape)
    _check(lib.lc_grad_input(_ptr(offsets), positions, kernel_offsets, channels, _ptr(weight), out_channels,
                             _ptr(grad), batch, math.prod(spatial), _ptr(grad_x), positions // rows, band, threads))
    return grad_x


@_grad_input_op.register_fake
def _grad_input_fake(grad, weight, input_shape, kernel_size, stride, dilation):
    return grad.new_empty(input_shape)


def _setup_context(ctx, inputs, output) -> None:
    input, weight, _, kernel_size, stride, dilation, _ = inputs
    x_cl = output[1]
    ctx.mark_non_differentiable(x_cl)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x_cl, weight)
    ctx.geometry = (list(input.shape), list(kernel_size), list(stride), list(dilation))


def _backward(ctx, grad, _grad_x_cl):
    """First derivatives only: the gradient operators have no derivatives of their own (double backward is
    refused by torch)."""
    x_cl, weight = ctx.saved_tensors
    shape, kernel_size, stride, dilation = ctx.geometry
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_w = grad_b = None
    if grad is not None:
        if need_x:
            grad_x = _grad_input_op(grad, weight, shape, kernel_size, stride, dilation)
        if need_w:
            grad_w = _grad_weight_op(grad, x_cl, shape, kernel_size, stride, dilation)
        if need_b:
            grad_b = grad.sum(0)
    return grad_x, grad_w, grad_b, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def locally_connected_nd(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] = 1,
    padding: PaddingArg = "valid",
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Locally connected (unshared-weight) convolution over 1, 2 or 3 spatial dimensions.

    For every output position ``l`` and filter ``o``:
    ``y[n, o, l] = Σ_k patch[n, l, k] · weight[l, k, o] + bias[o, l]``, where ``patch[n, l]`` is the
    (padded, dilated) window of ``input`` under position ``l``, flattened row-major over
    ``(*kernel_size, in_channels)`` (see the module docstring for the layout).

    Args:
        input: ``(N, C, *spatial)``.
        weight: ``(L, prod(kernel_size)·C, out_channels)`` with ``L = prod(output_size)``.
        bias: ``(out_channels, *output_size)`` or ``None``.
        kernel_size, stride, dilation: Ints or tuples with one entry per spatial dimension.
        padding: ``"valid"``, ``"same"`` (TensorFlow's rule: ``ceil(in / stride)`` outputs, the odd zero
            at the end, so even kernels are allowed), an int or a tuple of ints (zeros on both sides).

    Shape:
        ``output_size[i] = conv_output_size(input.shape[2 + i], kernel_size[i], stride[i], padding,
        dilation[i])``, e.g. ``floor((in + 2p − d·(k−1) − 1) / s) + 1`` for an int padding ``p``.
        Output: ``(N, out_channels, *output_size)``.

    The backward pass is written by hand (first derivatives only; double backward is not supported).

    Examples:
        >>> x = torch.arange(8.0).reshape(1, 2, 4)         # N=1, C=2, length 4
        >>> w = torch.ones(3, 2 * 2, 1)                    # 3 positions, kernel 2 × 2 channels, 1 filter
        >>> locally_connected_nd(x, w, kernel_size=2)       # window sums: (0+1+4+5), (1+2+5+6), ...
        tensor([[[10., 14., 18.]]])
    """
    if not isinstance(input, Tensor) or input.dim() not in (3, 4, 5):
        got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ShapeError(f"locally_connected_nd expects input (N, C, *spatial) with 1 to 3 spatial dimensions. "
                         f"Received input of shape {got}.")
    n = input.dim() - 2
    kernel = ntuple(kernel_size, n, "kernel_size")
    strides = ntuple(stride, n, "stride")
    dilations = ntuple(dilation, n, "dilation")
    pad = check_padding(padding, n)
    size = tuple(input.shape[2:])
    output_size = conv_output_size(size, kernel, strides, pad, dilations)
    positions, inputs = math.prod(output_size), math.prod(kernel) * input.shape[1]
    if weight.dim() != 3 or tuple(weight.shape[:2]) != (positions, inputs):
        raise ShapeError(
            f"weight must have shape (L, prod(kernel_size)·C, out_channels) = ({positions}, {inputs}, "
            f"out_channels) for input {shape_text(input.shape)} and kernel_size={kernel} "
            f"(output_size={output_size}). Received weight of shape {shape_text(weight.shape)}."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[2], *output_size):
        raise ShapeError(
            f"bias must have shape (out_channels, *output_size) = {(weight.shape[2], *output_size)}. "
            f"Received bias of shape {shape_text(bias.shape)}."
        )
    # The C kernel reads raw memory: a lazy negation (torch._neg_view, a conjugate's neg bit) must be
    # applied first, or it is silently dropped and the output's sign flips. A no-op without the bit.
    input, weight = input.resolve_neg().resolve_conj(), weight.resolve_neg().resolve_conj()
    pads = padding_amounts(size, kernel, strides, pad, dilations)
    if any(lo or hi for lo, hi in pads):
        input = F.pad(input, [p for pair in reversed(pads) for p in pair])
    output, _ = _forward_op(input, weight, bias, list(kernel), list(strides), list(dilations), list(output_size))
    return output


def _ranked(n: int, name: str):
    def op(input, weight, bias=None, *, kernel_size, stride=1, padding="valid", dilation=1):
        if not isinstance(input, Tensor) or input.dim() != n + 2:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ShapeError(f"{name} expects input (N, C, {SPATIAL[n]}). Received input of shape {got}.")
        return locally_connected_nd(input, weight, bias, kernel_size=kernel_size, stride=stride,
                                 padding=padding, dilation=dilation)

    op.__name__ = op.__qualname__ = name
    return op


locally_connected1d = _ranked(1, "locally_connected1d")
locally_connected1d.__doc__ = """:func:`locally_connected_nd` for input ``(N, C, L)``.

    Examples:
        >>> locally_connected1d(torch.ones(2, 3, 5), torch.ones(3, 9, 4), kernel_size=3).shape
        torch.Size([2, 4, 3])
    """
locally_connected2d = _ranked(2, "locally_connected2d")
locally_connected2d.__doc__ = """:func:`locally_connected_nd` for input ``(N, C, H, W)``.

    Examples:
        >>> w = torch.ones(16, 3 * 3 * 4, 4)                 # the seed's (16, 36, 4) kernel
        >>> locally_connected2d(torch.ones(1, 4, 6, 6), w, kernel_size=3).shape
        torch.Size([1, 4, 4, 4])
    """


# --- the modules -------------------------------------------------------------------------------------


class _LocallyConnectedNd(KerasWeightsMixin, nn.Module):
    _ndim: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        input_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = "valid",
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        init: str = "torch",
    ) -> None:
        super().__init__()
        n = self._ndim
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.input_size = ntuple(input_size, n, "input_size")
        self.stride = ntuple(stride, n, "stride")
        self.padding = check_padding(padding, n)
        self.dilation = ntuple(dilation, n, "dilation")
        self.init = check_choice(init, INITS, "init")
        bias = check_bool(bias, "bias")
        self.output_size = conv_output_size(self.input_size, self.kernel_size, self.stride, self.padding,
                                            self.dilation)
        factory = {"device": device, "dtype": dtype}
        positions = math.prod(self.output_size)
        inputs = math.prod(self.kernel_size) * self.in_channels
        self.weight = nn.Parameter(torch.empty((positions, inputs, self.out_channels), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty((self.out_channels, *self.output_size), **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self, init: str | None = None, generator: torch.Generator | None = None) -> None:
        """Draw new weights; ``init`` (default: the constructor's) is ``"torch"`` or ``"keras"``.

        ``"torch"`` follows ``nn.Conv2d``: weight and bias from U(±1/√fan_in) with
        ``fan_in = prod(kernel_size)·in_channels`` (the inputs of one output unit; this is what
        ``kaiming_uniform_(a=√5)`` gives a convolution).

        ``"keras"`` follows Keras's defaults: ``glorot_uniform`` kernel and zero bias. Keras computes the
        fans from the ``(L, K, out)`` kernel shape, treating the ``L`` positions as a receptive field:
        ``fan_in = K·L``, ``fan_out = out·L``, so the bound is √(6 / ((K + out)·L)) — much smaller than a
        per-position count would give, and reproduced here on purpose.
        """
        init = self.init if init is None else check_choice(init, INITS, "init")
        inputs = self.weight.shape[1]
        with torch.no_grad():
            if init == "keras":
                # The weight is laid out like the Keras kernel (L, K, out): Keras's own fans apply.
                glorot_uniform_(self.weight, layout="keras", generator=generator)
                if self.bias is not None:
                    self.bias.zero_()
            else:
                bound = 1.0 / math.sqrt(inputs)
                self.weight.uniform_(-bound, bound, generator=generator)
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, input: Tensor) -> Tensor:
        n = self._ndim
        name = type(self).__name__
        if not isinstance(input, Tensor) or input.dim() != n + 2 or input.shape[1] != self.in_channels:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ShapeError(
                f"{name} expects input (N, C, {SPATIAL[n]}) with C = in_channels = {self.in_channels}. "
                f"Received input of shape {got}."
            )
        if tuple(input.shape[2:]) != self.input_size:
            raise ShapeError(
                f"{name} was built for input_size={self.input_size} (its weights are tied to positions), "
                f"so the input's spatial size must be {self.input_size}. Received input of shape "
                f"{tuple(input.shape)} (spatial size {tuple(input.shape[2:])})."
            )
        return locally_connected_nd(input, self.weight, self.bias, kernel_size=self.kernel_size,
                                 stride=self.stride, padding=self.padding, dilation=self.dilation)

    def extra_repr(self) -> str:
        n = self._ndim
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_size={self.input_size}, stride={self.stride}")
        if self.padding != "valid":
            text += f", padding={self.padding!r}"
        if self.dilation != (1,) * n:
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        if self.init != "torch":
            text += f", init={self.init!r}"
        return text


class LocallyConnected2d(_LocallyConnectedNd):
    """2-D convolution with unshared weights: each output position has its own filters.

    Like ``nn.Conv2d``, but the ``out_channels`` filters of size ``kh·kw·in_channels`` are different at
    every one of the ``H'·W'`` output positions (Keras's ``LocallyConnected2D``). The input size is
    therefore fixed when the layer is built.

    Args:
        in_channels: Channels C of the input.
        out_channels: Filters per position (Keras's ``filters``).
        kernel_size: Int or ``(kh, kw)``.
        input_size: ``(H, W)`` of the input (an int means square).
        stride: Int or tuple, default 1.
        padding: ``"valid"`` (default), ``"same"`` (TensorFlow's rule via :mod:`cnnkit.shapes`:
            ``ceil(H / stride)`` outputs, odd zeros at the end — even kernels are allowed), an int or a
            tuple of ints (zeros on both sides, as in PyTorch).
        dilation: Int or tuple, default 1.
        bias: Whether to add a bias per position and filter, default ``True``.
        device, dtype: Factory arguments of the parameters.
        init: ``"torch"`` (default, like ``nn.Conv2d``) or ``"keras"`` (glorot_uniform with Keras's
            fans, zero bias); see :meth:`reset_parameters`.

    Attributes:
        weight: ``(H'·W', kh·kw·in_channels, out_channels)``, each patch flattened row-major over
            ``(kh, kw, in_channels)`` — identical to Keras's ``kernel``.
        bias: ``(out_channels, H', W')``; Keras keeps it as ``(H', W', out_channels)``.
        output_size: ``(H', W')``.

    Shape:
        - Input: ``(N, in_channels, H, W)`` with ``(H, W) == input_size``.
        - Output: ``(N, out_channels, H', W')``, ``H' = floor((H + p_top + p_bottom − d·(kh − 1) − 1) /
          s) + 1`` (``ceil(H / s)`` for ``"same"``), likewise for ``W'``
          (:func:`cnnkit.shapes.conv_output_size`).
        - Parameters: ``(H'·W')·(kh·kw·in_channels·out_channels) + (H'·W')·out_channels``.

    Examples:
        >>> lc = LocallyConnected2d(4, 4, 3, input_size=(6, 6))   # the seed's layer
        >>> {k: tuple(v.shape) for k, v in lc.keras_weights().items()}
        {'kernel': (16, 36, 4), 'bias': (4, 4, 4)}
        >>> lc(torch.zeros(2, 4, 6, 6)).shape
        torch.Size([2, 4, 4, 4])
        >>> sum(p.numel() for p in LocallyConnected2d(3, 64, 3, input_size=32).parameters())
        1612800

    References:
        Keras ``LocallyConnected2D``: https://keras.io/2.15/api/layers/locally_connected_layers/
    """

    _ndim = 2


class LocallyConnected1d(_LocallyConnectedNd):
    """1-D convolution with unshared weights (Keras's ``LocallyConnected1D``).

    Arguments and layout as :class:`LocallyConnected2d` with one spatial dimension: ``weight`` is
    ``(L', k·in_channels, out_channels)`` (patches flattened over ``(k, in_channels)``), ``bias`` is
    ``(out_channels, L')``.

    Shape:
        - Input: ``(N, in_channels, L)`` with ``L == input_size``.
        - Output: ``(N, out_channels, L')``, ``L' = floor((L + p_left + p_right − d·(k − 1) − 1) / s) + 1``.

    Examples:
        >>> lc = LocallyConnected1d(32, 64, 3, input_size=10)    # Keras: LocallyConnected1D(64, 3)
        >>> tuple(lc.weight.shape), lc(torch.zeros(1, 32, 10)).shape
        ((8, 96, 64), torch.Size([1, 64, 8]))
    """

    _ndim = 1


# --- Keras layout and explainer ----------------------------------------------------------------------


def _to_keras(module, state):
    out = {"kernel": state["weight"]}
    if state.get("bias") is not None:
        out["bias"] = state["bias"].movedim(0, -1)
    return out


def _to_torch(module, arrays):
    out = {"weight": arrays["kernel"]}
    if "bias" in arrays:
        out["bias"] = arrays["bias"].movedim(-1, 0)
    return out


_ops.register_position_tied(_LocallyConnectedNd)  # masked() refuses it: no meaning for a sample of another size

register_layout(
    LocallyConnected1d, LocallyConnected2d,
    layout=KerasLayout(lambda m: f"LocallyConnected{m._ndim}D", _to_keras, _to_torch),
)


@register_explainer(LocallyConnected1d, LocallyConnected2d)
def _explain(m: _LocallyConnectedNd, shape: tuple[int, ...]) -> LayerReport:
    n = m._ndim
    expect_rank(m, shape, [n + 1], f"(C, {SPATIAL[n]})")
    expect_channels(m, shape[0], m.in_channels, "in_channels")
    if tuple(shape[1:]) != m.input_size:
        raise ShapeError(
            f"{type(m).__name__} was built for input_size={m.input_size}, so input_shape[1:] must be "
            f"{m.input_size}. Received input_shape={shape}."
        )
    out, k, c, f = m.output_size, m.kernel_size, m.in_channels, m.out_channels
    positions, inputs = math.prod(out), math.prod(k) * c
    kernel_params, bias_params = positions * inputs * f, (positions * f if m.bias is not None else 0)
    steps = [f"size: {line}" for line in describe_conv_size(m.input_size, k, m.stride, m.padding, m.dilation)]
    steps.append(
        f"unshared weights: each of the {x(out)} = {positions} output positions has its own {f} filters "
        f"of {dot((*k, c))} = {inputs} inputs (a Conv{n}d would share one set of {f})"
    )
    steps.append(f"kernel params: ({dot(out)} patches) × ({dot((*k, c))} inputs) × {f} filters "
                 f"= {kernel_params:,}")
    if bias_params:
        steps.append(f"bias params: ({dot(out)}) × {f} = {bias_params:,} (one per position and filter)")
    steps.append(
        f"layout: torch weight = Keras kernel (positions, {dot(k)}·in, filters) = "
        f"{shape_text((positions, inputs, f))}, each patch flattened row-major over "
        f"({', '.join(['kh', 'kw'][:n] if n == 2 else ['k'])}, in); torch bias (filters, {x(out)}) ↔ "
        f"Keras bias ({x(out)}, filters)"
    )
    steps.append(f"params: {kernel_params:,} + {bias_params:,} = {kernel_params + bias_params:,}")
    fan_in, fan_out = fans((positions, inputs, f), layout="keras")
    steps.append(
        f"init: torch-style U(±1/√{inputs}) = U(±{1 / math.sqrt(inputs):.4g}); Keras glorot_uniform counts "
        f"the positions in its fans: U(±√(6/({fan_in}+{fan_out}))) = "
        f"U(±{math.sqrt(6 / (fan_in + fan_out)):.4g}) (init='keras')"
    )
    return LayerReport((f, *out), steps, (k, m.stride, m.dilation))


@register_initializer(LocallyConnected1d, LocallyConnected2d)
def _keras_initialisation(module, generator) -> None:
    """What ``cnnkit.init.keras_`` does to these layers: their own ``reset_parameters("keras")``."""
    module.reset_parameters("keras", generator)
