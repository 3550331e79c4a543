"""Convolutional LSTM (Shi et al. 2015), batch-first like Keras's ``ConvLSTM1D/2D``, returning like ``nn.LSTM``.

One step of one layer and direction, with ``*`` a convolution and ``⊙`` an element-wise product::

    [i, f, c̃, o] = W_x * x_t + W_h * h_{t−1} + b          (4·F channels, gate order i, f, c, o as Keras)
    i, f, o = σ(i), σ(f), σ(o)                            (σ = recurrent_activation)
    c_t = f ⊙ c_{t−1} + i ⊙ tanh(c̃)                       (tanh = activation)
    h_t = o ⊙ tanh(c_t)

``W_x * x_t`` (the input convolution, with the layer's ``stride``, ``padding`` and ``dilation``) does not
depend on the state, so it runs once over all ``N·T`` frames; only ``W_h * h_{t−1}`` (stride 1, ``"same"``
padding, dilation 1 — as in Keras) runs step by step. The math lives in :func:`conv_lstm_nd` (one layer,
one direction); :class:`ConvLSTM1d` / :class:`ConvLSTM2d` stack layers and directions.

Masks (bool, ``True`` = valid):

* ``(N, T)``: at a step where ``mask[n, t]`` is ``False``, sample ``n``'s ``h`` and ``c`` keep their values
  (Keras RNN masking) and the output at that step repeats the kept ``h``. The backward direction of a
  bidirectional layer walks ``t = T−1, …, 0`` with the same rule, i.e. it processes each sample's valid
  steps in reverse order, skipping the rest — for a right-padded batch this is exactly what Keras's
  ``Bidirectional`` and PyTorch's packed sequences compute (its state stays at ``h0``/``c0`` through the
  padding, so with zero initial states its outputs there are 0).
* ``(N, T, *S')`` on the state grid ``S'`` (``(H', W')``): where ``mask[n, t, y, x]`` is ``False``, that
  pixel's ``h`` and ``c`` keep their previous values. When the input has the same spatial size as the
  state (stride 1 and ``"same"`` padding, and always for layers after the first), the input at masked
  pixels is also treated as zero before the input convolution, so invalid pixels do not leak into their
  neighbours. With a strided or ``"valid"`` input convolution the grids differ and the input is used as
  given (zero it yourself if needed).

NaN and inf (a cloud or a missing frame stored as NaN): the input at masked steps, and at masked pixels
when the grids agree, is *selected* away (``torch.where``), never multiplied by 0, so a NaN or inf there
changes no valid output, no state and no gradient — the result equals the run with zeros there. Where the
grids differ, the kept states stay exact (also selected), but the input convolution reads the input as
given: replace NaN yourself. NaN or inf at *valid* positions propagates like in any torch layer (the
losses and metrics of cnnkit then refuse it, naming the count).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_bool, check_choice, ntuple
from cnnkit.errors import ShapeError
from cnnkit.init import glorot_uniform_, orthogonal_, register_initializer
from cnnkit.layouts import KerasLayout, register_layout
from cnnkit.masking import register_masked_op
from cnnkit.masking.state import MaskedContext, masked_dispatch
from cnnkit.nn._common import (
    SPATIAL,
    KerasWeightsMixin,
    PaddingArg,
    check_padding,
    positive_int,
    shape_text,
)
from cnnkit.shapes import conv_output_size, padding_amounts

__all__ = ["ConvLSTM1d", "ConvLSTM2d", "conv_lstm_nd"]

RECURRENT_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "hard_sigmoid_keras2")
ACTIVATIONS = ("tanh", "relu")
INITS = ("torch", "keras")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _hard_sigmoid_keras2(t: Tensor) -> Tensor:
    return (t * 0.2 + 0.5).clamp(0.0, 1.0)


def recurrent_activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The gate nonlinearity called ``name``.

    ``"sigmoid"``: 1 / (1 + e^−x). ``"hard_sigmoid"``: Keras 3's ``clip(x/6 + 0.5, 0, 1)`` (=
    ``F.hardsigmoid``). ``"hard_sigmoid_keras2"``: Keras 2's ``clip(0.2·x + 0.5, 0, 1)`` (the default
    recurrent activation of Keras 2's ``ConvLSTM2D``).

    Examples:
        >>> t = torch.tensor([-3.0, 0.0, 2.0])
        >>> recurrent_activation_fn("hard_sigmoid")(t), recurrent_activation_fn("hard_sigmoid_keras2")(t)
        (tensor([0.0000, 0.5000, 0.8333]), tensor([0.0000, 0.5000, 0.9000]))
    """
    check_choice(name, RECURRENT_ACTIVATIONS, "recurrent_activation")
    return {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid,
            "hard_sigmoid_keras2": _hard_sigmoid_keras2}[name]


def _conv(input: Tensor, weight: Tensor, bias, stride, pads, dilation) -> Tensor:
    """Convolution with ``(before, after)`` zeros per dimension (asymmetric pads go through F.pad)."""
    n = weight.dim() - 2
    if all(lo == hi for lo, hi in pads):
        return _CONV[n](input, weight, bias, stride, tuple(lo for lo, _ in pads), dilation)
    input = F.pad(input, [p for pair in reversed(pads) for p in pair])
    return _CONV[n](input, weight, bias, stride, 0, dilation)


def _state_mask(mask: Tensor | None, batch: int, steps: int, state_size: tuple[int, ...], name: str):
    """Validate ``mask``; return it as ``(N, T, 1 or 1…, *S')``-broadcastable bool, and whether per pixel."""
    if mask is None:
        return None, False
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ShapeError(f"{name}: mask must be a bool tensor (True = valid). Received {got}.")
    step_shape, pixel_shape = (batch, steps), (batch, steps, *state_size)
    if tuple(mask.shape) == step_shape:
        return mask.reshape(batch, steps, 1, *(1,) * len(state_size)), False
    if tuple(mask.shape) == pixel_shape:
        return mask.unsqueeze(2), True
    raise ShapeError(
        f"{name}: mask must have shape (N, T) = {step_shape} (one flag per step) or (N, T, "
        f"{SPATIAL[len(state_size)]}') = {pixel_shape} (one flag per state pixel). "
        f"Received mask of shape {tuple(mask.shape)}."
    )


def _tensors(input, weight_ih, weight_hh, bias=None, hx=None, mask=None, **kwargs) -> tuple:
    return (input, weight_ih, weight_hh, bias, *(hx or ()), mask)


@masked_dispatch(_tensors)
def conv_lstm_nd(
    input: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor | None = None,
    hx: tuple[Tensor, Tensor] | None = None,
    mask: Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: PaddingArg = "same",
    dilation: int | Sequence[int] = 1,
    reverse: bool = False,
    recurrent_activation: str = "sigmoid",
    activation: str = "tanh",
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One ConvLSTM layer in one direction over a batch-first sequence (the equations in the module docs).

    Args:
        input: ``(N, T, C, *S)`` with 1 to 3 spatial dimensions ``S``.
        weight_ih: Input convolution ``(4F, C, *k)``, gates stacked ``i, f, c, o``.
        weight_hh: Recurrent convolution ``(4F, F, *k_h)`` (stride 1, ``"same"``, dilation 1).
        bias: ``(4F,)`` or ``None``.
        hx: ``(h0, c0)``, each ``(N, F, *S')``; zeros if ``None``.
        mask: ``None``, bool ``(N, T)`` or bool ``(N, T, *S')`` (see the module docstring).
        stride, padding, dilation: Of the input convolution. ``padding`` is ``"same"`` (TensorFlow's
            rule: ``ceil(S / stride)``, the odd zero at the end — even kernels allowed), ``"valid"``, an int
            or a tuple.
        reverse: Walk the steps from ``T−1`` down to 0 (the backward direction).
        recurrent_activation: ``"sigmoid"``, ``"hard_sigmoid"`` (Keras 3) or ``"hard_sigmoid_keras2"``.
        activation: ``"tanh"`` (default) or ``"relu"``.

    Returns:
        ``(output, (h, c))``: ``output (N, T, F, *S')`` holds ``h_t`` for every step ``t`` (in input
        order, also when ``reverse``); ``h`` and ``c`` are the last states, ``(N, F, *S')``.

    Shape:
        ``S'[i] = conv_output_size(S[i], k[i], stride[i], padding, dilation[i])``: ``ceil(S / s)`` for
        ``"same"``, ``floor((S + 2p − d·(k−1) − 1) / s) + 1`` for an int ``p``.

    Examples:
        >>> x = torch.ones(1, 2, 1, 3)                    # N=1, T=2, C=1, length 3
        >>> w_ih, w_hh = torch.zeros(4, 1, 1), torch.zeros(4, 1, 1)
        >>> out, (h, c) = conv_lstm_nd(x, w_ih, w_hh)     # all gates 0: i = f = o = 0.5, c̃ = 0
        >>> out.shape, h.flatten().tolist()
        (torch.Size([1, 2, 1, 3]), [0.0, 0.0, 0.0])
    """
    if not isinstance(input, Tensor) or input.dim() not in (4, 5, 6):
        got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ShapeError(f"conv_lstm_nd expects input (N, T, C, *spatial) with 1 to 3 spatial dimensions. "
                         f"Received input of shape {got}.")
    n = input.dim() - 3
    batch, steps, channels, *size = input.shape
    size = tuple(size)
    if weight_ih.dim() != n + 2 or weight_ih.shape[1] != channels or weight_ih.shape[0] % 4:
        raise ShapeError(f"weight_ih must have shape (4F, C={channels}, *kernel_size) with {n} kernel "
                         f"dimensions. Received weight_ih of shape {shape_text(weight_ih.shape)}.")
    hidden = weight_ih.shape[0] // 4
    if weight_hh.dim() != n + 2 or tuple(weight_hh.shape[:2]) != (4 * hidden, hidden):
        raise ShapeError(f"weight_hh must have shape (4F, F, *kernel_size) = ({4 * hidden}, {hidden}, ...). "
                         f"Received weight_hh of shape {shape_text(weight_hh.shape)}.")
    if bias is not None and tuple(bias.shape) != (4 * hidden,):
        raise ShapeError(f"bias must have shape (4F,) = ({4 * hidden},). Received bias of shape "
                         f"{shape_text(bias.shape)}.")
    kernel = tuple(weight_ih.shape[2:])
    strides = ntuple(stride, n, "stride")
    dilations = ntuple(dilation, n, "dilation")
    pad = check_padding(padding, n)
    reverse = check_bool(reverse, "reverse")
    gate = recurrent_activation_fn(recurrent_activation)
    act = {"tanh": torch.tanh, "relu": torch.relu}[check_choice(activation, ACTIVATIONS, "activation")]
    state_size = conv_output_size(size, kernel, strides, pad, dilations)
    state_shape = (batch, hidden, *state_size)
    step_mask, per_pixel = _state_mask(mask, batch, steps, state_size, "conv_lstm_nd")
    if hx is None:
        h = c = input.new_zeros(state_shape)
    else:
        h, c = hx
        for name, t in (("h0", h), ("c0", c)):
            if tuple(t.shape) != state_shape:
                raise ShapeError(f"{name} must have shape (N, F, *S') = {state_shape}. "
                                 f"Received {name} of shape {shape_text(t.shape)}.")

    # The mask as 1.0 (valid) / 0.0 (invalid) in the input's dtype: the weight of the selections below.
    weight_mask = None if step_mask is None else step_mask.to(input.dtype)
    cleaned = step_mask is not None and (not per_pixel or state_size == size)
    if cleaned:
        # Invalid steps and pixels read as zeros: selected, not multiplied, so that a NaN or inf stored
        # there (a cloud, a missing frame) reaches neither the valid outputs nor any gradient. The gates
        # at invalid positions are then finite, which the lerp selection below relies on.
        input = torch.where(step_mask, input, torch.zeros((), dtype=input.dtype, device=input.device))
    pads = padding_amounts(size, kernel, strides, pad, dilations)
    rec_pads = padding_amounts(state_size, tuple(weight_hh.shape[2:]), 1, "same", 1)
    ones = (1,) * n
    # Two ways to the same gates. When the input convolution has the recurrent one's geometry (stride 1,
    # dilation 1, same padding), one convolution of cat([x_t, h]) with cat([W_x, W_h]) per step is the
    # fastest on CPU (measured in benchmarks/bench_conv_lstm.py: about 1.5× faster than the split form).
    # Otherwise the input convolution runs once over all T·N frames and only W_h * h runs step by step.
    fused = all(s == 1 for s in strides) and all(d == 1 for d in dilations) and pads == rec_pads and (
        tuple(state_size) == tuple(size))
    if fused:
        weight = torch.cat([weight_ih, weight_hh], dim=1)
        x_steps = input.unbind(1)
    else:
        # Time-major frames, so that step t's gates are one contiguous block: unbind's backward is then a
        # plain concatenation (x_gates[:, t] would instead add T full-size zero tensors in backward).
        frames = input.transpose(0, 1).reshape(steps * batch, channels, *size)
        x_gates = _conv(frames, weight_ih, bias, strides, pads, dilations)
        x_steps = x_gates.view(steps, batch, 4 * hidden, *state_size).unbind(0)
    # Steps where every sample (and pixel) is valid need no selection; one look at the mask finds them.
    # That look is a data-dependent Python list, which torch.compile(fullgraph=True) and torch.export
    # cannot trace: there every step is selected (a selection with an all-valid mask is exact too).
    if step_mask is None:
        all_valid = [True] * steps
    elif torch.compiler.is_compiling():
        all_valid = [False] * steps
    else:
        all_valid = step_mask.transpose(0, 1).flatten(1).all(1).tolist()
    weight_steps = None if weight_mask is None else weight_mask.transpose(0, 1)  # (T, N, 1, ...)

    outputs: list[Tensor | None] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        if fused:
            gates = _conv(torch.cat([x_steps[t], h], dim=1), weight, bias, ones, pads, ones)
        else:
            gates = _conv(h, weight_hh, None, ones, rec_pads, ones).add_(x_steps[t])
        i, f, g, o = gates.chunk(4, 1)
        c_new = gate(f) * c + gate(i) * act(g)
        h_new = gate(o) * act(c_new)
        if all_valid[t]:
            h, c = h_new, c_new
        else:
            # Keep the old state where invalid: lerp with a 0/1 weight is an exact selection for finite
            # states (its kernel computes lerp(a, b, 0) = a + 0·(b − a) = a and lerp(a, b, 1) =
            # b − (b − a)·0 = b) with torch.where's gradients (grad·(1 − w) and grad·w), and on CPU it is
            # about 8× faster than torch.where (measured on the benchmark's (8, 16, 32, 32) states).
            # It is not NaN-safe (lerp(a, NaN, 0) is NaN): it relies on the new state being finite where
            # the mask is False, which the zeroed input above ensures (a NaN there can only come from
            # valid data, whose outputs are NaN anyway).
            # Where the input could not be cleaned (a per-pixel mask on a strided or "valid" grid),
            # torch.where keeps the old state even when the new one is NaN.
            if cleaned:
                w = weight_steps[t]
                h, c = torch.lerp(h, h_new, w), torch.lerp(c, c_new, w)
            else:
                keep = step_mask[:, t]
                h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
        outputs[t] = h
    return torch.stack(outputs, 1), (h, c)


@register_masked_op(conv_lstm_nd)
def _conv_lstm_masked(ctx: MaskedContext, func, args, kwargs):
    """Under :func:`cnnkit.masked`: the input is zeroed outside each sample's extent and every state pixel outside
    its sample's state extent is masked (kept at 0), so the input and recurrent convolutions read zeros there, as
    each sample alone reads its zero padding; one batched call gives every sample its own result."""
    from cnnkit.errors import UnsupportedError

    b = ctx.bind(func, args, kwargs)
    x = b["input"]
    weight_ih, weight_hh = b["weight_ih"], b["weight_hh"]
    if not ctx.is_padded(x) or any(ctx.is_padded(t) for t in (weight_ih, weight_hh, b.get("bias"))):
        raise UnsupportedError("masked(): conv_lstm_nd needs the input padded and the weights ordinary.")
    n = x.dim() - 3
    if ctx.spatial_axes(x) != tuple(range(3, x.dim())) or ctx.record(x).batch != 0:
        raise UnsupportedError(
            f"masked(): conv_lstm_nd needs a padded input laid out (N, T, C, *spatial). Received spatial "
            f"dimensions at {ctx.spatial_axes(x)} of shape {tuple(x.shape)}.")
    sizes = ctx.sizes(x)
    kernel = tuple(weight_ih.shape[2:])
    strides = ntuple(b.get("stride", 1), n, "stride")
    dilations = ntuple(b.get("dilation", 1), n, "dilation")
    pad = check_padding(b.get("padding", "same"), n)
    canvas = tuple(x.shape[3:])
    before = [lo for lo, _ in padding_amounts(canvas, kernel, strides, pad, dilations)]
    state_sizes = []
    for size in sizes:
        if [lo for lo, _ in padding_amounts(size, kernel, strides, pad, dilations)] != before:
            raise UnsupportedError(
                f"masked(): conv_lstm_nd with padding={pad!r} and stride={strides} pads a sample of extent {size} "
                f"differently from the canvas {canvas} (the padding depends on the size); use sizes with the "
                "canvas's remainder modulo the stride, or an integer padding.")
        state_sizes.append(tuple(conv_output_size(size, kernel, strides, pad, dilations)))
    state_sizes = tuple(state_sizes)
    state_canvas = tuple(conv_output_size(canvas, kernel, strides, pad, dilations))
    batch, steps = x.shape[:2]
    inside = ctx._mask(state_sizes, state_canvas, x.device)  # (N, 1, *S')
    pixels = inside.expand(batch, steps, *state_canvas)
    mask = b.get("mask")
    if mask is not None:
        _state_mask(mask, batch, steps, state_canvas, "conv_lstm_nd")
        mask = mask.view(batch, steps, *([1] * n)) if mask.dim() == 2 else mask
        pixels = pixels & mask
    hx = b.get("hx")
    if hx is not None:
        hx = tuple(torch.where(inside, t, torch.zeros((), dtype=t.dtype, device=t.device)) for t in hx)
    out, (h, c) = func(ctx.zeros_outside(x), weight_ih, weight_hh, b.get("bias"), hx, pixels,
                       stride=b.get("stride", 1), padding=b.get("padding", "same"), dilation=b.get("dilation", 1),
                       reverse=b.get("reverse", False), recurrent_activation=b.get("recurrent_activation", "sigmoid"),
                       activation=b.get("activation", "tanh"))
    axes = tuple(range(3, out.dim()))
    return ctx.track(out, state_sizes, axes=axes), (ctx.track(h, state_sizes), ctx.track(c, state_sizes))


class _ConvLSTMNd(KerasWeightsMixin, nn.Module):
    _ndim: int

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: PaddingArg = "same",
        dilation: int | Sequence[int] = 1,
        bias: bool = True,
        bidirectional: bool = False,
        num_layers: int = 1,
        dropout: float = 0.0,
        recurrent_activation: str = "sigmoid",
        activation: str = "tanh",
        device=None,
        dtype=None,
        *,
        init: str = "torch",
    ) -> None:
        super().__init__()
        n = self._ndim
        self.in_channels = positive_int(in_channels, "in_channels")
        self.hidden_channels = positive_int(hidden_channels, "hidden_channels")
        self.kernel_size = ntuple(kernel_size, n, "kernel_size")
        self.stride = ntuple(stride, n, "stride")
        self.padding = check_padding(padding, n)
        self.dilation = ntuple(dilation, n, "dilation")
        self.bias = check_bool(bias, "bias")
        self.bidirectional = check_bool(bidirectional, "bidirectional")
        self.num_layers = positive_int(num_layers, "num_layers")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ShapeError(f"dropout must be a number in [0, 1]. Received dropout={dropout!r}.")
        self.dropout = float(dropout)
        self.recurrent_activation = check_choice(recurrent_activation, RECURRENT_ACTIVATIONS,
                                                 "recurrent_activation")
        self.activation = check_choice(activation, ACTIVATIONS, "activation")
        self.init = check_choice(init, INITS, "init")
        factory = {"device": device, "dtype": dtype}
        f = self.hidden_channels
        for layer, suffix in self._names():
            cin = self.in_channels if layer == 0 else f * self.num_directions
            self.register_parameter("weight_ih" + suffix,
                                    nn.Parameter(torch.empty((4 * f, cin, *self.kernel_size), **factory)))
            self.register_parameter("weight_hh" + suffix,
                                    nn.Parameter(torch.empty((4 * f, f, *self.kernel_size), **factory)))
            if self.bias:
                self.register_parameter("bias" + suffix, nn.Parameter(torch.empty(4 * f, **factory)))
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _names(self) -> list[tuple[int, str]]:
        """``(layer, suffix)`` per layer and direction, in ``nn.LSTM``'s order (``_l0``, ``_l0_reverse``, …)."""
        return [(layer, f"_l{layer}" + ("_reverse" if d else ""))
                for layer in range(self.num_layers) for d in range(self.num_directions)]

    def _layer_args(self, layer: int) -> dict:
        """The input convolution of ``layer``: the constructor's for layer 0; stride 1, ``"same"`` after."""
        if layer == 0:
            return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}
        return {"stride": 1, "padding": "same", "dilation": self.dilation}

    def state_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial size ``S'`` of ``h``, ``c`` and the output for an input of spatial size ``input_size``."""
        return conv_output_size(tuple(input_size), self.kernel_size, self.stride, self.padding, self.dilation)

    def reset_parameters(self, init: str | None = None, generator: torch.Generator | None = None) -> None:
        """Draw new weights; ``init`` (default: the constructor's) is ``"torch"`` or ``"keras"``.

        ``"torch"``: each convolution as ``nn.Conv{n}d`` draws it, U(±1/√fan_in) with ``fan_in =
        in·prod(kernel_size)``; the bias from the input convolution's bound.

        ``"keras"``: Keras ``ConvLSTM{n}D``'s defaults — ``kernel`` glorot_uniform (fans of the Keras
        shape ``(*k, in, 4F)``: ``prod(k)·in`` and ``prod(k)·4F``), ``recurrent_kernel`` orthogonal (the
        Keras array reshaped to ``(prod(k)·F, 4F)``), bias zeros except the forget gate's ones
        (``unit_forget_bias=True``).
        """
        init = self.init if init is None else check_choice(init, INITS, "init")
        f = self.hidden_channels
        with torch.no_grad():
            for _, suffix in self._names():
                w_ih, w_hh = getattr(self, "weight_ih" + suffix), getattr(self, "weight_hh" + suffix)
                b = getattr(self, "bias" + suffix) if self.bias else None
                if init == "keras":
                    glorot_uniform_(w_ih, generator=generator)  # torch layout (4F, in, *k): Keras's fans
                    orthogonal_(w_hh, generator=generator)  # on the Keras view (prod(k)·F, 4F)
                    if b is not None:
                        b.zero_()
                        b[f:2 * f] = 1.0
                else:
                    bound = 1 / math.sqrt(w_ih[0].numel())
                    w_ih.uniform_(-bound, bound, generator=generator)
                    w_hh.uniform_(-1 / math.sqrt(w_hh[0].numel()), 1 / math.sqrt(w_hh[0].numel()), generator=generator)
                    if b is not None:
                        b.uniform_(-bound, bound, generator=generator)

    def forward(
        self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        n, name = self._ndim, type(self).__name__
        if not isinstance(input, Tensor) or input.dim() != n + 3 or input.shape[2] != self.in_channels:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ShapeError(
                f"{name} expects input (N, T, C, {SPATIAL[n]}) with C = in_channels = {self.in_channels}. "
                f"Received input of shape {got}."
            )
        batch, steps = input.shape[:2]
        size = self.state_size(input.shape[3:])
        _state_mask(mask, batch, steps, size, name)  # validate once, with this layer's name
        states = self.num_layers * self.num_directions
        expected = (states, batch, self.hidden_channels, *size)
        if hx is not None:
            for what, t in zip(("h0", "c0"), hx):
                if tuple(t.shape) != expected:
                    raise ShapeError(f"{name}: {what} must have shape (num_layers·directions, N, F, "
                                     f"{SPATIAL[n]}') = {expected}. Received {what} of shape "
                                     f"{shape_text(t.shape)}.")
        h_n, c_n = [], []
        layer_input = input
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                out, (h, c) = conv_lstm_nd(
                    layer_input,
                    getattr(self, "weight_ih" + suffix),
                    getattr(self, "weight_hh" + suffix),
                    getattr(self, "bias" + suffix) if self.bias else None,
                    None if hx is None else (hx[0][index], hx[1][index]),
                    mask,
                    reverse=bool(direction),
                    recurrent_activation=self.recurrent_activation,
                    activation=self.activation,
                    **self._layer_args(layer),
                )
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input, (torch.stack(h_n), torch.stack(c_n))

    def extra_repr(self) -> str:
        n = self._ndim
        text = f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1,) * n:
            text += f", stride={self.stride}"
        if self.padding != "same":
            text += f", padding={self.padding!r}"
        if self.dilation != (1,) * n:
            text += f", dilation={self.dilation}"
        for attr, default in (("bias", True), ("bidirectional", False), ("num_layers", 1), ("dropout", 0.0),
                              ("recurrent_activation", "sigmoid"), ("activation", "tanh"), ("init", "torch")):
            if getattr(self, attr) != default:
                text += f", {attr}={getattr(self, attr)!r}"
        return text


class ConvLSTM2d(_ConvLSTMNd):
    """Convolutional LSTM over sequences of images (Keras's ``ConvLSTM2D``, returning like ``nn.LSTM``).

    Gates are convolutions instead of matrix products (equations, gate order and mask rules in the
    :mod:`cnnkit.nn.conv_lstm` module docstring; the math is :func:`conv_lstm_nd`).

    Args:
        in_channels: Channels C of each frame.
        hidden_channels: Channels F of ``h`` and ``c`` (Keras's ``filters``).
        kernel_size: Int or ``(kh, kw)``, for both convolutions.
        stride: Of the input convolution of the first layer (the recurrent one always uses 1).
        padding: Of the input convolution of the first layer: ``"same"`` (default; TensorFlow's rule,
            ``ceil(H / stride)`` — even kernels are allowed, the odd zero going at the end, also in the
            recurrent convolution), ``"valid"``, an int or a tuple. Later layers use ``"same"`` and
            stride 1 so that every layer's state has the same size ``(H', W')``.
        dilation: Of the input convolutions (the recurrent one uses 1, as Keras).
        bias: One bias of ``4F`` per layer and direction (Keras keeps one; ``nn.LSTM`` two).
        bidirectional: Add a layer walking the sequence backwards; outputs are concatenated on channels.
        num_layers: Stacked layers; layer ``l > 0`` reads the ``D·F`` output channels of layer ``l − 1``.
        dropout: Dropout on the outputs of every layer but the last, in training.
        recurrent_activation: ``"sigmoid"`` (default), ``"hard_sigmoid"`` (Keras 3: ``clip(x/6 + 0.5)``)
            or ``"hard_sigmoid_keras2"`` (Keras 2: ``clip(0.2·x + 0.5)``), clipped to [0, 1].
        activation: ``"tanh"`` (default) or ``"relu"``.
        device, dtype: Factory arguments of the parameters.
        init: ``"torch"`` (default) or ``"keras"``; see :meth:`reset_parameters`.

    Parameters (per layer ``l`` and direction; suffix ``_l{l}`` or ``_l{l}_reverse`` as ``nn.LSTM``):
        ``weight_ih_l{l}`` ``(4F, C_l, kh, kw)``, ``weight_hh_l{l}`` ``(4F, F, kh, kw)``, ``bias_l{l}``
        ``(4F,)``, gates stacked ``i, f, c, o``. Keras: ``kernel (kh, kw, C_l, 4F)``, ``recurrent_kernel
        (kh, kw, F, 4F)``, ``bias (4F,)``; with several layers or directions the Keras names get a
        ``"layer{l}_forward/"`` or ``"layer{l}_backward/"`` prefix (a ``Bidirectional`` wrapper's
        ``get_weights()`` lists forward then backward).

    Shape:
        - Input: ``(N, T, C, H, W)`` (batch first, like Keras); ``hx = (h0, c0)`` each
          ``(num_layers·D, N, F, H', W')``; ``mask`` ``(N, T)`` or ``(N, T, H', W')``, bool.
        - Output: ``(output, (h_n, c_n))`` with ``output (N, T, D·F, H', W')`` (every step of the last
          layer) and ``h_n, c_n (num_layers·D, N, F, H', W')``; ``H' = ceil(H / s)`` for ``"same"``,
          ``floor((H + 2p − d·(kh − 1) − 1) / s) + 1`` otherwise (:func:`cnnkit.shapes.conv_output_size`).
        - Parameters per layer and direction: ``4F·(kh·kw·(C_l + F)) + 4F``.

    Examples:
        >>> lstm = ConvLSTM2d(8, 16, 3)
        >>> out, (h, c) = lstm(torch.zeros(2, 5, 8, 10, 10))
        >>> out.shape, h.shape
        (torch.Size([2, 5, 16, 10, 10]), torch.Size([1, 2, 16, 10, 10]))
        >>> {k: tuple(v.shape) for k, v in lstm.keras_weights().items()}
        {'kernel': (3, 3, 8, 64), 'recurrent_kernel': (3, 3, 16, 64), 'bias': (64,)}

    References:
        Shi, Chen, Wang, Yeung, Wong, Woo. "Convolutional LSTM Network: A Machine Learning Approach for
        Precipitation Nowcasting", NeurIPS 2015. https://arxiv.org/abs/1506.04214 ;
        Keras ``ConvLSTM2D``: https://keras.io/api/layers/recurrent_layers/conv_lstm2d/
    """

    _ndim = 2


class ConvLSTM1d(_ConvLSTMNd):
    """Convolutional LSTM over sequences of 1-D signals (Keras's ``ConvLSTM1D``).

    Arguments, parameters and masks as :class:`ConvLSTM2d` with one spatial dimension.

    Shape:
        - Input: ``(N, T, C, L)``; output ``(N, T, D·F, L')``, ``h_n, c_n (num_layers·D, N, F, L')``.
        - Keras weights: ``kernel (k, C, 4F)``, ``recurrent_kernel (k, F, 4F)``, ``bias (4F,)``.

    Examples:
        >>> out, (h, c) = ConvLSTM1d(3, 4, 3, stride=2, bidirectional=True)(torch.zeros(2, 6, 3, 9))
        >>> out.shape, h.shape
        (torch.Size([2, 6, 8, 5]), torch.Size([2, 2, 4, 5]))
    """

    _ndim = 1


# --- registrations: Keras layout, Keras initialisation ----------------------------------------------


def _keras_prefixes(m: _ConvLSTMNd) -> list[tuple[str, str]]:
    """(torch suffix, Keras prefix) per layer and direction."""
    single = m.num_layers == 1 and not m.bidirectional
    return [(suffix, "" if single else f"layer{layer}_{'backward' if suffix.endswith('reverse') else 'forward'}/")
            for layer, suffix in m._names()]


def _kernel_to_keras(w: Tensor) -> Tensor:
    return w.movedim((0, 1), (-1, -2))  # (4F, C, *k) -> (*k, C, 4F)


def _kernel_to_torch(k: Tensor) -> Tensor:
    return k.movedim((-1, -2), (0, 1))  # (*k, C, 4F) -> (4F, C, *k)


def _to_keras(m, state):
    out = {}
    for suffix, prefix in _keras_prefixes(m):
        out[prefix + "kernel"] = _kernel_to_keras(state["weight_ih" + suffix])
        out[prefix + "recurrent_kernel"] = _kernel_to_keras(state["weight_hh" + suffix])
        if m.bias:
            out[prefix + "bias"] = state["bias" + suffix]
    return out


def _to_torch(m, arrays):
    out = {}
    for suffix, prefix in _keras_prefixes(m):
        out["weight_ih" + suffix] = _kernel_to_torch(arrays[prefix + "kernel"])
        out["weight_hh" + suffix] = _kernel_to_torch(arrays[prefix + "recurrent_kernel"])
        if m.bias:
            out["bias" + suffix] = arrays[prefix + "bias"]
    return out


def _keras_class(m: _ConvLSTMNd) -> str:
    name = f"ConvLSTM{m._ndim}D"
    if m.bidirectional:
        name = f"Bidirectional({name})"
    return name if m.num_layers == 1 else f"{m.num_layers} × {name}"


register_layout(ConvLSTM1d, ConvLSTM2d, layout=KerasLayout(_keras_class, _to_keras, _to_torch))


@register_initializer(ConvLSTM1d, ConvLSTM2d)
def _keras_initialisation(module, generator) -> None:
    """What ``cnnkit.init.keras_`` does to these layers: their own ``reset_parameters("keras")``."""
    module.reset_parameters("keras", generator)
