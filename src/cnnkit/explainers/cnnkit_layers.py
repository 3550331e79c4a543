"""Explainers for cnnkit's own layers: :class:`~cnnkit.nn.LocallyConnected1d`/``2d`` and
:class:`~cnnkit.nn.ConvLSTM1d`/``2d``.

Registration points downward: the explainers (floor 3) know the layers of :mod:`cnnkit.nn` (floor 2), never
the other way round. :mod:`cnnkit.explainers` imports this file, so the registrations are in place whenever
``explain`` or ``summary`` can run.
"""

from __future__ import annotations

import math

from cnnkit.errors import ShapeError
from cnnkit.explainers.layers import _SPATIAL, dot, expect_channels, expect_rank, x
from cnnkit.explainers.registry import LayerReport, register_explainer
from cnnkit.init import fans
from cnnkit.nn import ConvLSTM1d, ConvLSTM2d, LocallyConnected1d, LocallyConnected2d
from cnnkit.shapes import describe_conv_size

__all__: list[str] = []

_KERNEL = {1: "k", 2: "kh, kw", 3: "kd, kh, kw"}


# --- locally connected ---------------------------------------------------------------------------------


@register_explainer(LocallyConnected1d, LocallyConnected2d)
def _locally_connected(m: LocallyConnected1d | LocallyConnected2d, shape: tuple[int, ...]) -> LayerReport:
    n = m._ndim
    expect_rank(m, shape, [n + 1], f"(C, {_SPATIAL[n]})")
    expect_channels(m, shape[0], m.in_channels, "in_channels", shape)
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
        f"{(positions, inputs, f)}, each patch flattened row-major over "
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


# --- convolutional LSTM --------------------------------------------------------------------------------


@register_explainer(ConvLSTM1d, ConvLSTM2d)
def _conv_lstm(m: ConvLSTM1d | ConvLSTM2d, shape: tuple[int, ...]) -> LayerReport:
    n, name = m._ndim, type(m).__name__
    if len(shape) != n + 2:
        raise ShapeError(f"{name} expects input_shape (T, C, {_SPATIAL[n]}) without the batch dimension "
                         f"({n + 2} numbers). Received input_shape={shape}.")
    if shape[1] != m.in_channels:
        raise ShapeError(f"{name} has in_channels={m.in_channels}, so input_shape[1] must be {m.in_channels}. "
                         f"Received input_shape[1]={shape[1]}.")
    steps_t, size = shape[0], shape[2:]
    f, k, d = m.hidden_channels, m.kernel_size, m.num_directions
    out = m.state_size(size)
    lines = [f"input convolution, all {steps_t} frames at once: {line}"
             for line in describe_conv_size(size, k, m.stride, m.padding, m.dilation)]
    lines.append(f"recurrent convolution {f} → 4·{f} channels, {x(k)}, stride 1, 'same': keeps {x(out)}")
    lines.append(
        f"each of the {steps_t} steps: [i, f, c̃, o] = W_x * x_t + W_h * h_(t−1) + b; "
        f"c_t = f⊙c_(t−1) + i⊙{m.activation}(c̃); h_t = o⊙{m.activation}(c_t) "
        f"(i, f, o through {m.recurrent_activation})"
    )
    lines.append(
        f"{m.num_layers} layer(s) × {d} direction(s); output keeps h_t of every step of the last layer "
        f"({d}·{f} channels); h_n and c_n hold the last state of each layer and direction"
    )
    lines.append(
        f"weights: torch weight_ih (4F, C, {_KERNEL[n]}) = {(4 * f, m.in_channels, *k)} ↔ Keras "
        f"kernel {(*k, m.in_channels, 4 * f)}; weight_hh {(4 * f, f, *k)} ↔ "
        f"recurrent_kernel {(*k, f, 4 * f)}; bias (4F,) = ({4 * f},); gates i, f, c, o"
    )
    total = 0
    for layer in range(m.num_layers):
        cin = m.in_channels if layer == 0 else d * f
        count = 4 * f * (math.prod(k) * (cin + f)) + (4 * f if m.bias else 0)
        lines.append(
            f"params, layer {layer}{' per direction' if d == 2 else ''}: 4·{f}·({dot(k)}·({cin} + {f}))"
            + (f" + 4·{f}" if m.bias else "") + f" = {count:,}"
        )
        total += count * d
    lines.append(f"params: {total:,}")
    return LayerReport((steps_t, d * f, *out), lines, None)
