"""Explainers for the standard ``torch.nn`` layers.

Each function turns ``(module, input_shape)`` into a :class:`~cnnkit.explainers.registry.LayerReport`:
the output shape (computed with :mod:`cnnkit.shapes`, never by running the layer), the derivation in
words, and the window geometry used for receptive fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.explainers.registry import LayerReport, register_explainer
from cnnkit.shapes import (
    conv_output_size,
    conv_transpose_output_size,
    describe_conv_size,
    describe_pool_size,
    pool_output_size,
)

__all__: list[str] = []

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}


def x(values: Sequence[int]) -> str:
    """``(5, 5)`` → ``"5×5"``."""
    return "×".join(str(v) for v in values)


def dot(values: Sequence[int]) -> str:
    """``(3, 5, 5)`` → ``"3·5·5"``."""
    return "·".join(str(v) for v in values)


def expect_rank(module: nn.Module, input_shape: tuple[int, ...], ranks: Sequence[int], layout: str) -> None:
    """Raise if ``input_shape`` (no batch dimension) does not have one of ``ranks`` entries."""
    if len(input_shape) not in ranks:
        raise ShapeError(
            f"{type(module).__name__} expects input_shape {layout} without the batch dimension "
            f"({' or '.join(map(str, ranks))} numbers). Received input_shape={input_shape}."
        )


def expect_channels(module: nn.Module, received: int, expected: int, name: str,
                    input_shape: Sequence[int] | None = None) -> None:
    """Raise if the channel count ``received`` (``input_shape[0]``) is not the module's ``name=expected``.

    Given the whole ``input_shape``, a shape whose last entry is ``expected`` (and whose first is not) is
    named channels-last, and the channels-first shape to try is given.
    """
    if received == expected:
        return
    rule = f"{type(module).__name__} has {name}={expected}, so input_shape[0] must be {expected}."
    shape = tuple(input_shape) if input_shape is not None else ()
    if len(shape) < 2 or shape[-1] != expected:
        raise ShapeError(f"{rule} Received input_shape[0]={received}" + (f" (input_shape={shape})." if shape else "."))
    first = (shape[-1], *shape[:-1])
    spatial = _SPATIAL.get(len(shape) - 1)
    layouts = f" ({spatial}, C), not channels-first (C, {spatial})" if spatial else ""
    raise ShapeError(
        f"{rule} Received input_shape={shape}, which looks channels-last{layouts}: cnnkit, like torch, puts the "
        f"channels first. Try input_shape={first} (on the command line --input {'x'.join(map(str, first))})."
    )


def init_line(weight_shape: Sequence[int]) -> str:
    """How PyTorch initialised a conv/linear weight, and what Keras's glorot_uniform would draw from."""
    out, inp, *k = weight_shape
    rf = math.prod(k)
    fan_in, fan_out = inp * rf, out * rf
    torch_bound = 1 / math.sqrt(fan_in)
    keras_bound = math.sqrt(6 / (fan_in + fan_out))
    return (
        f"init: PyTorch draws U(±1/√fan_in) = U(±{torch_bound:.4g}); Keras glorot_uniform draws "
        f"U(±√(6/(fan_in+fan_out))) = U(±√(6/({fan_in}+{fan_out}))) = U(±{keras_bound:.4g}) "
        "(cnnkit.init.keras_ switches)"
    )


# --- convolutions ------------------------------------------------------------------------------------


@register_explainer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.modules.conv._ConvNd, shape: tuple[int, ...]) -> LayerReport:
    return conv_report(m, shape, m.padding)


def conv_report(m: nn.modules.conv._ConvNd, shape: tuple[int, ...], padding) -> LayerReport:
    """The explanation of a convolution module whose zeros follow ``padding`` (any cnnkit.shapes padding).

    Modules that pad on their own before the convolution (a Keras ``"same"`` or ``"causal"`` layer)
    pass that rule here instead of ``m.padding``.
    """
    n = len(m.kernel_size)
    expect_rank(m, shape, [n + 1], f"(C, {_SPATIAL[n]})")
    expect_channels(m, shape[0], m.in_channels, "in_channels", shape)
    spatial = conv_output_size(shape[1:], m.kernel_size, m.stride, padding, m.dilation)
    cin = m.in_channels // m.groups
    per_filter = cin * math.prod(m.kernel_size)
    grouped = (
        f" (groups={m.groups}: each filter sees {cin} of the {m.in_channels} input channels)"
        if m.groups > 1 else ""
    )
    steps = [f"size: {line}" for line in describe_conv_size(shape[1:], m.kernel_size, m.stride, padding,
                                                             m.dilation)]
    steps.append(
        f"weight: {m.out_channels} filters, each {cin} input channels × {x(m.kernel_size)} = "
        f"{per_filter} weights{grouped}"
    )
    bias = m.out_channels if m.bias is not None else 0
    steps.append(
        f"params: {m.out_channels}·({dot((cin, *m.kernel_size))})"
        + (f" + {bias} biases" if bias else "")
        + f" = {m.out_channels * per_filter + bias:,}"
    )
    positions = math.prod(spatial)
    steps.append(
        f"work: {x(spatial)} positions × ({dot((cin, *m.kernel_size))} inputs) × {m.out_channels} filters "
        f"= {positions * per_filter * m.out_channels:,} multiply-adds per sample"
    )
    steps.append(init_line(m.weight.shape))
    return LayerReport((m.out_channels, *spatial), steps, (m.kernel_size, m.stride, m.dilation))


@register_explainer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(m: nn.modules.conv._ConvTransposeNd, shape: tuple[int, ...]) -> LayerReport:
    n = len(m.kernel_size)
    expect_rank(m, shape, [n + 1], f"(C, {_SPATIAL[n]})")
    expect_channels(m, shape[0], m.in_channels, "in_channels", shape)
    spatial = conv_transpose_output_size(shape[1:], m.kernel_size, m.stride, m.padding, m.output_padding,
                                         m.dilation)
    lines = []
    for i, k, s, p, e, d, o in zip(shape[1:], m.kernel_size, m.stride, m.padding, m.output_padding,
                                    m.dilation, spatial):
        line = f"size: {i} → ({i}−1)·{s} − 2·{p} + {d}·({k}−1) + {e} + 1 = {o}"
        if line not in lines:
            lines.append(line)
    cout = m.out_channels // m.groups
    lines.append(
        f"weight: torch keeps (in_channels, out_channels/groups, {_SPATIAL[n]}) = {tuple(m.weight.shape)}: "
        f"each input channel spreads a {x(m.kernel_size)} stamp into {cout} output channels"
    )
    return LayerReport((m.out_channels, *spatial), lines, None)


# --- dense and embedding -----------------------------------------------------------------------------


@register_explainer(nn.Linear)
def _linear(m: nn.Linear, shape: tuple[int, ...]) -> LayerReport:
    if shape[-1] != m.in_features:
        raise ShapeError(
            f"Linear has in_features={m.in_features}, so the last entry of input_shape must be "
            f"{m.in_features}. Received input_shape={shape}."
        )
    bias = m.out_features if m.bias is not None else 0
    steps = [
        "y = x·Wᵀ + b over the last dimension"
        + (f" (applied at each of the {x(shape[:-1])} leading positions)" if len(shape) > 1 else ""),
        f"weight: torch keeps W as (out_features, in_features) = ({m.out_features}, {m.in_features}), "
        f"one row per output unit; Keras keeps the kernel as (in, out) = ({m.in_features}, "
        f"{m.out_features}) and computes x·kernel — the same matrix, transposed",
        f"params: {m.in_features}·{m.out_features}"
        + (f" + {bias} biases" if bias else "")
        + f" = {m.in_features * m.out_features + bias:,}",
        init_line(m.weight.shape),
    ]
    return LayerReport((*shape[:-1], m.out_features), steps, None)


@register_explainer(nn.Embedding)
def _embedding(m: nn.Embedding, shape: tuple[int, ...]) -> LayerReport:
    steps = [
        f"each integer index in [0, {m.num_embeddings}) is replaced by a row of the "
        f"({m.num_embeddings}, {m.embedding_dim}) table: {x(shape)} indices → {x(shape)} vectors of "
        f"{m.embedding_dim}",
        "the table has the same layout in torch (weight) and Keras (embeddings)",
        f"params: {m.num_embeddings}·{m.embedding_dim} = {m.num_embeddings * m.embedding_dim:,}",
    ]
    return LayerReport((*shape, m.embedding_dim), steps, None)


# --- pooling -----------------------------------------------------------------------------------------

_POOLS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}


@register_explainer(*_POOLS)
def _pool(m: nn.Module, shape: tuple[int, ...]) -> LayerReport:
    n = next(v for t, v in _POOLS.items() if isinstance(m, t))
    expect_rank(m, shape, [n + 1], f"(C, {_SPATIAL[n]})")
    dilation = getattr(m, "dilation", 1)
    args = (shape[1:], m.kernel_size, m.stride, m.padding, dilation, m.ceil_mode)
    spatial = pool_output_size(*args)
    kind = "maximum" if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)) else "average"
    k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * n
    steps = [f"size: {line}" for line in describe_pool_size(*args)]
    steps.append(f"takes the {kind} of each {x(k)} window, channel by channel; no weights")
    return LayerReport((shape[0], *spatial), steps, (m.kernel_size, m.stride or m.kernel_size, dilation))


_ADAPTIVE = {
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
}


@register_explainer(*_ADAPTIVE)
def _adaptive_pool(m: nn.Module, shape: tuple[int, ...]) -> LayerReport:
    n = next(v for t, v in _ADAPTIVE.items() if isinstance(m, t))
    expect_rank(m, shape, [n + 1], f"(C, {_SPATIAL[n]})")
    target = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * n
    spatial = tuple(s if t is None else t for s, t in zip(shape[1:], target))
    kind = "max" if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)) else "average"
    if all(s == 1 for s in spatial):
        steps = [f"global {kind} pooling: each channel's {x(shape[1:])} map → one number"]
    else:
        steps = [f"adaptive {kind} pooling: {x(shape[1:])} → {x(spatial)} with windows sized to fit"]
    return LayerReport((shape[0], *spatial), steps, None)


# --- normalisation and element-wise ------------------------------------------------------------------

_BN = {nn.BatchNorm1d: ([1, 2], "(C,) or (C, L)"), nn.BatchNorm2d: ([3], "(C, H, W)"),
       nn.BatchNorm3d: ([4], "(C, D, H, W)")}


@register_explainer(*_BN)
def _batch_norm(m: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...]) -> LayerReport:
    ranks, layout = next(v for t, v in _BN.items() if isinstance(m, t))
    expect_rank(m, shape, ranks, layout)
    expect_channels(m, shape[0], m.num_features, "num_features", shape)
    c = m.num_features
    steps = [
        f"normalises each of the {c} channels: y = (x − mean)/√(var + eps)·γ + β, with the batch's "
        "statistics in training and running estimates in eval",
        f"eps={m.eps:g} (Keras default 1e-3); momentum={m.momentum} means running ← "
        f"{1 - (m.momentum or 0):g}·running + {m.momentum}·batch, which Keras writes as "
        f"momentum={1 - (m.momentum or 0):g}",
    ]
    if m.affine:
        steps.append(f"params: γ and β, {c} each = {2 * c:,}; plus {c} running means and {c} running "
                     "variances (buffers, Keras's non-trainable weights)")
    return LayerReport(shape, steps, "pointwise")


_SHAPE_KEEPING = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm,
)


@register_explainer(*_SHAPE_KEEPING)
def _elementwise(m: nn.Module, shape: tuple[int, ...]) -> LayerReport:
    if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
        what = f"zeroes inputs with probability {m.p} in training (identity in eval)"
    elif isinstance(m, (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm)):
        what = "normalises with statistics of each sample (receptive fields ignore them)"
    else:
        what = "applied element by element"
    n_params = sum(p.numel() for p in m.parameters())
    return LayerReport(shape, [what + ("" if n_params else "; no weights")], "pointwise")


@register_explainer(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def _softmax(m: nn.Module, shape: tuple[int, ...]) -> LayerReport:
    dim = m.dim if m.dim is not None else 0
    # The module sees a batch: dim 1 is the channel dimension of one sample.
    per_pixel = dim == 1 or (dim < 0 and len(shape) + dim == 0)
    text = "turns each position's channel vector into probabilities that sum to 1" if per_pixel else (
        f"normalises along dim={m.dim}")
    return LayerReport(shape, [text], "pointwise" if per_pixel else None)


# --- reshaping ---------------------------------------------------------------------------------------


def _reshaped(m: nn.Module, shape: tuple[int, ...], how, rule: str) -> tuple[int, ...]:
    """The shape ``how`` gives a meta batch of one ``shape`` (no memory), or a ShapeError naming ``rule``."""
    try:
        out = tuple(how(torch.empty((1, *shape), device="meta")).shape)
    except (RuntimeError, IndexError, TypeError, ValueError) as error:
        raise ShapeError(f"{m!r} cannot take input_shape={shape}: {rule}. ({error})") from None
    if not out or out[0] != 1:
        raise ShapeError(f"{m!r} would change the batch dimension; explain describes one sample, so its dims "
                         "must leave dim 0 (the batch) alone.")
    return out[1:]


def _batch_dim(m: nn.Module, dim: int, rank: int) -> int:
    """``dim`` of a batched tensor of ``rank`` dims as an index into input_shape (without the batch)."""
    if not -rank <= dim < rank:
        raise ShapeError(f"{m!r}: dim {dim} is out of range for a batch of input_shape with {rank - 1} numbers "
                         f"(dims count the batch as dim 0: {-rank} to {rank - 1}).")
    index = dim % rank
    if index == 0:
        raise ShapeError(f"{m!r} acts on dim 0, the batch; explain describes one sample.")
    return index - 1


@register_explainer(nn.Flatten)
def _flatten(m: nn.Flatten, shape: tuple[int, ...]) -> LayerReport:
    rank = len(shape) + 1
    start, end = _batch_dim(m, m.start_dim, rank), _batch_dim(m, m.end_dim, rank)
    if start > end:
        raise ShapeError(f"{m!r}: start_dim must not come after end_dim for input_shape={shape}.")
    out = _reshaped(m, shape, lambda t: t.flatten(m.start_dim, m.end_dim), "dims out of range")
    merged = shape[start:end + 1]
    steps = [f"flattens {shape} → {out}: {dot(merged)} = {math.prod(merged):,}"]
    if start == 0 and len(merged) > 1:
        steps.append(
            "order: channels first (C, then H, then W, as torch stores them); Keras flattens "
            "channels-last tensors in (H, W, C) order, so the Dense layer after a Keras Flatten "
            "sees the same numbers in another order"
        )
    return LayerReport(out, steps, None)


@register_explainer(nn.Unflatten)
def _unflatten(m: nn.Unflatten, shape: tuple[int, ...]) -> LayerReport:
    if not isinstance(m.dim, int):
        raise UnsupportedError(f"{m!r} names a dimension ({m.dim!r}); explain handles integer dims only.")
    index = _batch_dim(m, m.dim, len(shape) + 1)
    sizes = tuple(m.unflattened_size)
    out = _reshaped(m, shape, lambda t: t.unflatten(m.dim, sizes),
                    f"the sizes {sizes} must multiply to input_shape[{index}]={shape[index]} (one of them may "
                    "be -1)")
    split = out[index:index + len(sizes)]
    return LayerReport(out, [f"splits dim {m.dim} into {tuple(sizes)}: {shape[index]:,} = {dot(split)}"], None)


@register_explainer(nn.PixelShuffle, nn.PixelUnshuffle)
def _pixel_shuffle(m: nn.Module, shape: tuple[int, ...]) -> LayerReport:
    expect_rank(m, shape, [3], "(C, H, W)")
    c, h, w = shape
    if isinstance(m, nn.PixelShuffle):
        r = m.upscale_factor
        if c % (r * r):
            raise ShapeError(f"PixelShuffle(upscale_factor={r}) needs input_shape[0] (channels) divisible by "
                             f"{r}² = {r * r}. Received input_shape={shape}.")
        out = (c // (r * r), h * r, w * r)
        step = (f"moves channels into space: each group of {r}·{r} = {r * r} channels becomes one {r}×{r} "
                f"block: ({c}, {h}, {w}) → ({c}/{r * r}, {h}·{r}, {w}·{r}) = {out}; no weights")
    else:
        r = m.downscale_factor
        if h % r or w % r:
            raise ShapeError(f"PixelUnshuffle(downscale_factor={r}) needs the height and width divisible by {r}. "
                             f"Received input_shape={shape}.")
        out = (c * r * r, h // r, w // r)
        step = (f"moves space into channels: each {r}×{r} block becomes {r * r} channels: ({c}, {h}, {w}) → "
                f"({c}·{r * r}, {h}/{r}, {w}/{r}) = {out}; no weights")
    return LayerReport(out, [step], None)


@register_explainer(nn.MultiheadAttention)
def _attention(m: nn.MultiheadAttention, shape: tuple[int, ...]) -> LayerReport:
    expect_rank(m, shape, [2], "(L, E) — sequence length, embedding")
    e, heads = m.embed_dim, m.num_heads
    if not m._qkv_same_embed_dim:
        raise UnsupportedError(
            f"MultiheadAttention with kdim={m.kdim}, vdim={m.vdim} (not embed_dim={e}) takes keys and values "
            "of another size than the queries; explain feeds one input (self-attention), so it cannot be "
            "explained here."
        )
    if shape[1] != e:
        raise ShapeError(f"MultiheadAttention has embed_dim={e}, so input_shape[1] must be {e}. "
                         f"Received input_shape={shape}.")
    length, d = shape[0], e // heads
    bias = 3 * e + e if m.in_proj_bias is not None else 0
    extra = 2 * e if m.bias_k is not None else 0
    params = 3 * e * e + e * e + bias + extra
    steps = [
        f"self-attention (query = key = value = the input; L={length} positions of {e} features); "
        f"{'batch_first=True: a batch is (N, L, E)' if m.batch_first else 'a batch is (L, N, E) (batch_first=False)'}",
        f"Q, K, V = x·W_qᵀ, x·W_kᵀ, x·W_vᵀ, stacked in in_proj_weight (3·{e}, {e}); {heads} heads of "
        f"{e}/{heads} = {d} features each",
        f"each head: softmax(Q·Kᵀ/√{d})·V, with a ({length}, {length}) map of weights over positions; the heads are "
        f"concatenated and mixed by out_proj ({e}, {e})",
        f"returns (output ({length}, {e}), attention weights ({length}, {length}) averaged over heads, "
        f"or ({heads}, {length}, {length}) with average_attn_weights=False; None with need_weights=False)",
        f"params: 3·{e}·{e} + {e}·{e}" + (f" + {bias} biases" if bias else "")
        + (f" + {extra} (bias_k, bias_v)" if extra else "") + f" = {params:,}",
    ]
    return LayerReport((length, e), steps, None)


_PADS = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
         nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
         nn.ReplicationPad2d, nn.ReplicationPad3d)


@register_explainer(*_PADS)
def _pad(m: nn.Module, shape: tuple[int, ...]) -> LayerReport:
    pads = m.padding  # (left, right, top, bottom, front, back): last dimension first
    k = len(pads) // 2
    if len(shape) < k + 1:
        raise ShapeError(f"{type(m).__name__} pads {k} dimensions, so input_shape needs at least {k + 1} "
                         f"numbers (C, ...). Received input_shape={shape}.")
    out = list(shape)
    for i in range(k):
        out[len(shape) - 1 - i] += pads[2 * i] + pads[2 * i + 1]
    return LayerReport(tuple(out), [f"adds {pads} (last dimension first, as F.pad)"], "pointwise")


@register_explainer(nn.Upsample)
def _upsample(m: nn.Upsample, shape: tuple[int, ...]) -> LayerReport:
    n = len(shape) - 1
    if m.size is not None:
        spatial = m.size if isinstance(m.size, tuple) else (m.size,) * n
    else:
        factors = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,) * n
        spatial = tuple(math.floor(s * f) for s, f in zip(shape[1:], factors))
    return LayerReport((shape[0], *spatial), [f"{m.mode} upsampling {x(shape[1:])} → {x(spatial)}"], None)


# --- recurrent ---------------------------------------------------------------------------------------


@register_explainer(nn.LSTM)
def _lstm(m: nn.LSTM, shape: tuple[int, ...]) -> LayerReport:
    expect_rank(m, shape, [2], "(L, H_in) — sequence length, features")
    if shape[1] != m.input_size:
        raise ShapeError(f"LSTM has input_size={m.input_size}, so input_shape[1] must be {m.input_size}. "
                         f"Received input_shape={shape}.")
    h, d = m.hidden_size, 2 if m.bidirectional else 1
    out_h = m.proj_size or h
    steps = [
        f"{m.num_layers} layer(s) × {d} direction(s); each step computes 4 gates (input i, forget f, "
        f"cell candidate g, output o — Keras calls g 'c', same order) of {h} units",
        f"torch: weight_ih (4·{h}, in) and weight_hh (4·{h}, {out_h}) with the gates stacked in rows, "
        "and two biases bias_ih + bias_hh",
        f"Keras: kernel (in, 4·{h}), recurrent_kernel ({h}, 4·{h}) (the transposes) and one bias "
        "(= bias_ih + bias_hh)",
    ]
    first = 4 * h * (m.input_size + out_h + (2 if m.bias else 0))
    steps.append(f"params, first layer and direction: 4·{h}·({m.input_size} + {out_h}"
                 + (" + 2" if m.bias else "") + f") = {first:,}")
    return LayerReport((shape[0], d * out_h), steps, None)
