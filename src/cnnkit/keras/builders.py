"""The layer builders: one function per Keras layer family, registered by ``class_name``.

Each builder reads a :class:`~cnnkit.keras.layer_config._Layer` (config, input shapes), checks it, and
returns the module (built on the meta device by the caller), the Keras output shape and the names of the
stored weight arrays in storage order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnkit.errors import UnsupportedError
from cnnkit.keras import modules as M
from cnnkit.keras.layer_config import (
    _MAX_INT,
    Shape,
    _bias_names,
    _builds,
    _Built,
    _Layer,
    _spatial_out,
)
from cnnkit.keras.model import format_shape


@_builds("Conv1D", "Conv2D", "Convolution1D", "Convolution2D")
def _conv(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel = c.ints("kernel_size", n)
    stride = c.ints("strides", n, 1)
    dilation = c.ints("dilation_rate", n, 1)
    groups = c.int("groups", 1)
    padding = c.choice("padding", ("valid", "same", "causal") if n == 1 else ("valid", "same"), "valid")
    if cin % groups or filters % groups:
        raise c.error(f"input channels and filters must be divisible by groups. Received input channels="
                      f"{cin}, filters={filters}, groups={groups}.")
    act = c.activation()
    cls = M.KerasConv1d if n == 1 else M.KerasConv2d
    module = cls(cin, filters, kernel, stride, padding, dilation, groups, c.flag("use_bias", True), activation=act)
    c.notes.append(f"kernel {format_shape((*kernel, cin // groups, filters))} (*k, in/groups, out) → weight "
                   f"{format_shape((filters, cin // groups, *kernel))} (out, in/groups, *k)")
    if padding == "same" and any(s > 1 for s in stride):
        c.notes.append(f"padding 'same' with strides {stride}: TensorFlow's zeros (odd one at the end) added "
                       "with F.pad at run time (cnnkit.shapes.tf_same_padding)")
    elif padding == "causal":
        c.notes.append(f"padding 'causal': {dilation[0] * (kernel[0] - 1)} zeros before the sequence")
    out = _spatial_out(c, shape[:-1], kernel, stride, padding, dilation)
    return _Built(module, (*out, filters), _bias_names(c))


@_builds("Dense")
def _dense(c: _Layer) -> _Built:
    shape = c.one_input()
    if not shape:
        raise c.error("expects an input of rank 2 or more (batch included). Received shape (None,).")
    fin = c.known(shape[-1], "number of input features (last axis)")
    units = c.int("units")
    module = M.KerasDense(fin, units, c.flag("use_bias", True), activation=c.activation())
    c.notes.append(f"kernel ({fin}, {units}) (in, out) → weight ({units}, {fin}) (out, in): transposed")
    if len(shape) >= 2:
        c.notes.append("applied on the channel axis (dim 1) of the channels-first input, as Keras on the last axis")
    return _Built(module, (*shape[:-1], units), _bias_names(c))


@_builds("Embedding")
def _embedding(c: _Layer) -> _Built:
    shape = c.one_input()
    if c.get("mask_zero", False):
        raise c.error("mask_zero=True (masks) is not supported; save the model with mask_zero=False.",
                      UnsupportedError)
    num, dim = c.int("input_dim"), c.int("output_dim")
    module = M.KerasEmbedding(num, dim)
    if len(shape) >= 1:
        c.notes.append("output (N, T, D) → (N, D, T): the embedding axis moved to dim 1 (channels first)")
    return _Built(module, (*shape, dim), ("embeddings",))


@_builds("BatchNormalization")
def _batch_norm(c: _Layer) -> _Built:
    shape = c.one_input([2, 3, 4, 5])
    rank = len(shape) + 1
    axis = c.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, rank - 1):
        raise c.error(f"axis must be the channel axis (-1 or {rank - 1}) of a rank-{rank} input. "
                      f"Received axis={axis!r}.", UnsupportedError)
    for key in ("renorm",):
        c.refuse_if(key, True)
    channels = c.known(shape[-1], "number of channels")
    momentum, eps = c.number("momentum", 0.99), c.number("epsilon", 1e-3)
    if not 0 <= momentum <= 1 or eps <= 0:
        raise c.error(f"momentum must be in [0, 1] and epsilon > 0. Received momentum={momentum}, epsilon={eps}.")
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    # round() keeps 1 − 0.9 from showing as 0.09999999999999998 (a difference of 2e-17).
    module = cls(channels, eps=eps, momentum=round(1.0 - momentum, 12))
    c.notes.append(f"momentum {momentum:g} (Keras: weight of the old mean) → torch momentum "
                   f"{1 - momentum:g} (weight of the new batch); epsilon {eps:g} kept; axis -1 → dim 1")
    names, defaults = [], {}
    if c.flag("scale", True):
        names.append("gamma")
    else:
        defaults["gamma"] = torch.ones
        c.notes.append("scale=False: weight (gamma) fixed at ones")
    if c.flag("center", True):
        names.append("beta")
    else:
        defaults["beta"] = torch.zeros
        c.notes.append("center=False: bias (beta) fixed at zeros")
    return _Built(module, shape, (*names, "moving_mean", "moving_variance"), defaults)


_POOLS = {f"{kind}{alias}{n}D": (mode, n) for n in (1, 2)
          for kind, mode in (("Max", "max"), ("Average", "average"), ("Avg", "average"))
          for alias in ("Pooling", "Pool") if not (kind == "Avg" and alias == "Pooling")}


@_builds(*_POOLS)
def _pool(c: _Layer) -> _Built:
    mode, n = _POOLS[c.cls]
    shape = c.one_input([n + 2])
    c.channels_last()
    kernel = c.ints("pool_size", n, 2)
    stride = c.ints("strides", n, kernel)
    padding = c.choice("padding", ("valid", "same"), "valid")
    if padding == "valid":
        module = {("max", 1): nn.MaxPool1d, ("max", 2): nn.MaxPool2d, ("average", 1): nn.AvgPool1d,
                  ("average", 2): nn.AvgPool2d}[(mode, n)](kernel, stride)
    else:
        module = M.KerasPool(mode, n, kernel, stride)
        c.notes.append("padding 'same': TensorFlow's rule — " + (
            "pads with -inf" if mode == "max" else "padding not counted in the averages"))
    out = _spatial_out(c, shape[:-1], kernel, stride, padding, (1,) * n)
    return _Built(module, (*out, shape[-1]))


_GLOBAL = {f"Global{kind}{alias}{n}D": (mode, n) for n in (1, 2)
           for kind, mode in (("Max", "max"), ("Average", "average"), ("Avg", "average"))
           for alias in ("Pooling", "Pool") if not (kind == "Avg" and alias == "Pooling")}


@_builds(*_GLOBAL)
def _global_pool(c: _Layer) -> _Built:
    mode, n = _GLOBAL[c.cls]
    shape = c.one_input([n + 2])
    c.channels_last()
    keepdims = c.flag("keepdims", False)
    out = (*(1,) * n, shape[-1]) if keepdims else (shape[-1],)
    return _Built(M.GlobalPool(mode, n, keepdims), out)


@_builds("Flatten")
def _flatten(c: _Layer) -> _Built:
    shape = c.one_input()
    c.channels_last()
    if len(shape) >= 2:
        c.notes.append("channels-last order kept: (N, C, *S) permuted to (N, *S, C) before flattening")
    size = None if any(s is None for s in shape) else math.prod(shape)
    return _Built(M.ChannelsLastFlatten(), (size,))


@_builds("Reshape")
def _reshape(c: _Layer) -> _Built:
    shape = c.one_input()
    target = c.get("target_shape")
    if not isinstance(target, list) or not target or not all(
            isinstance(t, int) and not isinstance(t, bool) and (t >= 1 or t == -1) for t in target) or (
            target.count(-1) > 1):
        raise c.error(f"target_shape must be a list of positive integers with at most one -1. "
                      f"Received target_shape={target!r}.")
    total = None if any(s is None for s in shape) else math.prod(shape)
    known = math.prod(t for t in target if t != -1)
    if -1 in target:
        if total is None or total % known:
            raise c.error(f"cannot infer the -1 of target_shape={target} from input shape "
                          f"{format_shape((None, *shape))}.")
        target = [total // known if t == -1 else t for t in target]
    elif total is not None and total != known:
        raise c.error(f"target_shape={target} holds {known} values; the input {format_shape((None, *shape))} "
                      f"holds {total}.")
    if len(shape) >= 2 or len(target) >= 2:
        c.notes.append("reshaped in Keras's channels-last order (permuted before and after)")
    return _Built(M.ChannelsLastReshape(target), tuple(target))


def _torch_dim(c: _Layer, axis, rank: int) -> int:
    if not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < rank or axis % rank == 0:
        raise c.error(f"axis must be an axis of the rank-{rank} input other than the batch axis 0. "
                      f"Received axis={axis!r}.")
    a = axis % rank
    return a if rank < 3 else (1 if a == rank - 1 else a + 1)


@_builds("Concatenate")
def _concatenate(c: _Layer) -> _Built:
    if len(c.shapes) < 2:
        raise c.error(f"needs at least 2 inputs. Received {len(c.shapes)}.")
    ranks = {len(s) for s in c.shapes}
    if len(ranks) != 1:
        raise c.error(f"inputs must have the same rank. Received shapes {[format_shape(s) for s in c.shapes]}.")
    rank = ranks.pop() + 1
    axis = c.get("axis", -1)
    dim = _torch_dim(c, axis, rank)
    a = axis % rank - 1
    out = list(c.shapes[0])
    for i in range(rank - 1):
        sizes = [s[i] for s in c.shapes]
        if i == a:
            out[i] = None if None in sizes else sum(sizes)
        elif len({s for s in sizes if s is not None}) > 1:
            raise c.error(f"inputs must agree on every axis but {axis}. Received shapes "
                          f"{[format_shape((None, *s)) for s in c.shapes]}.")
    if rank >= 3:
        c.notes.append(f"Keras axis {axis} → torch dim {dim} (channels first)")
    return _Built(M.Concatenate(dim), tuple(out))


_MERGES = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average",
           "Maximum": "maximum", "Minimum": "minimum"}


@_builds(*_MERGES)
def _merge(c: _Layer) -> _Built:
    op = _MERGES[c.cls]
    if len(c.shapes) < 2 or (op == "subtract" and len(c.shapes) != 2):
        raise c.error(f"needs {'exactly' if op == 'subtract' else 'at least'} 2 inputs. Received {len(c.shapes)}.")
    first = c.shapes[0]
    out = list(first)
    for s in c.shapes[1:]:
        # Keras 3 broadcasts axes of size 1 (the squeeze-and-excite blocks: (H, W, C) * (1, 1, C)).
        if len(s) != len(first) or any(a is not None and b is not None and a != b and 1 not in (a, b)
                                       for a, b in zip(s, out)):
            raise c.error(f"inputs must have the same shape (or 1 where they differ). Received "
                          f"{[format_shape((None, *x)) for x in c.shapes]}.")
        out = [b if a in (None, 1) and b is not None else a for a, b in zip(out, s)]
    if any(s != tuple(out) for s in c.shapes):
        c.notes.append("inputs broadcast over axes of size 1")
    return _Built(M.Merge(op), tuple(out))


@_builds("CustomScaleLayer")
def _custom_scale(c: _Layer) -> _Built:
    if len(c.shapes) != 2 or c.shapes[0] != c.shapes[1]:
        raise c.error(f"takes 2 inputs of one shape. Received {[format_shape(s) for s in c.shapes]}.")
    scale = c.number("scale", 1.0)
    c.notes.append(f"keras.applications.inception_resnet_v2.CustomScaleLayer: x + {scale:g} · y (a Keras-internal "
                   "class whose computation is known; no code from the file is run)")
    return _Built(M.ScaledSum(scale), c.shapes[0])


@_builds("Dropout", "SpatialDropout1D", "SpatialDropout2D")
def _dropout(c: _Layer) -> _Built:
    shape = c.one_input()
    rate = c.number("rate", 0.5)
    if not 0 <= rate < 1:
        raise c.error(f"rate must be in [0, 1). Received rate={rate}.")
    if c.get("noise_shape") is not None:
        c.notes.append("noise_shape only shapes the training-time mask: no effect at inference")
    cls = {"Dropout": nn.Dropout, "SpatialDropout1D": nn.Dropout1d, "SpatialDropout2D": nn.Dropout2d}[c.cls]
    return _Built(cls(rate), shape)


@_builds("Activation")
def _activation_layer(c: _Layer) -> _Built:
    shape = c.one_input()
    name = c.activation("activation", None)
    if name in ("softmax", "log_softmax") and len(shape) >= 2:
        c.notes.append("softmax over the channel axis (Keras's last axis → dim 1)")
    return _Built(M.KerasActivation(name), shape)


@_builds("ReLU")
def _relu(c: _Layer) -> _Built:
    shape = c.one_input()
    max_value = c.get("max_value")
    if max_value is not None:
        max_value = c.number("max_value", 0.0)
    module = M.KerasReLU(max_value, c.number("negative_slope", 0.0), c.number("threshold", 0.0))
    return _Built(module, shape)


@_builds("LeakyReLU")
def _leaky_relu(c: _Layer) -> _Built:
    shape = c.one_input()
    slope = c.number("negative_slope", c.number("alpha", 0.3))
    return _Built(nn.LeakyReLU(slope), shape)


@_builds("Softmax")
def _softmax(c: _Layer) -> _Built:
    shape = c.one_input()
    axis = c.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    dim = _torch_dim(c, axis, len(shape) + 1)
    if len(shape) >= 2:
        c.notes.append(f"Keras axis {axis} → torch dim {dim}")
    return _Built(nn.Softmax(dim), shape)


def _pair(c: _Layer, value) -> tuple[int, int]:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_INT for v in value)):
        return value[0], value[1]
    raise c.error(f"padding must be an integer or pairs of non-negative integers. Received padding="
                  f"{c.get('padding')!r}.")


@_builds("ZeroPadding1D", "ZeroPadding2D")
def _zero_padding(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    value = c.get("padding", 1)
    if n == 2 and isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        pads = [_pair(c, v) for v in value]
    elif n == 2:
        pads = [(p, p) for p in c.ints("padding", 2, 1, minimum=0)]
    else:
        pads = [_pair(c, value) if isinstance(value, list) else (c.int("padding", 1, minimum=0),) * 2]
    out = tuple(None if s is None else s + lo + hi for s, (lo, hi) in zip(shape[:-1], pads))
    flat = tuple(p for pair in reversed(pads) for p in pair)
    module = nn.ZeroPad1d(flat) if n == 1 else nn.ZeroPad2d(flat)
    return _Built(module, (*out, shape[-1]))


def _rnn_checks(c: _Layer) -> None:
    for key in ("return_state", "stateful", "time_major"):
        c.refuse_if(key, True)
    for key in ("dropout", "recurrent_dropout"):
        if c.get(key, 0):
            c.notes.append(f"{key}={c.get(key)} not reproduced (it only acts in training)")


@_builds("LSTM")
def _lstm(c: _Layer) -> _Built:
    shape = c.one_input([3])
    _rnn_checks(c)
    if c.activation() != "tanh" or c.activation("recurrent_activation", "sigmoid") != "sigmoid":
        raise c.error("only activation='tanh' with recurrent_activation='sigmoid' (PyTorch's LSTM) is supported. "
                      f"Received activation={c.get('activation')!r}, recurrent_activation="
                      f"{c.get('recurrent_activation')!r}.", UnsupportedError)
    fin = c.known(shape[-1], "number of input features")
    units = c.int("units")
    seq = c.flag("return_sequences", False)
    module = M.KerasLSTM(fin, units, c.flag("use_bias", True), return_sequences=seq,
                         go_backwards=c.flag("go_backwards", False))
    c.notes.append("kernel (in, 4H) → weight_ih (4H, in), recurrent_kernel (H, 4H) → weight_hh (4H, H); "
                   "gates i, f, c, o = torch's i, f, g, o")
    if c.flag("use_bias", True):
        c.notes.append("Keras's single bias → bias_ih; bias_hh zeros")
    c.notes.append("input (N, F, T) is transposed to batch-first (N, T, F) inside")
    out = (shape[0], units) if seq else (units,)
    names = ("kernel", "recurrent_kernel", "bias") if c.flag("use_bias", True) else ("kernel", "recurrent_kernel")
    return _Built(module, out, names)


@_builds("ConvLSTM2D")
def _conv_lstm(c: _Layer) -> _Built:
    shape = c.one_input([5])
    _rnn_checks(c)
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel, stride = c.ints("kernel_size", 2), c.ints("strides", 2, 1)
    dilation = c.ints("dilation_rate", 2, 1)
    padding = c.choice("padding", ("valid", "same"), "valid")
    act = c.activation("activation", "tanh")
    rec = c.activation("recurrent_activation", "hard_sigmoid" if c.keras_major < 3 else "sigmoid")
    if act not in ("tanh", "relu") or rec not in ("sigmoid", "hard_sigmoid", "hard_sigmoid_keras2"):
        raise c.error(f"activation must be 'tanh' or 'relu' and recurrent_activation 'sigmoid' or 'hard_sigmoid'. "
                      f"Received activation={act!r}, recurrent_activation={rec!r}.", UnsupportedError)
    seq = c.flag("return_sequences", False)
    use_bias = c.flag("use_bias", True)
    module = M.KerasConvLSTM2d(cin, filters, kernel, stride, padding, dilation, use_bias,
                               recurrent_activation=rec, activation=act, return_sequences=seq)
    c.notes.append("kernel (*k, in, 4F) → weight_ih (4F, in, *k); recurrent_kernel → weight_hh; "
                   "input (N, C, T, H, W) → (N, T, C, H, W) for cnnkit.nn.ConvLSTM2d")
    out = _spatial_out(c, shape[1:-1], kernel, stride, padding, dilation)
    out_shape = (shape[0], *out, filters) if seq else (*out, filters)
    names = ("kernel", "recurrent_kernel", "bias") if use_bias else ("kernel", "recurrent_kernel")
    return _Built(module, out_shape, names)


@_builds("LocallyConnected1D", "LocallyConnected2D")
def _locally_connected(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    if c.get("implementation", 1) != 1:
        raise c.error(f"only implementation=1 is supported. Received implementation={c.get('implementation')!r}.",
                      UnsupportedError)
    c.choice("padding", ("valid",), "valid")
    spatial = tuple(c.known(s, "input size (locally connected weights are tied to positions)") for s in shape[:-1])
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel, stride = c.ints("kernel_size", n), c.ints("strides", n, 1)
    out = _spatial_out(c, spatial, kernel, stride, "valid", (1,) * n)
    cls = M.KerasLocallyConnected1d if n == 1 else M.KerasLocallyConnected2d
    module = cls(cin, filters, kernel, spatial, stride, bias=c.flag("use_bias", True), activation=c.activation())
    c.notes.append("kernel (L, prod(k)·in, out) kept as is (cnnkit.nn layout = Keras's); bias (*S', out) → (out, *S')")
    return _Built(module, (*out, filters), _bias_names(c))



# --- the layers keras.applications families use ----------------------------------------------------


def _conv_geometry(c: _Layer, n: int):
    kernel = c.ints("kernel_size", n)
    stride = c.ints("strides", n, 1)
    dilation = c.ints("dilation_rate", n, 1)
    padding = c.choice("padding", ("valid", "same", "causal") if n == 1 else ("valid", "same"), "valid")
    if any(s > 1 for s in stride) and any(d > 1 for d in dilation):
        raise c.error(f"strides > 1 together with dilation_rate > 1 is not supported by Keras. Received strides="
                      f"{stride}, dilation_rate={dilation}.")
    return kernel, stride, dilation, padding


@_builds("DepthwiseConv1D", "DepthwiseConv2D")
def _depthwise(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    dm = c.int("depth_multiplier", 1)
    kernel, stride, dilation, padding = _conv_geometry(c, n)
    module = M.KerasDepthwiseConv(cin, dm, kernel, stride, padding, dilation, c.flag("use_bias", True),
                                  activation=c.activation())
    c.notes.append(f"depthwise_kernel {format_shape((*kernel, cin, dm))} (*k, in, multiplier) → weight "
                   f"{format_shape((cin * dm, 1, *kernel))} (in·multiplier, 1, *k), groups={cin}")
    out = _spatial_out(c, shape[:-1], kernel, stride, padding, dilation)
    names = ("depthwise_kernel", "bias") if c.flag("use_bias", True) else ("depthwise_kernel",)
    return _Built(module, (*out, cin * dm), names)


@_builds("SeparableConv1D", "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D")
def _separable(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    dm, filters = c.int("depth_multiplier", 1), c.int("filters")
    kernel, stride, dilation, padding = _conv_geometry(c, n)
    module = M.KerasSeparableConv(cin, filters, dm, kernel, stride, padding, dilation, c.flag("use_bias", True),
                                  activation=c.activation())
    c.notes.append(f"depthwise_kernel (*k, in, multiplier) → depthwise_weight {format_shape((cin * dm, 1, *kernel))}; "
                   f"pointwise_kernel (*1, in·multiplier, out) → pointwise_weight "
                   f"{format_shape((filters, cin * dm, *(1,) * n))}")
    out = _spatial_out(c, shape[:-1], kernel, stride, padding, dilation)
    names = ("depthwise_kernel", "pointwise_kernel") + (("bias",) if c.flag("use_bias", True) else ())
    return _Built(module, (*out, filters), names)


@_builds("Conv1DTranspose", "Conv2DTranspose", "Convolution1DTranspose", "Convolution2DTranspose")
def _conv_transpose(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    cin = c.known(shape[-1], "number of input channels")
    filters = c.int("filters")
    kernel, stride = c.ints("kernel_size", n), c.ints("strides", n, 1)
    dilation = c.ints("dilation_rate", n, 1)
    padding = c.choice("padding", ("valid", "same"), "valid")
    output_padding = None if c.get("output_padding") is None else c.ints("output_padding", n, minimum=0)
    if output_padding is not None and any(p >= s for p, s in zip(output_padding, stride)):
        raise c.error(f"output_padding must be smaller than strides. Received output_padding={output_padding}, "
                      f"strides={stride}.")
    if c.get("groups", 1) != 1:
        raise c.error(f"groups={c.get('groups')!r} is not supported.", UnsupportedError)
    module = M.KerasConvTranspose(cin, filters, kernel, stride, padding, output_padding, dilation,
                                  c.flag("use_bias", True), activation=c.activation())
    c.notes.append(f"kernel {format_shape((*kernel, filters, cin))} (*k, out, in) → weight "
                   f"{format_shape((cin, filters, *kernel))} (in, out, *k); output cropped as TensorFlow does")
    out = tuple(None if s is None else module.output_size(s, i) for i, s in enumerate(shape[:-1]))
    return _Built(module, (*out, filters), _bias_names(c))


def _number_or_list(c: _Layer, key: str, default: float, channels: int | None):
    value = c.get(key, default)
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        if channels is not None and len(value) not in (1, channels):
            raise c.error(f"{key} must hold 1 or {channels} values (one per channel). Received {len(value)}.")
        if not all(math.isfinite(v) for v in value):
            raise c.error(f"{key} must be finite. Received {key}={value!r}.")
        return [float(v) for v in value]
    return c.number(key, default)


@_builds("Rescaling")
def _rescaling(c: _Layer) -> _Built:
    shape = c.one_input()
    channels = shape[-1] if shape else None
    scale, offset = _number_or_list(c, "scale", 1.0, channels), _number_or_list(c, "offset", 0.0, channels)
    return _Built(M.Rescaling(scale, offset), shape)


def _channel_axis(c: _Layer, rank: int) -> None:
    axis = c.get("axis", -1)
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    if axis not in (-1, rank - 1):
        raise c.error(f"only the channel axis (-1) is supported. Received axis={c.get('axis')!r}.",
                      UnsupportedError)


@_builds("Normalization")
def _normalization(c: _Layer) -> _Built:
    shape = c.one_input()
    _channel_axis(c, len(shape) + 1)
    channels = c.known(shape[-1], "number of channels")
    module = M.KerasNormalization(channels, c.flag("invert", False))
    mean, variance = c.get("mean"), c.get("variance")
    if (mean is None) != (variance is None):
        raise c.error("mean and variance must be given together.")
    if mean is None:
        c.notes.append("mean, variance (and Keras's sample count) read from the file")
        return _Built(module, shape, ("mean", "variance", "count"))
    mean = _number_or_list(c, "mean", 0.0, channels)
    variance = _number_or_list(c, "variance", 1.0, channels)
    values = [mean, variance]
    if any(v < 0 for v in (variance if isinstance(variance, list) else [variance])):
        raise c.error(f"variance must not be negative. Received variance={variance!r}.")
    c.notes.append("mean and variance from the config")

    def fill(i):
        return lambda s: torch.as_tensor(values[i], dtype=torch.float32).expand(s).clone()

    return _Built(module, shape, (), {"mean": fill(0), "variance": fill(1), "count": lambda s: torch.zeros(s)})


@_builds("LayerScale")
def _layer_scale(c: _Layer) -> _Built:
    shape = c.one_input()
    channels = c.known(shape[-1], "number of channels")
    dim = c.int("projection_dim", channels)
    if dim != channels:
        raise c.error(f"projection_dim must equal the input channels. Received projection_dim={dim}, "
                      f"channels={channels}.")
    c.notes.append("keras.applications.convnext.LayerScale: input · gamma per channel (a Keras-internal class "
                   "whose computation is known; no code from the file is run)")
    return _Built(M.ChannelScale(channels), shape, ("gamma",))


@_builds("LayerNormalization", "GroupNormalization")
def _norm(c: _Layer) -> _Built:
    shape = c.one_input()
    _channel_axis(c, len(shape) + 1)
    c.refuse_if("rms_scaling", True)
    channels = c.known(shape[-1], "number of channels")
    eps = c.number("epsilon", 1e-3)
    scale, center = c.flag("scale", True), c.flag("center", True)
    if c.cls == "GroupNormalization":
        groups = c.get("groups", 32)
        groups = channels if groups == -1 else c.int("groups", 32)
        if channels % groups:
            raise c.error(f"the channels must be divisible by groups. Received channels={channels}, groups={groups}.")
        module = M.ChannelsLastNorm("group", channels, eps, groups, scale, center)
    else:
        module = M.ChannelsLastNorm("layer", channels, eps, 1, scale, center)
    names = (("gamma",) if scale else ()) + (("beta",) if center else ())
    return _Built(module, shape, names)


@_builds("PReLU")
def _prelu(c: _Layer) -> _Built:
    shape = c.one_input()
    shared = c.get("shared_axes") or []
    if isinstance(shared, int):
        shared = [shared]
    if not isinstance(shared, list) or not all(isinstance(a, int) and 1 <= a <= len(shape) for a in shared):
        raise c.error(f"shared_axes must list axes 1..{len(shape)}. Received shared_axes={c.get('shared_axes')!r}.")
    alpha = tuple(1 if i + 1 in shared else c.known(s, "input size") for i, s in enumerate(shape))
    if len(alpha) >= 2:
        c.notes.append(f"alpha {format_shape(alpha)} (channels last) applied channels first")
    return _Built(M.KerasPReLU(alpha), shape, ("alpha",))


@_builds("ELU")
def _elu(c: _Layer) -> _Built:
    return _Built(M.KerasELU(c.number("alpha", 1.0)), c.one_input())


@_builds("GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "SpatialDropout3D")
def _inference_identity(c: _Layer) -> _Built:
    c.notes.append("acts only in training: the identity at inference")
    return _Built(M.Identity(c.cls), c.one_input())


@_builds("UpSampling1D", "UpSampling2D")
def _upsampling(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    size = c.ints("size", n, 2)
    interpolation = c.choice("interpolation", ("nearest", "bilinear"), "nearest") if n == 2 else "nearest"
    if interpolation == "bilinear":
        c.notes.append("bilinear with half-pixel centres (F.interpolate align_corners=False), as TensorFlow")
    out = tuple(None if s is None else s * k for s, k in zip(shape[:-1], size))
    return _Built(M.UpSample(size, interpolation), (*out, shape[-1]))


@_builds("Cropping1D", "Cropping2D")
def _cropping(c: _Layer) -> _Built:
    n = 1 if "1D" in c.cls else 2
    shape = c.one_input([n + 2])
    c.channels_last()
    value = c.get("cropping", 1)
    if n == 2 and isinstance(value, list) and len(value) == 2 and all(isinstance(v, list) for v in value):
        crops = [_pair(c, v) for v in value]
    elif n == 2:
        crops = [(p, p) for p in c.ints("cropping", 2, 1, minimum=0)]
    else:
        crops = [_pair(c, value) if isinstance(value, list) else (c.int("cropping", 1, minimum=0),) * 2]
    out = []
    for s, (lo, hi) in zip(shape[:-1], crops):
        if s is not None and lo + hi >= s:
            raise c.error(f"cropping {lo + hi} rows leaves nothing of an axis of size {s}.")
        out.append(None if s is None else s - lo - hi)
    return _Built(M.Crop(crops), (*out, shape[-1]))


@_builds("Permute")
def _permute(c: _Layer) -> _Built:
    shape = c.one_input()
    dims = c.get("dims")
    if not isinstance(dims, list) or sorted(dims) != list(range(1, len(shape) + 1)):
        raise c.error(f"dims must be a permutation of 1..{len(shape)}. Received dims={dims!r}.")
    c.notes.append("permuted in Keras's channels-last layout")
    return _Built(M.KerasPermute(dims), tuple(shape[d - 1] for d in dims))


_OPS = {"ops.Add": "add", "ops.Subtract": "subtract", "ops.Multiply": "multiply", "ops.Divide": "divide",
        "ops.TrueDivide": "divide"}


@_builds(*_OPS)
def _op(c: _Layer) -> _Built:
    op = _OPS[c.cls]
    if "constant" not in c.config:
        if op == "divide":
            raise c.error("dividing two tensors is not supported.", UnsupportedError)
        return _merge_shapes(c, M.Merge(op))
    shape = c.one_input()
    value = c.number("constant", 0.0)
    first = c.flag("tensor_first", True)
    c.notes.append(f"keras.ops call: {'x' if first else value:g} {op} {value if first else 'x'}"
                   if not first else f"keras.ops call: x {op} {value:g}")
    return _Built(M.ScalarOp(op, value, first), shape)


def _merge_shapes(c: _Layer, module) -> _Built:
    if len(c.shapes) != 2:
        raise c.error(f"needs 2 inputs. Received {len(c.shapes)}.")
    a, b = c.shapes
    if len(a) != len(b) or any(x is not None and y is not None and x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise c.error(f"inputs must have broadcastable shapes of one rank. Received {format_shape(a)}, "
                      f"{format_shape(b)}.")
    out = tuple(y if x in (None, 1) else x for x, y in zip(a, b))
    return _Built(module, out)


# --- composite layers: nested Sequential, TimeDistributed, Bidirectional, recurrent ----------------------


def _inner(c: _Layer, entry, shapes: list[Shape], where: str) -> tuple[_Layer, _Built]:
    """Build a layer held inside another layer's config (checked like a top-level entry)."""
    from cnnkit.keras.graph import _check_safe
    from cnnkit.keras.layer_config import _BUILDERS

    supported = {k for k in _BUILDERS if k != "Sequential"}
    cls, config = _check_safe(entry, f"Layer {c.name!r} ({c.cls}): {where}", supported)
    if cls == "InputLayer":
        raise c.error(f"{where} must be a layer, not an InputLayer.")
    inner = _Layer(str(config.get("name", where)), cls, config, shapes, c.keras_major)
    built = _BUILDERS[cls](inner)
    c.notes += [f"{inner.name}: {n}" for n in inner.notes]
    return inner, built


def _parts_of(built: _Built, prefix: str, subpath: str) -> list:
    from cnnkit.keras.layer_config import _Part

    return [_Part(prefix + p.prefix, p.module, p.weights, p.defaults, subpath + ("/" + p.subpath if p.subpath
                                                                                    else ""))
            for p in built.all_parts()]


@_builds("Sequential")
def _nested_sequential(c: _Layer) -> _Built:
    from cnnkit.keras.graph import _sequential_graph
    from cnnkit.keras.layer_config import _BUILDERS
    from cnnkit.keras.reader import _snake_case

    shape = c.one_input()
    layers, _, _, _, _ = _sequential_graph(c.config, c.config.get("layers"), f"nested model {c.name!r}",
                                           {k for k in _BUILDERS if k != "Sequential"})
    modules, parts, counts = {}, [], {}
    for name, cls, config in layers[1:]:
        _, built = _inner(c, {"class_name": cls, "config": config}, [shape], f"layer {name!r}")
        snake = _snake_case(cls)
        key = snake if not counts.get(snake) else f"{snake}_{counts[snake]}"
        counts[snake] = counts.get(snake, 0) + 1
        modules["".join(ch if ch.isalnum() else "_" for ch in name)] = built.module
        parts += _parts_of(built, f"{name}/", f"layers/{key}")
        shape = built.output_shape
    c.notes.append(f"a nested Sequential model of {len(modules)} layers, run in order")
    return _Built(M.KerasSequential(modules), shape, parts=tuple(parts))


@_builds("TimeDistributed")
def _time_distributed(c: _Layer) -> _Built:
    from cnnkit.keras.recurrent import TimeDistributed

    shape = c.one_input()
    if len(shape) < 2:
        raise c.error(f"expects an input of rank 3 or more (batch, time, …). Received {format_shape((None, *shape))}.")
    _, built = _inner(c, c.get("layer"), [shape[1:]], "the wrapped layer")
    c.notes.append("the wrapped layer runs on (N·T, …): time (dim 2, channels first) folded into the batch")
    return _Built(TimeDistributed(built.module), (shape[0], *built.output_shape),
                  parts=tuple(_parts_of(built, "", "layer")))


_RECURRENT = ("LSTM", "GRU", "SimpleRNN")


@_builds("Bidirectional")
def _bidirectional(c: _Layer) -> _Built:
    from cnnkit.keras.recurrent import KerasBidirectional

    shape = c.one_input([3])
    mode = c.get("merge_mode", "concat")
    if mode not in ("concat", "sum", "mul", "ave"):
        raise c.error(f"merge_mode={mode!r} is not supported (None returns two tensors). Expected one of "
                      "('concat', 'sum', 'mul', 'ave').", UnsupportedError)
    layer = c.get("layer")
    if not isinstance(layer, dict) or layer.get("class_name") not in _RECURRENT:
        got = layer.get("class_name") if isinstance(layer, dict) else layer
        raise c.error(f"wraps {got!r}; supported: {_RECURRENT}.", UnsupportedError)
    backward = c.get("backward_layer")
    if backward is None:
        backward = {**layer, "config": {**layer.get("config", {}), "go_backwards": not layer["config"].get(
            "go_backwards", False)}}
    _, fwd = _inner(c, layer, [shape], "forward layer")
    _, bwd = _inner(c, backward, [shape], "backward layer")
    if not getattr(bwd.module, "go_backwards", False) or getattr(fwd.module, "go_backwards", False):
        raise c.error("the backward layer must read the sequence backwards and the forward layer forwards.",
                      UnsupportedError)
    seq = bool(getattr(fwd.module, "return_sequences", False))
    if fwd.output_shape != bwd.output_shape:
        raise c.error(f"forward and backward outputs differ: {format_shape(fwd.output_shape)} and "
                      f"{format_shape(bwd.output_shape)}.")
    out = list(fwd.output_shape)
    if mode == "concat":
        out[-1] = out[-1] * 2
    c.notes.append(f"merge_mode {mode!r}; the backward layer's sequence put back in time order before merging")
    return _Built(KerasBidirectional(fwd.module, bwd.module, mode, seq), tuple(out),
                  parts=(*_parts_of(fwd, "forward/", "forward_layer"), *_parts_of(bwd, "backward/",
                                                                                  "backward_layer")))


def _recurrent_common(c: _Layer):
    for key in ("return_state", "stateful", "time_major"):
        c.refuse_if(key, True)
    for key in ("dropout", "recurrent_dropout"):
        if c.get(key, 0):
            c.notes.append(f"{key}={c.get(key)} not reproduced (it only acts in training)")
    shape = c.one_input([3])
    return shape, c.known(shape[-1], "number of input features"), c.int("units")


@_builds("GRU")
def _gru(c: _Layer) -> _Built:
    from cnnkit.keras.recurrent import KerasGRU

    shape, fin, units = _recurrent_common(c)
    act = c.activation("activation", "tanh")
    rec = c.activation("recurrent_activation", "sigmoid")
    reset_after = c.flag("reset_after", True)
    use_bias = c.flag("use_bias", True)
    seq = c.flag("return_sequences", False)
    module = KerasGRU(fin, units, use_bias, reset_after=reset_after, activation=act, recurrent_activation=rec,
                      return_sequences=seq, go_backwards=c.flag("go_backwards", False))
    c.notes.append(f"reset_after={reset_after}: Keras's GRU equations, weights kept in Keras's layout "
                   "(kernel (in, 3H), gates z, r, h)")
    names = ("kernel", "recurrent_kernel", "bias") if use_bias else ("kernel", "recurrent_kernel")
    return _Built(module, (shape[0], units) if seq else (units,), names)


@_builds("SimpleRNN")
def _simple_rnn(c: _Layer) -> _Built:
    from cnnkit.keras.recurrent import KerasSimpleRNN

    shape, fin, units = _recurrent_common(c)
    use_bias = c.flag("use_bias", True)
    seq = c.flag("return_sequences", False)
    module = KerasSimpleRNN(fin, units, use_bias, activation=c.activation("activation", "tanh"),
                            return_sequences=seq, go_backwards=c.flag("go_backwards", False))
    names = ("kernel", "recurrent_kernel", "bias") if use_bias else ("kernel", "recurrent_kernel")
    return _Built(module, (shape[0], units) if seq else (units,), names)
