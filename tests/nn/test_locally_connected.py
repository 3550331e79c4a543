"""LocallyConnected1d/2d against references written here: nn.Conv*d with shared weights, and a
Keras-style loop over positions on channels-last patches (the layout Keras's get_weights() uses)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cnnkit
import cnnkit.nn as cnn
from cnnkit import ShapeError
from cnnkit.keras import from_keras, keras_shapes, to_keras
from cnnkit.nn import LocallyConnected1d, LocallyConnected2d, locally_connected1d, locally_connected2d

# --- independent references ---------------------------------------------------------------------------


def tf_same(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding, written out: ceil(size/s) outputs, the odd zero at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def pads_for(size, k, s, d, padding):
    if padding == "valid":
        return [(0, 0)] * len(size)
    if padding == "same":
        return [tf_same(i, kk, ss, dd) for i, kk, ss, dd in zip(size, k, s, d)]
    p = (padding,) * len(size) if isinstance(padding, int) else padding
    return [(pp, pp) for pp in p]


def keras_loop_2d(x, kernel, bias, k, s, d, pads):
    """Keras's local_conv, one position at a time: the channels-last patch under position (i, j),
    flattened row-major over (kh, kw, in), times kernel[i·W' + j], plus bias[i, j]."""
    n, c, h, w = x.shape
    (pt, pb), (pl, pr) = pads
    xp = torch.zeros(n, c, h + pt + pb, w + pl + pr, dtype=x.dtype)
    xp[:, :, pt:pt + h, pl:pl + w] = x
    x_cl = xp.permute(0, 2, 3, 1)  # (N, H, W, C): Keras's channels-last input
    oh = (h + pt + pb - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + pl + pr - d[1] * (k[1] - 1) - 1) // s[1] + 1
    rows_out = []
    for i in range(oh):
        cols_out = []
        for j in range(ow):
            rows = [i * s[0] + a * d[0] for a in range(k[0])]
            cols = [j * s[1] + b * d[1] for b in range(k[1])]
            patch = x_cl[:, rows][:, :, cols]  # (N, kh, kw, C)
            y = patch.reshape(n, -1) @ kernel[i * ow + j]
            if bias is not None:
                y = y + bias[i, j]
            cols_out.append(y)
        rows_out.append(torch.stack(cols_out, 1))
    return torch.stack(rows_out, 1).permute(0, 3, 1, 2)  # (N, out, H', W')


def keras_loop_1d(x, kernel, bias, k, s, d, pads):
    n, c, length = x.shape
    lo, hi = pads[0]
    xp = torch.zeros(n, c, length + lo + hi, dtype=x.dtype)
    xp[:, :, lo:lo + length] = x
    x_cl = xp.permute(0, 2, 1)  # (N, L, C)
    out_len = (length + lo + hi - d * (k - 1) - 1) // s + 1
    ys = []
    for i in range(out_len):
        patch = x_cl[:, [i * s + a * d for a in range(k)]]  # (N, k, C)
        y = patch.reshape(n, -1) @ kernel[i]
        ys.append(y + bias[i] if bias is not None else y)
    return torch.stack(ys, 2)


def shared_from_conv(lc, conv):
    """Set every position's filters to conv's: (out, in, kh, kw) -> (kh·kw·in, out) per position."""
    kernel = conv.weight.detach().permute(*range(2, conv.weight.dim()), 1, 0).reshape(-1, conv.out_channels)
    with torch.no_grad():
        lc.weight.copy_(kernel.expand_as(lc.weight))
        lc.bias.copy_(conv.bias.detach().reshape(-1, *[1] * len(lc.output_size)).expand_as(lc.bias))


# --- the seed and Keras's documentation ---------------------------------------------------------------


def test_seed_weight_shapes_16_36_4_and_bias_4_4_4():
    lc = LocallyConnected2d(4, 4, 3, input_size=(6, 6))
    kw = lc.keras_weights()
    assert {k: tuple(v.shape) for k, v in kw.items()} == {"kernel": (16, 36, 4), "bias": (4, 4, 4)}
    assert keras_shapes(lc) == {"kernel": (16, 36, 4), "bias": (4, 4, 4)}
    # "(4*4)*(3*3*4*4) kernel params + (4*4)*4 bias params"
    assert sum(p.numel() for p in lc.parameters()) == (4 * 4) * (3 * 3 * 4 * 4) + (4 * 4) * 4 == 2368
    assert lc(torch.zeros(1, 4, 6, 6)).shape == (1, 4, 4, 4)


def test_keras_docs_32x32x3_with_64_filters():
    lc = LocallyConnected2d(3, 64, 3, input_size=(32, 32))
    assert lc.output_size == (30, 30)
    assert sum(p.numel() for p in lc.parameters()) == (30 * 30) * (3 * 3 * 3 * 64) + (30 * 30) * 64
    assert cnnkit.explain(lc, (3, 32, 32)).output_shape == (64, 30, 30)


def test_keras_docs_1d_example_10_steps_32_features():
    lc = LocallyConnected1d(32, 64, 3, input_size=10)
    assert keras_shapes(lc) == {"kernel": (8, 3 * 32, 64), "bias": (8, 64)}
    assert lc(torch.zeros(2, 32, 10)).shape == (2, 64, 8)


def test_explain_derivation_of_the_seed():
    e = cnnkit.explain(LocallyConnected2d(4, 4, 3, input_size=(6, 6)), (4, 6, 6))
    assert e.output_shape == (4, 4, 4)
    assert e.keras_weights == {"kernel": (16, 36, 4), "bias": (4, 4, 4)}
    assert e.keras_class == "LocallyConnected2D"
    assert e.num_params == 2368
    text = str(e)
    assert "(4·4 patches) × (3·3·4 inputs) × 4 filters = 2,304" in text
    assert "(4·4) × 4 = 64" in text
    assert "row-major over (kh, kw, in)" in text


def test_explain_rejects_other_input_size():
    with pytest.raises(ShapeError, match=r"input_size=\(6, 6\).*Received input_shape=\(4, 7, 7\)"):
        cnnkit.explain(LocallyConnected2d(4, 4, 3, input_size=(6, 6)), (4, 7, 7))


# --- numbers against references -----------------------------------------------------------------------

CONV_CASES = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, dilation=2, padding=1),
    dict(kernel_size=3, stride=2, padding="same"),
    dict(kernel_size=2, padding="same"),  # even kernel: TensorFlow's rule puts the odd zero at the end
    dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), padding="same"),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_shared_weights_equal_conv2d(case):
    size = (9, 8)
    lc = LocallyConnected2d(3, 5, input_size=size, dtype=torch.float64, **case)
    k, s, d = lc.kernel_size, lc.stride, lc.dilation
    conv = nn.Conv2d(3, 5, k, stride=s, dilation=d, dtype=torch.float64)
    shared_from_conv(lc, conv)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    (pt, pb), (pl, pr) = pads_for(size, k, s, d, case.get("padding", "valid"))
    expected = conv(F.pad(x, (pl, pr, pt, pb)))
    torch.testing.assert_close(lc(x), expected)


@pytest.mark.parametrize("case", [dict(kernel_size=3), dict(kernel_size=2, stride=2, padding="same"),
                                  dict(kernel_size=3, dilation=2, padding=2)], ids=str)
def test_shared_weights_equal_conv1d(case):
    lc = LocallyConnected1d(2, 3, input_size=11, dtype=torch.float64, **case)
    conv = nn.Conv1d(2, 3, lc.kernel_size, stride=lc.stride, dilation=lc.dilation, dtype=torch.float64)
    shared_from_conv(lc, conv)
    x = torch.randn(3, 2, 11, dtype=torch.float64)
    ((lo, hi),) = pads_for((11,), lc.kernel_size, lc.stride, lc.dilation, case.get("padding", "valid"))
    torch.testing.assert_close(lc(x), conv(F.pad(x, (lo, hi))))


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(1, 3), f=st.integers(1, 3), h=st.integers(3, 7), w=st.integers(3, 7),
    kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2), sw=st.integers(1, 2),
    dh=st.integers(1, 2), padding=st.sampled_from(["valid", "same", 0, 1]), bias=st.booleans(),
)
def test_matches_keras_style_loop_forward_and_gradients(c, f, h, w, kh, kw, sh, sw, dh, padding, bias):
    k, s, d = (kh, kw), (sh, sw), (dh, 1)
    pads = pads_for((h, w), k, s, d, padding)
    if any(size + lo + hi < dd * (kk - 1) + 1 for size, (lo, hi), kk, dd in zip((h, w), pads, k, d)):
        return  # an empty output: covered by the exception tests
    lc = LocallyConnected2d(c, f, k, (h, w), s, padding, d, bias=bias, dtype=torch.float64)
    x = torch.randn(2, c, h, w, dtype=torch.float64, requires_grad=True)
    keras = {name: t.clone().requires_grad_() for name, t in lc.keras_weights().items()}
    expected = keras_loop_2d(x, keras["kernel"], keras.get("bias"), k, s, d, pads)
    out = lc(x)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, lc.weight, *([lc.bias] if bias else [])], g)
    ref = torch.autograd.grad(expected, [x, keras["kernel"], *([keras["bias"]] if bias else [])], g)
    torch.testing.assert_close(grads[0], ref[0])
    torch.testing.assert_close(grads[1], ref[1])  # torch weight == Keras kernel layout
    if bias:
        torch.testing.assert_close(grads[2], ref[2].permute(2, 0, 1))


@pytest.mark.parametrize("padding", ["valid", "same", 2])
def test_1d_matches_keras_style_loop(padding):
    lc = LocallyConnected1d(3, 4, 3, input_size=10, stride=2, padding=padding, dilation=2, dtype=torch.float64)
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    kw = lc.keras_weights()
    pads = pads_for((10,), (3,), (2,), (2,), padding)
    torch.testing.assert_close(lc(x), keras_loop_1d(x, kw["kernel"], kw["bias"], 3, 2, 2, pads))


def test_patch_order_is_kh_kw_in_by_hand():
    # One position (a 2×2 window over 2 channels), one filter picking out a single kernel entry at a time:
    # entry k of the patch must be x[c, a, b] with k = (a·kw + b)·C + c.
    x = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    lc = LocallyConnected2d(2, 1, 2, input_size=2, bias=False)
    for a in range(2):
        for b in range(2):
            for c in range(2):
                with torch.no_grad():
                    lc.weight.zero_()
                    lc.weight[0, (a * 2 + b) * 2 + c, 0] = 1.0
                assert lc(x).item() == x[0, c, a, b].item()


@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_gradients_when_only_one_argument_requires_grad(which):
    lc = LocallyConnected2d(2, 3, 3, input_size=(5, 6), stride=(2, 1), padding="same", dtype=torch.float64)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=which == "input")
    lc.weight.requires_grad_(which == "weight")
    lc.bias.requires_grad_(which == "bias")
    kw = {k: v.clone().requires_grad_() for k, v in lc.keras_weights().items()}
    x_ref = x.detach().clone().requires_grad_()
    pads = pads_for((5, 6), (3, 3), (2, 1), (1, 1), "same")
    target = {"input": (x, x_ref), "weight": (lc.weight, kw["kernel"]), "bias": (lc.bias, kw["bias"])}[which]
    (got,) = torch.autograd.grad(lc(x).square().sum(), target[0])
    ref = keras_loop_2d(x_ref, kw["kernel"], kw["bias"], (3, 3), (2, 1), (1, 1), pads)
    (want,) = torch.autograd.grad(ref.square().sum(), target[1])
    torch.testing.assert_close(got, want if which != "bias" else want.permute(2, 0, 1))


def test_gradcheck_float64():
    lc = LocallyConnected2d(2, 3, (2, 3), input_size=(5, 6), stride=(1, 2), padding="same", dilation=(2, 1),
                            dtype=torch.float64)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: locally_connected2d(x, w, b, kernel_size=(2, 3), stride=(1, 2), padding="same",
                                            dilation=(2, 1)),
        (x, lc.weight, lc.bias),
    )
    lc1 = LocallyConnected1d(2, 2, 3, input_size=7, stride=2, padding=1, dtype=torch.float64)
    x1 = torch.randn(2, 2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: locally_connected1d(x, w, b, kernel_size=3, stride=2, padding=1),
        (x1, lc1.weight, lc1.bias),
    )


def test_many_slabs_equal_one_slab(monkeypatch):
    # A large batch splits the positions into several slabs of rows; the answer must not change.
    import cnnkit.nn._lc_torch as torch_path

    lc = LocallyConnected2d(3, 2, 3, input_size=(9, 7), stride=(2, 1), dtype=torch.float64)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    out = lc(x)
    grads = torch.autograd.grad(out.square().sum(), [x, lc.weight])
    monkeypatch.setattr(torch_path, "SLAB_BYTES", 1)  # one row per slab
    out1 = lc(x)
    grads1 = torch.autograd.grad(out1.square().sum(), [x, lc.weight])
    torch.testing.assert_close(out, out1)
    for a, b in zip(grads, grads1):
        torch.testing.assert_close(a, b)


# --- the C kernel (float32 on CPU) against the same references ----------------------------------------

_TORCH_FUNCTIONS = ("forward", "grad_weight", "grad_input")  # of cnnkit.nn._lc_torch


@contextlib.contextmanager
def torch_path_refused():
    """Inside, the op's pure-torch functions raise: whatever runs is the C kernel."""
    import cnnkit.nn._lc_torch as module

    saved = {name: getattr(module, name) for name in _TORCH_FUNCTIONS}

    def refuse(*args, **kwargs):
        raise AssertionError("the pure-torch path ran where the C kernel was expected")

    for name in _TORCH_FUNCTIONS:
        setattr(module, name, refuse)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


@pytest.fixture(scope="module")
def native():
    """The C bridge's module, or a skip naming why the kernel could not be built (CI builds it: gcc is there)."""
    import cnnkit._native as builder
    import cnnkit.nn._lc_native as module

    if builder.load("nn.locally_connected") is None:
        pytest.skip(f"C kernel unavailable: {builder.status('nn.locally_connected')}")
    return module


def float32_copy(lc):
    """The same layer in float32 (the C kernel's dtype), weights rounded once."""
    lc32 = type(lc)(lc.in_channels, lc.out_channels, lc.kernel_size, lc.input_size, lc.stride, lc.padding,
                    lc.dilation, bias=lc.bias is not None)
    lc32.load_state_dict({k: v.float() for k, v in lc.state_dict().items()})
    return lc32


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 21), c=st.integers(1, 5), f=st.integers(1, 70), h=st.integers(3, 9), w=st.integers(3, 9),
    kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2), sw=st.integers(1, 2),
    dh=st.integers(1, 2), padding=st.sampled_from(["valid", "same", 1]), bias=st.booleans(),
)
def test_native_matches_keras_style_loop(native, n, c, f, h, w, kh, kw, sh, sw, dh, padding, bias):
    # Batches that are not whole tiles (8/4/2/1 samples) or whole vectors (16), filter counts that leave
    # a partial vector or a second block of 64: the C kernel in float32 against the float64 loop.
    k, s, d = (kh, kw), (sh, sw), (dh, 1)
    pads = pads_for((h, w), k, s, d, padding)
    if any(size + lo + hi < dd * (kk - 1) + 1 for size, (lo, hi), kk, dd in zip((h, w), pads, k, d)):
        return
    lc = float32_copy(LocallyConnected2d(c, f, k, (h, w), s, padding, d, bias=bias, dtype=torch.float64))
    x = torch.randn(n, c, h, w, requires_grad=True)
    with torch_path_refused():
        out = lc(x)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, [x, lc.weight, *([lc.bias] if bias else [])], g)
    keras = {name: t.double().requires_grad_() for name, t in lc.keras_weights().items()}
    x64 = x.detach().double().requires_grad_()
    expected = keras_loop_2d(x64, keras["kernel"], keras.get("bias"), k, s, d, pads)
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.double(), expected, **tol)
    ref = torch.autograd.grad(expected, [x64, keras["kernel"], *([keras["bias"]] if bias else [])], g.double())
    torch.testing.assert_close(grads[0].double(), ref[0], **tol)
    torch.testing.assert_close(grads[1].double(), ref[1], **tol)
    if bias:
        torch.testing.assert_close(grads[2].double(), ref[2].permute(2, 0, 1), **tol)


@pytest.mark.parametrize("which", ["input", "weight", "bias"])
def test_native_gradients_when_only_one_argument_requires_grad(native, which):
    lc = LocallyConnected2d(3, 17, 3, input_size=(7, 6), stride=(2, 1), padding="same")
    x = torch.randn(5, 3, 7, 6, requires_grad=which == "input")
    lc.weight.requires_grad_(which == "weight")
    lc.bias.requires_grad_(which == "bias")
    target = {"input": x, "weight": lc.weight, "bias": lc.bias}[which]
    with torch_path_refused():
        (got,) = torch.autograd.grad(lc(x).square().sum(), target)
    native.use_native = False
    try:
        (want,) = torch.autograd.grad(lc(x).square().sum(), target)
    finally:
        native.use_native = True
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("input_shape", "kernel_size", "stride", "dilation", "padding"),
    [((19, 3, 23), 4, 3, 1, "same"), ((6, 2, 11), 3, 1, 3, 2), ((3, 2, 5, 6, 7), (2, 3, 2), (1, 2, 1), 1, "same"),
     ((17, 1, 4, 5, 3), 2, 1, (1, 2, 1), "valid")],
)
def test_native_1d_and_3d_equal_the_torch_path_in_float64(native, native_equals_float64, input_shape, kernel_size,
                                                          stride, dilation, padding):
    # The torch path (float64) is the reference here: it is itself checked against the loops above and,
    # in 3-D, against Conv3d below.
    torch.manual_seed(0)
    native_equals_float64(input_shape, kernel_size, stride, padding, dilation)


def test_native_shared_weights_equal_conv3d(native):
    conv = nn.Conv3d(2, 18, (2, 3, 2), stride=(1, 2, 1), padding=1)
    x = torch.randn(3, 2, 5, 6, 4)
    expected = conv(x)
    kernel = conv.weight.detach().permute(2, 3, 4, 1, 0).reshape(-1, 18)
    positions = math.prod(expected.shape[2:])
    weight = kernel.expand(positions, *kernel.shape).contiguous().requires_grad_()
    bias = conv.bias.detach().view(18, 1, 1, 1).expand(18, *expected.shape[2:])
    with torch_path_refused():
        out = cnn.locally_connected_nd(x, weight, bias, kernel_size=(2, 3, 2), stride=(1, 2, 1), padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_native_many_row_bands_equal_one_thread(native):
    # The input gradient runs bands of output rows in two phases so that no two threads add to the same
    # input; with a tall output, a big dilated kernel and all threads the bands are narrow. One thread
    # (one band at a time) must give the same gradients.
    lc = LocallyConnected2d(2, 16, 5, input_size=(40, 6), dilation=(3, 1), padding="same")
    x = torch.randn(18, 2, 40, 6, requires_grad=True)
    grads = torch.autograd.grad(lc(x).square().sum(), [x, lc.weight])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grads1 = torch.autograd.grad(lc(x).square().sum(), [x, lc.weight])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(grads, grads1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_the_switch_use_the_torch_path(native):
    lc = LocallyConnected2d(2, 3, 3, input_size=5)
    x = torch.randn(2, 2, 5, 5)
    with torch_path_refused():
        lc(x)
        with pytest.raises(AssertionError, match="pure-torch path ran"):
            lc.double()(x.double())
        native.use_native = False
        try:
            with pytest.raises(AssertionError, match="pure-torch path ran"):
                lc.float()(x)
        finally:
            native.use_native = True


# --- module plumbing ----------------------------------------------------------------------------------


def test_module_equals_functional():
    lc = LocallyConnected2d(3, 4, 3, input_size=8, stride=2, padding="same")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(
        lc(x), locally_connected2d(x, lc.weight, lc.bias, kernel_size=3, stride=2, padding="same")
    )


def test_keras_round_trip_and_list_form():
    src = LocallyConnected2d(3, 4, 3, input_size=(6, 5), padding="same")
    dst = LocallyConnected2d(3, 4, 3, input_size=(6, 5), padding="same")
    arrays = src.keras_weights()
    assert list(arrays) == ["kernel", "bias"]  # get_weights() order
    assert tuple(arrays["bias"].shape) == (6, 5, 4)
    torch.testing.assert_close(arrays["bias"], src.bias.detach().permute(1, 2, 0))
    dst.load_keras_weights({k: v.numpy() for k, v in arrays.items()})
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(dst(x), src(x))
    other = LocallyConnected2d(3, 4, 3, input_size=(6, 5), padding="same")
    other.load_keras_weights(list(arrays.values()))
    torch.testing.assert_close(other(x), src(x))
    # The registered layout is what cnnkit.keras sees too.
    torch.testing.assert_close(to_keras(src)["kernel"], arrays["kernel"])
    assert set(from_keras(src, arrays)) == {"weight", "bias"}


def test_keras_weights_are_copies():
    lc = LocallyConnected2d(1, 1, 1, input_size=2)
    lc.keras_weights()["kernel"].add_(1.0)
    assert not torch.equal(lc.keras_weights()["kernel"], lc.weight.detach() + 1)


def test_load_keras_weights_rejects_wrong_shapes():
    lc = LocallyConnected2d(4, 4, 3, input_size=6)
    with pytest.raises(ShapeError, match=r"'kernel'.*must have shape \(16, 36, 4\).*\(16, 4, 36\)"):
        lc.load_keras_weights({"kernel": torch.zeros(16, 4, 36), "bias": torch.zeros(4, 4, 4)})
    with pytest.raises(ShapeError, match=r"expects 2 Keras arrays"):
        lc.load_keras_weights([torch.zeros(16, 36, 4)])


def test_state_dict_round_trip():
    a = LocallyConnected1d(2, 3, 2, input_size=5, bias=False)
    b = LocallyConnected1d(2, 3, 2, input_size=5, bias=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 2, 5)
    torch.testing.assert_close(a(x), b(x))
    assert b.bias is None and list(b.keras_weights()) == ["kernel"]


def test_extra_repr_reads_like_the_constructor():
    assert repr(LocallyConnected2d(4, 4, 3, input_size=(6, 6))) == (
        "LocallyConnected2d(4, 4, kernel_size=(3, 3), input_size=(6, 6), stride=(1, 1))"
    )
    lc = LocallyConnected1d(2, 3, 2, input_size=9, stride=2, padding="same", dilation=2, bias=False,
                            init="keras")
    assert repr(lc) == ("LocallyConnected1d(2, 3, kernel_size=(2,), input_size=(9,), stride=(2,), "
                        "padding='same', dilation=(2,), bias=False, init='keras')")
    assert (lc.in_channels, lc.out_channels, lc.kernel_size, lc.stride, lc.padding, lc.dilation,
            lc.input_size, lc.output_size) == (2, 3, (2,), (2,), "same", (2,), (9,), (5,))


def test_initialisations():
    torch_style = LocallyConnected2d(4, 4, 3, input_size=6)
    bound = 1 / math.sqrt(3 * 3 * 4)
    assert torch_style.weight.abs().max() <= bound and torch_style.bias.abs().max() <= bound
    assert torch_style.weight.abs().max() > 0.9 * bound  # 2304 draws reach close to the bound
    keras_style = LocallyConnected2d(4, 4, 3, input_size=6, init="keras")
    # Keras's glorot_uniform on the (16, 36, 4) kernel: fans (36·16, 4·16) -> √(6/640)
    limit = math.sqrt(6 / (36 * 16 + 4 * 16))
    assert keras_style.weight.abs().max() <= limit and keras_style.weight.abs().max() > 0.9 * limit
    assert torch.count_nonzero(keras_style.bias) == 0
    torch_style.reset_parameters("keras")
    assert torch_style.weight.abs().max() <= limit and torch.count_nonzero(torch_style.bias) == 0


def test_no_weight_copy_in_the_forward_graph():
    # The weight reaches bmm as slices (views) of the parameter: its gradient arrives in its own layout.
    lc = LocallyConnected2d(2, 3, 3, input_size=5)
    lc(torch.randn(4, 2, 5, 5)).sum().backward()
    assert lc.weight.grad.shape == lc.weight.shape and lc.weight.grad.is_contiguous()


# --- errors -------------------------------------------------------------------------------------------


def test_input_size_mismatch_names_both_sizes():
    lc = LocallyConnected2d(4, 4, 3, input_size=(6, 6))
    with pytest.raises(ShapeError, match=r"input_size=\(6, 6\).*Received input of shape \(2, 4, 7, 6\)"):
        lc(torch.zeros(2, 4, 7, 6))
    with pytest.raises(ShapeError, match=r"C = in_channels = 4\. Received input of shape \(2, 3, 6, 6\)"):
        lc(torch.zeros(2, 3, 6, 6))
    with pytest.raises(ShapeError, match=r"expects input \(N, C, H, W\)"):
        lc(torch.zeros(4, 6, 6))


def test_constructor_errors():
    with pytest.raises(ShapeError, match=r"Unknown padding 'smae'. Expected one of \('valid', 'same'\)"):
        LocallyConnected2d(1, 1, 3, input_size=6, padding="smae")
    with pytest.raises(ShapeError, match=r"Convolution output would be empty"):
        LocallyConnected2d(1, 1, 7, input_size=6)
    with pytest.raises(ShapeError, match=r"out_channels must be a positive integer. Received out_channels=0"):
        LocallyConnected2d(1, 0, 3, input_size=6)
    with pytest.raises(ShapeError, match=r"input_size must be a tuple of 2 integers"):
        LocallyConnected2d(1, 1, 3, input_size=(6, 6, 6))
    with pytest.raises(ShapeError, match=r"Unknown init 'glorot'"):
        LocallyConnected2d(1, 1, 3, input_size=6, init="glorot")


def test_functional_checks_weight_and_bias_shapes():
    x = torch.zeros(1, 2, 5, 5)
    with pytest.raises(ShapeError, match=r"weight must have shape .* \(9, 18, out_channels\).*\(9, 9, 4\)"):
        locally_connected2d(x, torch.zeros(9, 9, 4), kernel_size=3)
    with pytest.raises(ShapeError, match=r"bias must have shape .* \(4, 3, 3\). Received bias of shape \(4,\)"):
        locally_connected2d(x, torch.zeros(9, 18, 4), torch.zeros(4), kernel_size=3)
    with pytest.raises(ShapeError, match=r"locally_connected1d expects input \(N, C, L\)"):
        locally_connected1d(x, torch.zeros(9, 18, 4), kernel_size=3)


def test_public_names():
    for name in ("LocallyConnected1d", "LocallyConnected2d", "locally_connected_nd", "locally_connected1d",
                 "locally_connected2d"):
        assert name in cnn.__all__ and hasattr(cnn, name)


# --- lazy negation bits, zero-size batches, flags ----------------------------------------------------------


def _reference(x, weight, bias, **kwargs):
    """The pure-torch path in float64 on materialised (bit-free) copies."""
    import cnnkit.nn._lc_native as module

    module.use_native = False
    try:
        return cnn.locally_connected_nd(x.resolve_neg().double(), weight.resolve_neg().double(),
                                        None if bias is None else bias.double(), **kwargs)
    finally:
        module.use_native = True


@pytest.mark.parametrize("which", ["weight", "input", "grad"])
def test_native_honours_the_lazy_negation_bit(native, which):
    """torch._neg_view (what .conj() of a real view and some autograd paths give) flips the sign lazily;
    the C kernel reads raw memory, so the wrapper must resolve it (the output's sign flipped before)."""
    torch.manual_seed(0)
    weight = torch.randn(9, 3 * 3 * 2, 5)
    x = torch.randn(3, 2, 5, 5)
    if which == "weight":
        weight = torch._neg_view(weight)
        assert weight.is_neg() and weight.is_contiguous()
    elif which == "input":
        x = torch._neg_view(x.movedim(1, -1).contiguous()).movedim(-1, 1)  # channels-last: no copy on the way
        assert x.is_neg()
    x.requires_grad_(True)
    weight.requires_grad_(True)
    with torch_path_refused():
        out = cnn.locally_connected_nd(x, weight, None, kernel_size=3)
        g = torch.randn_like(out)
        if which == "grad":
            g = torch._neg_view(g)
            assert g.is_neg()
        gx, gw = torch.autograd.grad(out, [x, weight], g)
    expected = _reference(x.detach(), weight.detach(), None, kernel_size=3)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    x64 = x.detach().resolve_neg().double().requires_grad_(True)
    w64 = weight.detach().resolve_neg().double().requires_grad_(True)
    ref = torch.autograd.grad(_reference(x64, w64, None, kernel_size=3), [x64, w64], g.resolve_neg().double())
    torch.testing.assert_close((gx.double(), gw.double()), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "torch"])
def test_zero_size_batch_gives_an_empty_output_and_gradients(use_native):
    import cnnkit.nn._lc_native as module

    lc = LocallyConnected2d(2, 3, 3, input_size=(5, 4), padding="same")
    x = torch.zeros(0, 2, 5, 4, requires_grad=True)
    module.use_native = use_native
    try:
        out = lc(x)  # ZeroDivisionError before
        assert out.shape == (0, 3, 5, 4)
        out.sum().backward()
    finally:
        module.use_native = True
    assert x.grad.shape == x.shape
    assert torch.equal(lc.weight.grad, torch.zeros_like(lc.weight))
    assert torch.equal(lc.bias.grad, torch.zeros_like(lc.bias))


def test_non_bool_bias_is_refused():
    with pytest.raises(ShapeError, match=r"bias must be True or False\. Received bias='no'"):
        LocallyConnected2d(2, 3, 3, input_size=5, bias="no")
