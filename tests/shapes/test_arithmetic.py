"""Tests of ``cnnkit.shapes.arithmetic`` against independent references.

Every predicted size is compared with something the module did not compute: the shape PyTorch returns
for a real tensor, the shape SciPy returns for a real convolution, or a hand transcription (in this file)
of the rule TensorFlow / Keras document. Only the ``describe_*`` text tests reuse the module's own sizes.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import cnnkit.shapes.arithmetic as arithmetic
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.shapes.arithmetic import (
    PADDING_MODES,
    conv_output_size,
    conv_transpose_output_size,
    describe_conv_size,
    describe_pool_size,
    padding_amounts,
    pool_output_size,
    tf_same_padding,
)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d}
MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d}

FAST = settings(max_examples=400, deadline=None)


# --------------------------------------------------------------------------------------------------
# helpers: real tensors and hand transcriptions of documented rules
# --------------------------------------------------------------------------------------------------


def _as_arg(values: tuple[int, ...], scalar: bool):
    """An int when the test chose a scalar argument (all entries equal), else the tuple."""
    return values[0] if scalar else values


def _torch_conv_size(sizes, kernel, stride=1, padding=0, dilation=1):
    """Spatial shape torch returns for a real 1-channel convolution, or None if torch refuses."""
    n = len(sizes)
    x = torch.zeros(1, 1, *sizes)
    w = torch.zeros(1, 1, *kernel)
    try:
        shape = tuple(CONV[n](x, w, None, stride, padding, dilation).shape[2:])
    except RuntimeError:
        return None
    return None if 0 in shape else shape


def _torch_pad(pairs) -> list[int]:
    """F.pad wants (before, after) pairs starting from the LAST dimension."""
    flat: list[int] = []
    for lo, hi in reversed(pairs):
        flat += [lo, hi]
    return flat


def _tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's documented "SAME" rule (tf.nn.convolution docs, "Notes on padding")."""
    k_eff = dilation * (kernel - 1) + 1
    # if in % s == 0: pad_along = max(k − s, 0), else: pad_along = max(k − in % s, 0)
    total = max(k_eff - stride, 0) if size % stride == 0 else max(k_eff - (size % stride), 0)
    return total // 2, total - total // 2


def _keras_pool_size(size: int, pool: int, stride: int, padding: str) -> int:
    """keras.src.ops.operation_utils.compute_pooling_output_shape, one dimension."""
    if padding == "valid":
        return math.floor((size - pool) / stride) + 1
    return math.floor((size - 1) / stride) + 1


def _keras_deconv_length(size: int, kernel: int, padding: str, stride: int, dilation: int) -> int:
    """keras.src.utils.conv_utils / operation_utils deconv_output_length with output_padding=None."""
    kernel = kernel + (kernel - 1) * (dilation - 1)
    if padding == "valid":
        return size * stride + max(kernel - stride, 0)
    return size * stride


@st.composite
def conv_configs(draw, ndims=(1, 2, 3), max_size=16, max_kernel=5, max_stride=3, max_dilation=3):
    """(ndim, sizes, kernel, stride, dilation, scalar flags) with per-argument int-or-tuple choice."""
    n = draw(st.sampled_from(ndims))
    top = max_size if n < 3 else min(max_size, 8)

    def per_dim(lo, hi):
        scalar = draw(st.booleans())
        if scalar:
            return (draw(st.integers(lo, hi)),) * n, True
        return tuple(draw(st.integers(lo, hi)) for _ in range(n)), False

    sizes = tuple(draw(st.integers(1, top)) for _ in range(n))
    kernel = per_dim(1, max_kernel)
    stride = per_dim(1, max_stride)
    dilation = per_dim(1, max_dilation)
    return n, sizes, kernel, stride, dilation


def _size_arg(sizes):
    return sizes[0] if len(sizes) == 1 else sizes


def _unwrap(values, sizes):
    return values[0] if len(sizes) == 1 else tuple(values)


# --------------------------------------------------------------------------------------------------
# 1. conv_output_size vs torch on real tensors
# --------------------------------------------------------------------------------------------------


@FAST
@given(cfg=conv_configs(), padding=st.integers(0, 3), pad_scalar=st.booleans())
def test_conv_int_padding_matches_torch(cfg, padding, pad_scalar):
    n, sizes, (kernel, ks), (stride, ss), (dilation, ds) = cfg
    pads = (padding,) * n
    expected = _torch_conv_size(sizes, kernel, stride, pads, dilation)
    args = dict(
        kernel_size=_as_arg(kernel, ks),
        stride=_as_arg(stride, ss),
        padding=padding if pad_scalar else pads,
        dilation=_as_arg(dilation, ds),
    )
    if expected is None:  # torch refuses: the dilated kernel does not fit the padded input
        with pytest.raises(ShapeError, match="output would be empty"):
            conv_output_size(_size_arg(sizes), **args)
    else:
        assert conv_output_size(_size_arg(sizes), **args) == _unwrap(expected, sizes)
        assert padding_amounts(_size_arg(sizes), **args) == tuple((p, p) for p in pads)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@FAST
@given(cfg=conv_configs(max_stride=1))
def test_same_stride_one_matches_torch_same(cfg):
    n, sizes, (kernel, ks), _, (dilation, ds) = cfg
    x = torch.zeros(1, 1, *sizes)
    w = torch.zeros(1, 1, *kernel)
    expected = tuple(CONV[n](x, w, None, 1, "same", dilation).shape[2:])
    got = conv_output_size(_size_arg(sizes), _as_arg(kernel, ks), padding="same", dilation=_as_arg(dilation, ds))
    assert got == _unwrap(expected, sizes)
    assert expected == sizes
    # torch's own split (its _conv_forward "same" branch): total = d·(k−1), left = total // 2
    pairs = padding_amounts(sizes, kernel, 1, "same", dilation)
    assert pairs == tuple(
        (d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation)
    )


@FAST
@given(cfg=conv_configs(ndims=(1, 2), max_size=20, max_stride=4))
def test_tf_same_with_stride_matches_tensorflow_rule_and_torch(cfg):
    n, sizes, (kernel, ks), (stride, ss), (dilation, ds) = cfg
    assume(any(s > 1 for s in stride))
    size_arg = _size_arg(sizes)
    k_arg, s_arg, d_arg = _as_arg(kernel, ks), _as_arg(stride, ss), _as_arg(dilation, ds)

    expected_size = tuple(-(-i // s) for i, s in zip(sizes, stride))  # ceil(in / s)
    assert conv_output_size(size_arg, k_arg, s_arg, "same", d_arg) == _unwrap(expected_size, sizes)

    hand = tuple(_tf_same_pads(i, k, s, d) for i, k, s, d in zip(sizes, kernel, stride, dilation))
    assert tf_same_padding(size_arg, k_arg, s_arg, d_arg) == _unwrap(hand, sizes)
    assert padding_amounts(size_arg, k_arg, s_arg, "same", d_arg) == hand

    x = F.pad(torch.zeros(1, 1, *sizes), _torch_pad(hand))
    y = CONV[n](x, torch.zeros(1, 1, *kernel), None, stride, 0, dilation)
    assert tuple(y.shape[2:]) == expected_size


@FAST
@given(
    sizes=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    kernel=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    mode=st.sampled_from(["full", "valid", "same"]),
)
def test_scipy_convolve2d_modes(sizes, kernel, mode):
    a, b = np.ones(sizes), np.ones(kernel)
    fits = all(i >= k for i, k in zip(sizes, kernel))
    if mode == "valid" and not fits:
        # scipy swaps the arrays (or refuses) when the kernel is larger; a CNN's output is empty.
        with pytest.raises(ShapeError, match="output would be empty"):
            conv_output_size(sizes, kernel, padding=mode)
        return
    expected = scipy.signal.convolve2d(a, b, mode=mode).shape
    assert conv_output_size(sizes, kernel, padding=mode) == tuple(expected)


@FAST
@given(cfg=conv_configs())
def test_full_padding_matches_torch_after_explicit_pad(cfg):
    n, sizes, (kernel, ks), (stride, ss), (dilation, ds) = cfg
    pairs = tuple((d * (k - 1), d * (k - 1)) for k, d in zip(kernel, dilation))
    size_arg = _size_arg(sizes)
    k_arg, s_arg, d_arg = _as_arg(kernel, ks), _as_arg(stride, ss), _as_arg(dilation, ds)
    assert padding_amounts(size_arg, k_arg, s_arg, "full", d_arg) == pairs
    x = F.pad(torch.zeros(1, 1, *sizes), _torch_pad(pairs))
    y = CONV[n](x, torch.zeros(1, 1, *kernel), None, stride, 0, dilation)
    assert conv_output_size(size_arg, k_arg, s_arg, "full", d_arg) == _unwrap(tuple(y.shape[2:]), sizes)


@FAST
@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 6),
    stride=st.integers(1, 4),
    dilation=st.integers(1, 4),
)
def test_causal_1d_matches_left_pad_then_conv(size, kernel, stride, dilation):
    left = dilation * (kernel - 1)
    x = F.pad(torch.zeros(1, 1, size), (left, 0))
    y = F.conv1d(x, torch.zeros(1, 1, kernel), None, stride, 0, dilation)
    assert conv_output_size(size, kernel, stride, "causal", dilation) == y.shape[-1]
    assert y.shape[-1] == -(-size // stride)
    assert padding_amounts(size, kernel, stride, "causal", dilation) == ((left, 0),)


# --------------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------------


@st.composite
def pool_configs(draw):
    n = draw(st.sampled_from((1, 2)))
    kind = draw(st.sampled_from(("max", "avg")))
    sizes = tuple(draw(st.integers(1, 16)) for _ in range(n))
    kernel = tuple(draw(st.integers(1, 5)) for _ in range(n))
    stride = draw(st.one_of(st.none(), st.tuples(*[st.integers(1, 3)] * n)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(n)) if kind == "max" else (1,) * n
    ceil_mode = draw(st.booleans())
    return n, kind, sizes, kernel, stride, padding, dilation, ceil_mode


def _torch_pool_size(n, kind, sizes, kernel, stride, padding, dilation, ceil_mode):
    x = torch.zeros(1, 1, *sizes)
    try:
        if kind == "max":
            y = MAX_POOL[n](x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
        else:
            y = AVG_POOL[n](x, kernel, stride, padding, ceil_mode=ceil_mode)
    except RuntimeError:
        return None
    return None if 0 in y.shape[2:] else tuple(y.shape[2:])


@FAST
@given(cfg=pool_configs())
def test_pool_matches_torch(cfg):
    n, kind, sizes, kernel, stride, padding, dilation, ceil_mode = cfg
    expected = _torch_pool_size(n, kind, sizes, kernel, stride or kernel, padding, dilation, ceil_mode)
    args = (_size_arg(sizes), kernel, stride, padding, dilation, ceil_mode)
    if expected is None:
        with pytest.raises(ShapeError, match="output would be empty"):
            pool_output_size(*args)
    else:
        assert pool_output_size(*args) == _unwrap(expected, sizes)


def test_pool_ceil_mode_window_larger_than_input():
    cases = [  # (size, kernel, stride, padding, dilation)
        ((2, 2), 3, 2, 0, 1),
        (1, 2, 2, 0, 1),
        (3, 4, 2, 0, 1),
        (2, 5, 2, 1, 1),
        (2, 2, 2, 0, 2),
    ]
    for size, k, s, p, d in cases:
        sizes = size if isinstance(size, tuple) else (size,)
        n = len(sizes)
        expected = tuple(MAX_POOL[n](torch.zeros(1, 1, *sizes), k, s, p, d, ceil_mode=True).shape[2:])
        assert pool_output_size(size, k, s, p, d, ceil_mode=True) == _unwrap(expected, sizes)


@FAST
@given(
    sizes=st.tuples(st.integers(1, 30), st.integers(1, 30)),
    pool=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    stride=st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))),
    padding=st.sampled_from(["valid", "same"]),
)
def test_pool_string_padding_matches_keras_rule(sizes, pool, stride, padding):
    strides = pool if stride is None else stride
    expected = tuple(_keras_pool_size(i, k, s, padding) for i, k, s in zip(sizes, pool, strides))
    if any(o <= 0 for o in expected):
        with pytest.raises(ShapeError, match="output would be empty"):
            pool_output_size(sizes, pool, stride, padding)
    else:
        assert pool_output_size(sizes, pool, stride, padding) == expected


# --------------------------------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------------------------------


@FAST
@given(
    cfg=conv_configs(ndims=(1, 2), max_size=10),
    padding=st.integers(0, 3),
    output_padding=st.integers(0, 3),
)
def test_conv_transpose_int_padding_matches_torch(cfg, padding, output_padding):
    n, sizes, (kernel, ks), (stride, ss), (dilation, ds) = cfg
    x = torch.zeros(1, 1, *sizes)
    w = torch.zeros(1, 1, *kernel)
    try:
        expected = tuple(CONV_T[n](x, w, None, stride, padding, output_padding, 1, dilation).shape[2:])
    except RuntimeError:
        expected = None
    if expected is not None and 0 in expected:
        # torch refuses a 0-length output in 1-D but returns an empty tensor in 2-D/3-D; either way the
        # output is empty, which cnnkit reports as an error.
        expected = None
    args = (_size_arg(sizes), _as_arg(kernel, ks), _as_arg(stride, ss), padding, output_padding,
            _as_arg(dilation, ds))
    if expected is None:
        with pytest.raises(ShapeError, match=r"output_padding must be smaller|not positive"):
            conv_transpose_output_size(*args)
    else:
        assert conv_transpose_output_size(*args) == _unwrap(expected, sizes)


@FAST
@given(
    cfg=conv_configs(ndims=(1, 2), max_size=20, max_stride=4),
    padding=st.sampled_from(["valid", "same"]),
)
def test_conv_transpose_string_padding_matches_keras_rule(cfg, padding):
    _, sizes, (kernel, ks), (stride, ss), (dilation, ds) = cfg
    expected = tuple(
        _keras_deconv_length(i, k, padding, s, d) for i, k, s, d in zip(sizes, kernel, stride, dilation)
    )
    got = conv_transpose_output_size(
        _size_arg(sizes), _as_arg(kernel, ks), _as_arg(stride, ss), padding, 0, _as_arg(dilation, ds)
    )
    assert got == _unwrap(expected, sizes)


# --------------------------------------------------------------------------------------------------
# 2. seed figures and hand-computed values
# --------------------------------------------------------------------------------------------------


def test_seed_28_with_5x5_kernel():
    # "Confused about the size of the output of convolution layer": 28 − 5 + 1 and 28 + 5 − 1.
    assert conv_output_size(28, 5) == 24
    assert conv_output_size(28, 5, padding="valid") == 24
    assert conv_output_size(28, 5, padding="full") == 32
    assert conv_output_size((28, 28), (5, 5)) == (24, 24)
    assert conv_output_size((28, 28), 5, padding="full") == (32, 32)
    assert conv_output_size(28, 5, padding="same") == 28
    assert padding_amounts(28, 5, padding="full") == ((4, 4),)


def test_seed_output_shape_of_a_conv_layer_32x32_same_and_valid():
    # Conv2D(32, (5, 5)) on 32x32x3: valid → 28x28; same stride 2 → 16x16; locally connected 6x6, 3x3 → 4x4.
    assert conv_output_size((32, 32), 5) == (28, 28)
    assert conv_output_size((32, 32), 5, stride=2, padding="same") == (16, 16)
    assert conv_output_size((6, 6), 3) == (4, 4)
    assert conv_output_size((6, 6), 3, padding="same") == (6, 6)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "dilation", "expected"),
    [
        # total = max((ceil(i/s) − 1)·s + d(k−1) + 1 − i, 0), odd zero at the end
        (28, 5, 2, 1, (1, 2)),  # out 14: 13·2 + 5 − 28 = 3
        (28, 3, 2, 1, (0, 1)),  # 13·2 + 3 − 28 = 1
        (27, 3, 2, 1, (1, 1)),  # out 14: 26 + 3 − 27 = 2
        (7, 3, 2, 1, (1, 1)),  # out 4: 6 + 3 − 7 = 2
        (8, 3, 2, 1, (0, 1)),  # out 4: 6 + 3 − 8 = 1
        (224, 7, 2, 1, (2, 3)),  # out 112: 222 + 7 − 224 = 5
        (10, 1, 3, 1, (0, 0)),  # out 4: 9 + 1 − 10 = 0
        (5, 3, 1, 2, (2, 2)),  # stride 1: total = d(k−1) = 4
        (6, 2, 1, 1, (0, 1)),  # even kernel: the odd zero after
        (1, 5, 4, 1, (2, 2)),  # out 1: 0 + 5 − 1 = 4
    ],
)
def test_tf_same_padding_hand_values(size, kernel, stride, dilation, expected):
    assert tf_same_padding(size, kernel, stride=stride, dilation=dilation) == expected


def test_tf_same_padding_tuple_size_returns_pairs():
    assert tf_same_padding((7, 8), 3, stride=2) == ((1, 1), (0, 1))
    assert tf_same_padding((28,), 5, stride=2) == ((1, 2),)


def test_resnet_stem():
    assert conv_output_size((224, 224), 7, stride=2, padding=3) == (112, 112)
    assert pool_output_size((112, 112), 3, stride=2, padding=1) == (56, 56)
    assert conv_output_size(224, 7, stride=2, padding="same") == 112
    stem = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 7, stride=2, padding=3, bias=False),
        torch.nn.MaxPool2d(3, stride=2, padding=1),
    )
    assert stem(torch.zeros(1, 3, 224, 224)).shape == (1, 4, 56, 56)


def test_hand_values_pool_and_transpose():
    assert pool_output_size(24, 2) == 12
    assert pool_output_size(7, 2) == 3
    assert pool_output_size(7, 2, ceil_mode=True) == 4
    assert pool_output_size(5, 2, padding="same") == 3
    assert pool_output_size(5, 2, padding="valid") == 2
    assert conv_transpose_output_size(16, 2, stride=2) == 32
    assert conv_transpose_output_size(7, 3, stride=2, padding=1, output_padding=1) == 14
    assert conv_transpose_output_size(10, 3, stride=2, padding="valid") == 21  # 10·2 + (3 − 2)
    assert conv_transpose_output_size(10, 3, stride=2, padding="same") == 20


def test_numpy_integers_are_accepted():
    assert conv_output_size(np.int64(28), np.int64(5)) == 24
    assert conv_output_size((np.int32(28), 28), 5) == (24, 24)


def test_int_size_gives_int_tuple_size_gives_tuple():
    assert isinstance(conv_output_size(10, 3), int)
    assert conv_output_size((10,), 3) == (8,)
    assert isinstance(pool_output_size(10, 2), int)
    assert isinstance(conv_transpose_output_size(10, 2, stride=2), int)


# --------------------------------------------------------------------------------------------------
# 3. exceptions
# --------------------------------------------------------------------------------------------------


def test_shape_error_is_a_value_error():
    assert issubclass(ShapeError, ValueError)
    assert issubclass(ShapeError, CnnkitError)
    with pytest.raises(ValueError):
        conv_output_size(3, 5)


@pytest.mark.parametrize("size", [0, -3])
def test_non_positive_size(size):
    with pytest.raises(ShapeError, match=rf"size must be .*>= 1.*Received size={size}\."):
        conv_output_size(size, 3)


def test_non_positive_entry_in_size_tuple():
    with pytest.raises(ShapeError, match=r"size must be .*Received size=\(8, 0\)\."):
        conv_output_size((8, 0), 3)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("kernel_size", {"kernel_size": 0}),
        ("stride", {"kernel_size": 3, "stride": 0}),
        ("dilation", {"kernel_size": 3, "dilation": -1}),
        ("padding", {"kernel_size": 3, "padding": -1}),
    ],
)
def test_non_positive_arguments_name_argument_and_value(name, kwargs):
    value = kwargs[name]
    with pytest.raises(ShapeError, match=rf"^{name} must be .*Received {name}={value}\.$"):
        conv_output_size(10, **kwargs)


def test_kernel_larger_than_padded_input_lists_every_argument():
    with pytest.raises(ShapeError) as info:
        conv_output_size(3, 5, stride=2, padding=0, dilation=1)
    msg = str(info.value)
    assert "output would be empty" in msg
    assert "spans 5" in msg and "has 3" in msg
    for text in ("size=3", "kernel_size=5", "stride=2", "padding=0", "dilation=1"):
        assert text in msg
    with pytest.raises(ShapeError, match=r"spans 9 .* has 8\. Received size=\(8, 8\), kernel_size=3, "
                                         r"stride=1, padding='valid', dilation=4\."):
        conv_output_size((8, 8), 3, dilation=4)


@pytest.mark.parametrize(
    ("func", "allowed"),
    [
        (conv_output_size, PADDING_MODES),
        (padding_amounts, PADDING_MODES),
        (pool_output_size, ("valid", "same")),
        (conv_transpose_output_size, ("valid", "same")),
    ],
)
def test_unknown_padding_lists_allowed(func, allowed):
    with pytest.raises(ShapeError, match=re.escape(f"Unknown padding 'smae'. Expected one of {allowed!r}.")):
        func(10, 3, padding="smae")


def test_pool_and_transpose_refuse_full_and_causal():
    for mode in ("full", "causal"):
        with pytest.raises(ShapeError, match="Expected one of"):
            pool_output_size(10, 3, padding=mode)
        with pytest.raises(ShapeError, match="Expected one of"):
            conv_transpose_output_size(10, 3, padding=mode)


def test_wrong_tuple_length():
    with pytest.raises(ShapeError, match=re.escape("kernel_size must be a tuple of 3 integers >= 1. "
                                                   "Received kernel_size=(3, 3).")):
        conv_output_size((8, 8, 8), kernel_size=(3, 3))
    with pytest.raises(ShapeError, match=r"stride must be a tuple of 2 integers.*Received stride=\(1, 1, 1\)"):
        conv_output_size((8, 8), 3, stride=(1, 1, 1))
    with pytest.raises(ShapeError, match=r"padding must be a tuple of 2 integers >= 0.*Received padding=\(1,\)"):
        conv_output_size((8, 8), 3, padding=(1,))
    with pytest.raises(ShapeError, match=r"output_padding must be a tuple of 2"):
        conv_transpose_output_size((8, 8), 3, stride=2, output_padding=(1, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "name", "shown"),
    [
        ({"size": 28.0, "kernel_size": 5}, "size", "28.0"),
        ({"size": "28", "kernel_size": 5}, "size", "'28'"),
        ({"size": (), "kernel_size": 5}, "size", r"\(\)"),
        ({"size": 28, "kernel_size": 2.5}, "kernel_size", "2.5"),
        ({"size": (28, 28), "kernel_size": (3, 3.0)}, "kernel_size", r"\(3, 3.0\)"),
        ({"size": 28, "kernel_size": 3, "stride": "2"}, "stride", "'2'"),
        ({"size": 28, "kernel_size": 3, "dilation": None}, "dilation", "None"),
        ({"size": 28, "kernel_size": 3, "padding": 1.0}, "padding", "1.0"),
    ],
)
def test_non_integer_values(kwargs, name, shown):
    with pytest.raises(ShapeError, match=rf"{name} must be .*Received {name}={shown}\."):
        conv_output_size(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": True, "kernel_size": 1}, "size"),
        ({"size": (8, False), "kernel_size": 1}, "size"),
        ({"size": 8, "kernel_size": True}, "kernel_size"),
        ({"size": 8, "kernel_size": 3, "stride": True}, "stride"),
        ({"size": 8, "kernel_size": 3, "dilation": True}, "dilation"),
        ({"size": 8, "kernel_size": 3, "padding": False}, "padding"),
    ],
)
def test_booleans_are_not_integers(kwargs, name):
    value = kwargs[name]
    with pytest.raises(ShapeError, match=rf"{name} must be .*Received {name}={re.escape(repr(value))}\."):
        conv_output_size(**kwargs)


def test_pool_padding_more_than_half_kernel():
    with pytest.raises(ShapeError, match=r"padding must be at most half of kernel_size\. Received size=10, "
                                         r"kernel_size=3, stride=None, padding=2"):
        pool_output_size(10, 3, padding=2)
    with pytest.raises(ShapeError, match=r"at most half.*padding=\(1, 2\)"):
        pool_output_size((10, 10), (2, 3), padding=(1, 2))
    # torch agrees that this is invalid
    with pytest.raises(RuntimeError):
        F.max_pool1d(torch.zeros(1, 1, 10), 3, 1, 2)
    assert pool_output_size(10, 3, stride=1, padding=1) == 10
    assert pool_output_size(10, 4, stride=1, padding=2) == 11


def test_output_padding_not_smaller_than_stride_or_dilation():
    with pytest.raises(ShapeError, match=r"output_padding must be smaller than stride or dilation\. "
                                         r"Received .*stride=2, .*output_padding=2"):
        conv_transpose_output_size(7, 3, stride=2, output_padding=2)
    with pytest.raises(ShapeError, match=r"output_padding=1"):
        conv_transpose_output_size(7, 3, stride=1, output_padding=1)
    # allowed when smaller than the dilation, as in torch
    assert conv_transpose_output_size(7, 3, stride=1, output_padding=1, dilation=2) == 12
    assert F.conv_transpose1d(torch.zeros(1, 1, 7), torch.zeros(1, 1, 3), None, 1, 0, 1, 1, 2).shape[-1] == 12


def test_output_padding_with_string_padding():
    with pytest.raises(ShapeError, match=r"output_padding must be 0 with padding='same'\. .*output_padding=1"):
        conv_transpose_output_size(7, 3, stride=2, padding="same", output_padding=1)


def test_transpose_non_positive_output():
    with pytest.raises(ShapeError, match=r"would be -1 \(not positive\)\. Received size=1, kernel_size=1, "
                                         r"stride=1, padding=1"):
        conv_transpose_output_size(1, 1, padding=1)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_ceil_mode_with_string_padding(padding):
    with pytest.raises(ShapeError, match=rf"ceil_mode=True only goes with an integer padding\. "
                                         rf"Received .*padding='{padding}', dilation=1, ceil_mode=True\."):
        pool_output_size(10, 3, padding=padding, ceil_mode=True)


def test_pool_empty_output_message():
    with pytest.raises(ShapeError, match=r"Pooling output would be empty: the window spans 5 positions but the "
                                         r"padded input has 4\. Received size=2, kernel_size=5, .*padding=1"):
        pool_output_size(2, 5, padding=1)


# --------------------------------------------------------------------------------------------------
# 5. describe_conv_size / describe_pool_size text
# --------------------------------------------------------------------------------------------------

_FINAL = re.compile(r"= (\d+)(?: \(|$)")


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [
        (28, 5, 1, "valid", 1),
        (28, 5, 1, "full", 1),
        ((28, 28), 5, 2, "same", 1),
        ((28, 20), 5, 2, 1, (1, 2)),
        (224, 7, 2, 3, 1),
        (9, 3, 2, "causal", 2),
        ((30, 31, 32), (3, 4, 5), (1, 2, 3), (0, 1, 2), (1, 1, 2)),
    ],
)
def test_describe_conv_size_numbers_match(size, kernel, stride, padding, dilation):
    lines = describe_conv_size(size, kernel, stride, padding, dilation)
    sizes = size if isinstance(size, tuple) else (size,)
    n = len(sizes)
    outs = conv_output_size(sizes, kernel, stride, padding, dilation)

    def full(v):
        return v if isinstance(v, tuple) else (v,) * n

    pads = padding_amounts(sizes, kernel, stride, padding, dilation)
    dims = list(zip(sizes, full(kernel), full(stride), full(dilation), pads, outs))
    distinct = list(dict.fromkeys(dims))
    assert len(lines) == len(distinct)
    for line, (i, k, s, d, (lo, hi), o) in zip(lines, distinct):
        assert line.startswith(f"{i} → ")
        assert int(_FINAL.search(line).group(1)) == o
        assert f"/ {s})" in line
        if padding in ("same", "causal"):
            assert f"pad ({lo}, {hi})" in line
            assert repr(padding) in line
        else:
            assert f"({i} + {lo} + {hi} − {d}·({k}−1) − 1)" in line


def test_describe_conv_size_seed_text():
    assert describe_conv_size(28, 5) == ["28 → floor((28 + 0 + 0 − 1·(5−1) − 1) / 1) + 1 = 24"]
    assert describe_conv_size(28, 5, padding="full") == ["28 → floor((28 + 4 + 4 − 1·(5−1) − 1) / 1) + 1 = 32"]


def test_describe_conv_size_raises_like_conv_output_size():
    with pytest.raises(ShapeError, match="output would be empty"):
        describe_conv_size(3, 5)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "ceil_mode"),
    [((7, 7), 2, None, 0, True), (112, 3, 2, 1, False), ((9, 10), 3, 2, 1, True), (5, 2, None, "same", False)],
)
def test_describe_pool_size_numbers_match(size, kernel, stride, padding, ceil_mode):
    lines = describe_pool_size(size, kernel, stride, padding, ceil_mode=ceil_mode)
    outs = pool_output_size(size, kernel, stride, padding, ceil_mode=ceil_mode)
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert [int(_FINAL.search(line).group(1)) for line in lines] == list(dict.fromkeys(outs))


def test_public_names():
    for name in ("PADDING_MODES", "ReceptiveField", "conv_output_size", "conv_transpose_output_size",
                 "describe_conv_size", "describe_pool_size", "padding_amounts", "pool_output_size",
                 "receptive_fields", "tf_same_padding"):
        assert name in arithmetic.__all__
        assert hasattr(arithmetic, name)
    assert PADDING_MODES == ("valid", "same", "full", "causal")
