"""The ``torch.library`` operators of :mod:`cnnkit.nn.locally_connected`, and which path each one runs.

The op is three operators of the ``cnnkit`` namespace, so that ``torch.compile(fullgraph=True)`` and
``torch.export`` see one opaque node each instead of tracing into ctypes:

* ``cnnkit::locally_connected`` (:data:`forward_op`): the output, and the channels-last copy of the input
  that the weight gradient reads;
* ``cnnkit::locally_connected_grad_weight`` and ``cnnkit::locally_connected_grad_input``: the two
  gradients, wired to the forward with ``register_autograd`` (first derivatives only).

Each runs the C kernel (:mod:`cnnkit.nn._lc_native`, float32 on CPU) when it applies, else the pure-torch
functions of :mod:`cnnkit.nn._lc_torch`; their fake implementations give the shapes. Both paths share one
layout of the channels-last copy: ``(N, X)`` with ``X = sample_stride(C·prod(S))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cnnkit.nn import _lc_native, _lc_torch

__all__ = ["forward_op", "sample_stride"]


def sample_stride(per_sample: int) -> int:
    """Floats from one sample to the next in the channels-last copy of the input: ``per_sample``, plus 16
    when that is a multiple of 512 floats (2 KiB). The weight gradient reads the batch's patches that many
    floats apart; at a multiple of 4 KiB they all fall into one L1 set (measured on one thread, the
    benchmark layer's 32 samples of 32·32·16: 7.0 ms → 5.5 ms for that product)."""
    return per_sample + 16 if per_sample % 512 == 0 else per_sample


def _channels_last_view(x_cl: Tensor, shape: Sequence[int]) -> Tensor:
    """``(N, *S, C)`` view of the ``(N, X)`` channels-last copy of an input of ``shape`` ``(N, C, *S)``."""
    return x_cl[:, :math.prod(shape[1:])].view(shape[0], *shape[2:], shape[1])


_FORWARD_SCHEMA = ("(Tensor input, Tensor weight, Tensor? bias, int[] kernel_size, int[] stride, int[] dilation, "
                   "int[] output_size) -> (Tensor, Tensor)")
_GRAD_SCHEMA = ("(Tensor grad, Tensor {0}, SymInt[] input_shape, int[] kernel_size, int[] stride, int[] dilation) "
                "-> Tensor")


@torch.library.custom_op("cnnkit::locally_connected", mutates_args=(), schema=_FORWARD_SCHEMA)
def forward_op(input: Tensor, weight: Tensor, bias: Tensor | None, kernel_size: Sequence[int],
               stride: Sequence[int], dilation: Sequence[int], output_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(N, out, *output_size)`` output of the (already padded) input, and the ``(N, X)`` channels-last copy
    of the input (``X = sample_stride(C·prod(S))``, zero-padded) that the weight gradient reads."""
    kernel_size, stride, dilation, output_size = map(tuple, (kernel_size, stride, dilation, output_size))
    batch, channels, *spatial = input.shape
    stride_x = sample_stride(channels * math.prod(spatial))
    lib = _lc_native.library(input, weight, bias)
    if lib is not None:
        return _lc_native.forward(lib, input, weight, bias, kernel_size, stride, dilation, output_size, stride_x)
    x_cl = input.new_zeros((batch, stride_x))
    _channels_last_view(x_cl, input.shape).copy_(input.movedim(1, -1))
    y = _lc_torch.forward(_channels_last_view(x_cl, input.shape), weight, bias, kernel_size, stride, dilation,
                          output_size)
    return y, x_cl


@forward_op.register_fake
def _forward_fake(input, weight, bias, kernel_size, stride, dilation, output_size):
    batch, channels, *spatial = input.shape
    return (input.new_empty((batch, weight.shape[2], *output_size)),
            input.new_empty((batch, sample_stride(channels * math.prod(spatial)))))


@torch.library.custom_op("cnnkit::locally_connected_grad_weight", mutates_args=(),
                         schema=_GRAD_SCHEMA.format("x_cl"))
def _grad_weight_op(grad: Tensor, x_cl: Tensor, input_shape: Sequence[int], kernel_size: Sequence[int],
                    stride: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """``(L, K, out)`` weight gradient from the ``(N, out, *output_size)`` gradient and the forward's
    channels-last copy ``x_cl`` of the input of shape ``input_shape``."""
    kernel_size, stride, dilation, input_shape = map(tuple, (kernel_size, stride, dilation, input_shape))
    lib = _lc_native.library(grad, x_cl)
    if lib is not None:
        return _lc_native.grad_weight(lib, grad, x_cl, input_shape, kernel_size, stride, dilation)
    return _lc_torch.grad_weight(grad, _channels_last_view(x_cl, input_shape), kernel_size, stride, dilation)


@_grad_weight_op.register_fake
def _grad_weight_fake(grad, x_cl, input_shape, kernel_size, stride, dilation):
    return grad.new_empty((math.prod(grad.shape[2:]), math.prod(kernel_size) * input_shape[1], grad.shape[1]))


@torch.library.custom_op("cnnkit::locally_connected_grad_input", mutates_args=(),
                         schema=_GRAD_SCHEMA.format("weight"))
def _grad_input_op(grad: Tensor, weight: Tensor, input_shape: Sequence[int], kernel_size: Sequence[int],
                   stride: Sequence[int], dilation: Sequence[int]) -> Tensor:
    """``(N, C, *S)`` gradient of the (padded) input of shape ``input_shape``."""
    kernel_size, stride, dilation, input_shape = map(tuple, (kernel_size, stride, dilation, input_shape))
    lib = _lc_native.library(grad, weight)
    if lib is not None:
        return _lc_native.grad_input(lib, grad, weight, input_shape, kernel_size, stride, dilation)
    return _lc_torch.grad_input(grad, weight, input_shape, kernel_size, stride, dilation)


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


forward_op.register_autograd(_backward, setup_context=_setup_context)
