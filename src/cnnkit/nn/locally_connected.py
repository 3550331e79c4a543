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

Two implementations
-------------------
* ``_NativeLocallyConnectedFunction``: float32 on CPU. A C kernel (``csrc/locally_connected.c``, built on
  first use by :mod:`cnnkit._native`) reads the patches straight from the channels-last input and runs each
  position's products in register tiles, in parallel.
* ``_LocallyConnectedFunction``: everything else (other dtypes and devices, no C compiler,
  ``CNNKIT_NATIVE=0``): gathered patches and ``torch.bmm`` per slab of output rows.

Both take the same arguments and give the same numbers up to rounding; the tests hold both to the same
references.
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
from torch.autograd.function import once_differentiable

from cnnkit import _native
from cnnkit._checks import check_bool, check_choice, ntuple
from cnnkit.errors import ShapeError
from cnnkit.explainers.layers import dot, expect_channels, expect_rank, x
from cnnkit.explainers.registry import LayerReport, register_explainer
from cnnkit.init import fans, glorot_uniform_, register_initializer
from cnnkit.keras.layouts import KerasLayout, register_layout
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


class _LocallyConnectedFunction(torch.autograd.Function):
    """Patches gathered from a channels-last copy, one batched matmul per slab of positions.

    ``x`` is already padded. Forward, per slab of output rows: gather the patches ``(N, m, K)`` and
    ``torch.bmm`` them as ``(m, N, K) @ (m, K, out)`` with the slab's own weights (a view: the weight is
    never copied). Backward, per slab: re-gather the patches, ``bmm`` for the weight gradient, ``bmm`` for
    the patch gradient, and one strided ``add_`` per kernel offset to scatter it back onto the input.
    Only the channels-last input is kept for backward, not the ``prod(kernel_size)``-times larger patches.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, kernel_size, stride, dilation, output_size):
        batch = x.shape[0]
        positions, inputs, out_channels = weight.shape
        x_cl = x.movedim(1, -1).contiguous()  # (N, *S, C)
        windows = _windows(x_cl, kernel_size, stride, dilation)
        out = x.new_empty((positions, batch, out_channels))
        for r0, r1, l0, l1 in _slabs(batch, output_size, inputs, x.element_size()):
            patches = windows[:, r0:r1].reshape(batch, l1 - l0, inputs)
            torch.bmm(patches.transpose(0, 1), weight[l0:l1], out=out[l0:l1])
        # (L, N, out) -> (N, out, L) in two cheap moves; a direct permute reads with a stride of N·out
        # numbers (often a multiple of 4 KiB, which thrashes the cache).
        out = out.transpose(0, 1).contiguous().transpose(1, 2).reshape(batch, out_channels, *output_size)
        result = torch.empty_like(out, memory_format=torch.contiguous_format).copy_(out)
        if bias is not None:
            result.add_(bias)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(x_cl if need_w else None, weight if need_x else None)
        ctx.geometry = (tuple(x.shape), kernel_size, stride, dilation, output_size)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_cl, weight = ctx.saved_tensors
        shape, kernel_size, stride, dilation, output_size = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        n = len(kernel_size)
        batch, channels = shape[:2]
        out_channels = grad.shape[1]
        positions = math.prod(output_size)
        inputs = math.prod(kernel_size) * channels
        g = grad.reshape(batch, out_channels, positions).transpose(1, 2).contiguous().transpose(0, 1).contiguous()
        grad_x = grad_w = grad_b = None
        if need_b:
            grad_b = g.sum(1).t().reshape(out_channels, *output_size)
        if not (need_x or need_w):
            return None, None, grad_b, None, None, None, None
        if need_w:
            windows = _windows(x_cl, kernel_size, stride, dilation)
            grad_w = g.new_empty((positions, inputs, out_channels))
        if need_x:
            grad_cl = g.new_zeros((batch, *shape[2:], channels))
            offsets = list(itertools.product(*(range(k) for k in kernel_size)))
        lead = (slice(None),) * (n + 1)
        for r0, r1, l0, l1 in _slabs(batch, output_size, inputs, g.element_size()):
            if need_w:
                patches = windows[:, r0:r1].reshape(batch, l1 - l0, inputs)
                torch.bmm(patches.transpose(0, 1).transpose(1, 2), g[l0:l1], out=grad_w[l0:l1])
            if need_x:
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
        if need_x:
            grad_x = grad_cl.movedim(-1, 1)
        return grad_x, grad_w, grad_b, None, None, None, None


# --- the C kernel --------------------------------------------------------------------------------------

_VL = 16  # the batch-last layouts are padded to multiples of 16 floats: whole vectors for any build (4, 8, 16)
_use_native = True  # False forces the torch path (tests compare the two)


def _kernel(x: Tensor, weight: Tensor, bias: Tensor | None) -> ctypes.CDLL | None:
    """The C kernel if it applies to these tensors (CPU float32, contiguous weight, non-empty), else None."""
    tensors = [x, weight] if bias is None else [x, weight, bias]
    if not _use_native or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if not weight.is_contiguous() or x.numel() == 0 or weight.numel() == 0:
        return None
    return _native.load("nn.locally_connected")


_p, _i64, _i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_native.declare("nn.locally_connected", {  # sizes are int64: a bare Python int would pass as a C int
    # each returns 0, or -1 when its scratch buffers could not be allocated
    # x, N, X, offsets, L, KK, C, w, F, y, threads
    "lc_forward": ([_p, _i64, _i64, _p, _i64, _i64, _i64, _p, _i64, _p, _i32], _i32),
    # x, N, X, offsets, L, KK, C, g, F, FP, gw, threads
    "lc_grad_weight": ([_p, _i64, _i64, _p, _i64, _i64, _i64, _p, _i64, _i64, _p, _i32], _i32),
    # offsets, L, KK, C, w, F, gt, NP, gx, per_row, band, threads
    "lc_grad_input": ([_p, _i64, _i64, _i64, _p, _i64, _p, _i64, _p, _i64, _i64, _i32], _i32),
    "lc_vector_width": ([], _i32),
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


def _ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("LocallyConnected: the C kernel could not allocate its scratch buffers.")


def _rounded(n: int) -> int:
    return -(-n // _VL) * _VL


class _NativeLocallyConnectedFunction(torch.autograd.Function):
    """Same op and arguments as :class:`_LocallyConnectedFunction` (plus the loaded kernel ``lib``), computed
    by ``csrc/locally_connected.c``.

    The C kernel reads patches straight from a channels-last copy of the (padded) input and multiplies them
    with each position's weights in register tiles, in parallel over positions (forward, weight gradient)
    or over non-overlapping bands of output rows (input gradient, accumulated batch-last so that it is
    vector adds). Torch does the layout moves around it: the channels-last input, ``(N, L, F) → (N, F, L)``
    plus bias, and the batch-last gradient layouts.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, kernel_size, stride, dilation, output_size, lib):
        ctx.lib = lib
        threads = torch.get_num_threads()
        batch, channels = x.shape[:2]
        positions, _, out_channels = weight.shape
        offsets = _patch_offsets(tuple(x.shape[2:]), kernel_size, stride, dilation, channels, output_size)
        x_cl = x.detach().movedim(1, -1).contiguous()
        per_sample = x_cl[0].numel()
        y = x.new_empty((batch, positions, out_channels))
        _check(lib.lc_forward(_ptr(x_cl), batch, per_sample, _ptr(offsets), positions, offsets.shape[1],
                              channels, _ptr(weight), out_channels, _ptr(y), threads))
        result = x.new_empty((batch, out_channels, *output_size))
        if bias is None:
            result.view(batch, out_channels, positions).copy_(y.transpose(1, 2))
        else:
            torch.add(y.transpose(1, 2), bias.reshape(out_channels, positions),
                      out=result.view(batch, out_channels, positions))
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(x_cl if need_w else None, weight if need_x else None)
        ctx.geometry = (tuple(x.shape), kernel_size, stride, dilation, output_size, offsets)
        return result

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x_cl, weight = ctx.saved_tensors
        shape, kernel_size, stride, dilation, output_size, offsets = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        lib, threads = ctx.lib, torch.get_num_threads()
        batch, channels = shape[:2]
        out_channels = grad.shape[1]
        positions, kernel_offsets = offsets.shape
        grad = grad.resolve_neg().contiguous()
        grad_x = grad_w = grad_b = None
        if need_b:
            grad_b = grad.sum(0)
        if not (need_x or need_w):
            return None, None, grad_b, None, None, None, None, None
        # Batch-last gradient (L, F, NP), zero-padded to whole vectors of samples.
        padded_batch = _rounded(batch)
        g_t = grad.new_empty((positions, out_channels, padded_batch))
        g_t[:, :, batch:].zero_()
        g_t[:, :, :batch].copy_(grad.view(batch, out_channels * positions).t()
                                .view(out_channels, positions, batch).transpose(0, 1))
        if need_w:
            # (L, N, FP), zero-padded to whole vectors of filters: small transposes of g_t.
            padded_filters = _rounded(out_channels)
            g = grad.new_empty((positions, batch, padded_filters))
            g[:, :, out_channels:].zero_()
            g[:, :, :out_channels].copy_(g_t[:, :, :batch].transpose(1, 2))
            grad_w = grad.new_empty((positions, kernel_offsets * channels, out_channels))
            _check(lib.lc_grad_weight(_ptr(x_cl), batch, x_cl[0].numel(), _ptr(offsets), positions,
                                      kernel_offsets, channels, _ptr(g), out_channels, padded_filters,
                                      _ptr(grad_w), threads))
        if need_x:
            # Bands of output rows far enough apart that every other band touches disjoint inputs.
            rows = output_size[0]
            band = max(-(-rows // (2 * threads)), -(-dilation[0] * (kernel_size[0] - 1) // stride[0]), 1)
            per_sample = math.prod(shape[1:])
            g_x = grad.new_zeros((per_sample, padded_batch))
            _check(lib.lc_grad_input(_ptr(offsets), positions, kernel_offsets, channels, _ptr(weight),
                                     out_channels, _ptr(g_t), padded_batch, _ptr(g_x), positions // rows, band,
                                     threads))
            grad_x = g_x[:, :batch].t().contiguous().view(batch, *shape[2:], channels).movedim(-1, 1)
        return grad_x, grad_w, grad_b, None, None, None, None, None


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
    lib = _kernel(input, weight, bias)
    if lib is not None:
        return _NativeLocallyConnectedFunction.apply(input, weight, bias, kernel, strides, dilations, output_size,
                                                     lib)
    return _LocallyConnectedFunction.apply(input, weight, bias, kernel, strides, dilations, output_size)


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
