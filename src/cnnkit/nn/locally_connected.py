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

Files
-----
This file holds the layer as users meet it: the functional op (argument checks, padding), the modules, and
their registrations in the ground floor's tables (Keras weight layout, Keras initialisation, position-tied
for ``masked``). The machinery behind the op is one file per job: :mod:`cnnkit.nn._lc_ops` (the operators
and which path each runs), :mod:`cnnkit.nn._lc_native` (the C bridge) and :mod:`cnnkit.nn._lc_torch` (the
pure-torch path). How the layer is explained lives in :mod:`cnnkit.explainers.cnnkit_layers`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit import _ops
from cnnkit._checks import check_bool, check_choice, ntuple
from cnnkit.errors import ShapeError
from cnnkit.init import glorot_uniform_, register_initializer
from cnnkit.layouts import KerasLayout, register_layout
from cnnkit.nn._common import (
    SPATIAL,
    KerasWeightsMixin,
    PaddingArg,
    check_padding,
    positive_int,
    shape_text,
)
from cnnkit.nn._lc_ops import forward_op
from cnnkit.shapes import conv_output_size, padding_amounts

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "locally_connected1d",
    "locally_connected2d",
    "locally_connected_nd",
]

INITS = ("torch", "keras")


# --- the functional op ------------------------------------------------------------------------------


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
    output, _ = forward_op(input, weight, bias, list(kernel), list(strides), list(dilations), list(output_size))
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


# --- registrations: Keras layout, Keras initialisation, masked() ----------------------------------------


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


@register_initializer(LocallyConnected1d, LocallyConnected2d)
def _keras_initialisation(module, generator) -> None:
    """What ``cnnkit.init.keras_`` does to these layers: their own ``reset_parameters("keras")``."""
    module.reset_parameters("keras", generator)
