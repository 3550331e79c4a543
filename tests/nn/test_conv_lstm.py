"""ConvLSTM1d/2d against a step-by-step reference written here from the equations, in Keras's weight layout
(channels-last frames, kernel (kh, kw, in, 4F) split into the i, f, c, o gates as Keras's cell does)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import cnnkit
import cnnkit.nn as cnn
from cnnkit import ShapeError
from cnnkit.keras import keras_shapes
from cnnkit.nn import ConvLSTM1d, ConvLSTM2d, conv_lstm_nd

D64 = torch.float64

# --- the independent reference ------------------------------------------------------------------------


def tf_same(size: int, k: int, s: int, d: int) -> tuple[int, int]:
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


def conv_cl(x, kernel, stride, pads, dilation):
    """Channels-last convolution from a Keras kernel (kh, kw, in, out): a sum over kernel offsets."""
    (pt, pb), (pl, pr) = pads
    x = F.pad(x, (0, 0, pl, pr, pt, pb))
    kh, kw = kernel.shape[:2]
    oh = (x.shape[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[2] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = 0
    for a in range(kh):
        for b in range(kw):
            r, c = a * dilation[0], b * dilation[1]
            patch = x[:, r:r + stride[0] * (oh - 1) + 1:stride[0], c:c + stride[1] * (ow - 1) + 1:stride[1]]
            out = out + patch @ kernel[a, b]
    return out


def keras_convlstm(x, kernel, rkernel, bias, *, stride=(1, 1), padding="same", dilation=(1, 1),
                   ract=torch.sigmoid, act=torch.tanh, mask=None, reverse=False, state=None):
    """Keras's ConvLSTM2D cell, one step at a time. x (N, T, C, H, W); returns torch-layout tensors."""
    n, steps, _, h, w = x.shape
    k = kernel.shape[:2]
    f_ = rkernel.shape[-1] // 4
    pads = pads_for((h, w), k, stride, dilation, padding)
    oh = (h + sum(pads[0]) - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w + sum(pads[1]) - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    rpads = pads_for((oh, ow), rkernel.shape[:2], (1, 1), (1, 1), "same")
    kernels = kernel.split(f_, -1)  # i, f, c, o
    rkernels = rkernel.split(f_, -1)
    biases = bias.split(f_) if bias is not None else [0] * 4
    x_cl = x.permute(0, 1, 3, 4, 2)
    if state is None:
        hs = cs = torch.zeros(n, oh, ow, f_, dtype=x.dtype)
    else:
        hs, cs = (s.permute(0, 2, 3, 1) for s in state)
    outputs = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        xt = x_cl[:, t]
        if mask is not None and mask.dim() == 4:
            keep = mask[:, t, :, :, None]
            if (oh, ow) == (h, w):
                xt = xt * keep
        elif mask is not None:
            keep = mask[:, t].view(n, 1, 1, 1)
        z = [conv_cl(xt, kernels[g], stride, pads, dilation) + biases[g]
             + conv_cl(hs, rkernels[g], (1, 1), rpads, (1, 1)) for g in range(4)]
        i, f, o = ract(z[0]), ract(z[1]), ract(z[3])
        c_new = f * cs + i * act(z[2])
        h_new = o * act(c_new)
        if mask is None:
            hs, cs = h_new, c_new
        else:
            hs, cs = torch.where(keep, h_new, hs), torch.where(keep, c_new, cs)
        outputs[t] = hs
    return torch.stack(outputs, 1).permute(0, 1, 4, 2, 3), hs.permute(0, 3, 1, 2), cs.permute(0, 3, 1, 2)


RACT = {"sigmoid": torch.sigmoid, "hard_sigmoid": lambda t: (t / 6 + 0.5).clamp(0, 1),
        "hard_sigmoid_keras2": lambda t: (0.2 * t + 0.5).clamp(0, 1)}


def ref_of(module, x, suffix="", prefix="", **kwargs):
    """The reference run with ``module``'s weights, read through keras_weights() (checks the layout)."""
    kw = module.keras_weights()
    return keras_convlstm(x, kw[prefix + "kernel"], kw[prefix + "recurrent_kernel"], kw.get(prefix + "bias"),
                          stride=module.stride, padding=module.padding, dilation=module.dilation,
                          ract=RACT[module.recurrent_activation], **kwargs)


def rand_module(*args, **kwargs):
    m = ConvLSTM2d(*args, dtype=D64, **kwargs)
    with torch.no_grad():  # larger weights than the default init, so that every gate matters
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
    return m


# --- numbers against the reference --------------------------------------------------------------------

CASES = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=(3, 1), padding="valid"),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=2),  # even kernel with "same": TensorFlow's rule, the odd zero at the end
    dict(kernel_size=(2, 3), stride=(2, 1), padding="same", recurrent_activation="hard_sigmoid"),
    dict(kernel_size=3, bias=False, recurrent_activation="hard_sigmoid_keras2"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_keras_equations(case):
    m = rand_module(2, 3, **case)
    x = torch.randn(2, 4, 2, 7, 6, dtype=D64)
    out, (h, c) = m(x)
    ref_out, ref_h, ref_c = ref_of(m, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)


def test_initial_state_is_used():
    m = rand_module(2, 3, 3)
    x = torch.randn(2, 3, 2, 5, 5, dtype=D64)
    h0, c0 = torch.randn(1, 2, 3, 5, 5, dtype=D64), torch.randn(1, 2, 3, 5, 5, dtype=D64)
    out, (h, c) = m(x, (h0, c0))
    ref_out, ref_h, ref_c = ref_of(m, x, state=(h0[0], c0[0]))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)


def test_1d_equals_2d_reference_with_a_unit_height():
    m = ConvLSTM1d(2, 3, 3, stride=2, padding="same", dtype=D64)
    x = torch.randn(2, 4, 2, 9, dtype=D64)
    out, (h, c) = m(x)
    kw = m.keras_weights()
    assert tuple(kw["kernel"].shape) == (3, 2, 12) and tuple(kw["recurrent_kernel"].shape) == (3, 3, 12)
    ref_out, ref_h, ref_c = keras_convlstm(x[:, :, :, None], kw["kernel"][None], kw["recurrent_kernel"][None],
                                           kw["bias"], stride=(1, 2))
    torch.testing.assert_close(out, ref_out[:, :, :, 0])
    torch.testing.assert_close(h[0], ref_h[:, :, 0])
    torch.testing.assert_close(c[0], ref_c[:, :, 0])


def test_constant_weights_give_hand_computed_values():
    # 1 → 1 channel, 3×3 kernels of ones, no recurrence, no bias, x = 1 on a 3×3 frame, "same" padding:
    # every gate sees s = the number of in-bounds neighbours (4 at a corner, 6 at an edge, 9 in the middle).
    m = ConvLSTM2d(1, 1, 3, dtype=D64)
    with torch.no_grad():
        m.weight_ih_l0.fill_(1.0)
        m.weight_hh_l0.zero_()
        m.bias_l0.zero_()
    out, (h, c) = m(torch.ones(1, 2, 1, 3, 3, dtype=D64))
    assert torch.equal(h[0], out[:, -1])

    def sig(v):
        return 1 / (1 + math.exp(-v))

    for (y, x_), s in {(0, 0): 4, (0, 1): 6, (1, 1): 9}.items():
        c1 = sig(s) * math.tanh(s)  # f·0 + i·tanh(s)
        h1 = sig(s) * math.tanh(c1)
        c2 = sig(s) * c1 + sig(s) * math.tanh(s)
        h2 = sig(s) * math.tanh(c2)
        assert out[0, 0, 0, y, x_].item() == pytest.approx(h1, abs=1e-12)
        assert out[0, 1, 0, y, x_].item() == pytest.approx(h2, abs=1e-12)
        assert c[0, 0, 0, y, x_].item() == pytest.approx(c2, abs=1e-12)


def test_recurrent_kernel_with_hand_values():
    # 1×1 kernels, 1 channel: W_x = (1, 0, 1, 1) for (i, f, c, o), W_h = 0.5 on every gate, bias 0.
    m = ConvLSTM2d(1, 1, 1, dtype=D64)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D64).view(4, 1, 1, 1))
        m.weight_hh_l0.fill_(0.5)
        m.bias_l0.zero_()
    out, _ = m(torch.full((1, 2, 1, 1, 1), 2.0, dtype=D64))

    def sig(v):
        return 1 / (1 + math.exp(-v))

    c1 = sig(2) * math.tanh(2)
    h1 = sig(2) * math.tanh(c1)
    c2 = sig(0.5 * h1) * c1 + sig(2 + 0.5 * h1) * math.tanh(2 + 0.5 * h1)
    h2 = sig(2 + 0.5 * h1) * math.tanh(c2)
    assert out.flatten().tolist() == pytest.approx([h1, h2], abs=1e-12)


def test_hard_sigmoid_definitions():
    m2 = ConvLSTM2d(1, 1, 1, recurrent_activation="hard_sigmoid_keras2", dtype=D64)
    m3 = ConvLSTM2d(1, 1, 1, recurrent_activation="hard_sigmoid", dtype=D64)
    for m in (m2, m3):
        with torch.no_grad():
            m.weight_ih_l0.fill_(1.0)
            m.weight_hh_l0.zero_()
            m.bias_l0.zero_()
    x = torch.full((1, 1, 1, 1, 1), 1.5, dtype=D64)
    g2, g3 = 0.2 * 1.5 + 0.5, 1.5 / 6 + 0.5  # Keras 2: clip(0.2x + 0.5); Keras 3: clip(x/6 + 0.5)
    assert m2(x)[0].item() == pytest.approx(g2 * math.tanh(g2 * math.tanh(1.5)))
    assert m3(x)[0].item() == pytest.approx(g3 * math.tanh(g3 * math.tanh(1.5)))


# --- masks --------------------------------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_step_mask_equals_each_sample_alone_on_its_prefix(lengths):
    m = rand_module(2, 3, 3)
    steps = 5
    x = torch.randn(len(lengths), steps, 2, 4, 4, dtype=D64)
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    out, (h, c) = m(x, mask=mask)
    for n, length in enumerate(lengths):
        alone, (h1, c1) = m(x[n:n + 1, :length])
        torch.testing.assert_close(out[n:n + 1, :length], alone)
        torch.testing.assert_close(h[:, n], h1[:, 0])
        torch.testing.assert_close(c[:, n], c1[:, 0])
        for t in range(length, steps):  # a skipped step repeats the kept h
            assert torch.equal(out[n, t], out[n, length - 1])


def test_step_mask_with_holes_matches_reference():
    m = rand_module(2, 3, 3)
    x = torch.randn(2, 5, 2, 4, 4, dtype=D64)
    mask = torch.tensor([[True, False, True, True, False], [False, True, False, True, True]])
    out, (h, c) = m(x, mask=mask)
    ref_out, ref_h, ref_c = ref_of(m, x, mask=mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)
    # Skipping the masked steps is the same as deleting them.
    kept, _ = m(x[0:1, mask[0]])
    torch.testing.assert_close(h[0, 0], kept[0, -1])


def test_pixel_mask_keeps_h_and_c_exactly_where_masked():
    m = rand_module(2, 3, 3)
    x = torch.randn(2, 4, 2, 5, 5, dtype=D64)
    mask = torch.rand(2, 4, 5, 5) > 0.4
    out, (h, c) = m(x, mask=mask)
    _, (h_prev, c_prev) = m(x[:, :3], mask=mask[:, :3])
    hidden = ~mask[:, 3].unsqueeze(1).expand(-1, 3, -1, -1)
    assert torch.equal(h[0][hidden], h_prev[0][hidden])
    assert torch.equal(c[0][hidden], c_prev[0][hidden])
    assert not torch.equal(h[0][~hidden], h_prev[0][~hidden])
    # and every number, including the zeroed input at masked pixels, matches the reference
    ref_out, ref_h, ref_c = ref_of(m, x, mask=mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)


def test_pixel_mask_treats_masked_input_as_zero():
    m = rand_module(2, 3, 3)
    x = torch.randn(1, 3, 2, 4, 4, dtype=D64)
    mask = torch.rand(1, 3, 4, 4) > 0.5
    garbage = x.clone()
    garbage[~mask.unsqueeze(2).expand_as(x)] = 1e6  # what sits under a masked pixel must not matter
    torch.testing.assert_close(m(x, mask=mask)[0], m(garbage, mask=mask)[0])


def test_pixel_mask_on_a_strided_grid():
    m = rand_module(2, 3, 3, stride=2)
    x = torch.randn(2, 3, 2, 6, 6, dtype=D64)
    mask = torch.rand(2, 3, 3, 3) > 0.3
    out, (h, c) = m(x, mask=mask)
    ref_out, ref_h, ref_c = ref_of(m, x, mask=mask)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h[0], ref_h)
    torch.testing.assert_close(c[0], ref_c)


# --- NaN and inf under a mask (a cloud or a missing frame stored as NaN) -------------------------------


def _poisoned(x, invalid, value):
    """``x`` with ``value`` at the ``invalid`` positions (bool, broadcast to x), and ``x`` with zeros there."""
    invalid = invalid.expand_as(x)
    return x.masked_fill(invalid, value), x.masked_fill(invalid, 0.0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["step", "pixel"])
@pytest.mark.parametrize(("kwargs", "layers"), [({}, 1), (dict(kernel_size=3, padding=2, dilation=2), 1),
                                                 ({}, 2)], ids=["fused", "split", "two_layers_bi"])
def test_nan_under_the_mask_equals_zeros_there(value, kind, kwargs, layers):
    """Outputs, states and every gradient equal those of the run with zeros under the mask (and are finite)."""
    torch.manual_seed(0)
    kernel = kwargs.pop("kernel_size", 3)
    m = rand_module(2, 3, kernel, num_layers=layers, bidirectional=layers > 1, **kwargs)
    x = torch.randn(2, 4, 2, 6, 6, dtype=D64)
    if kind == "step":
        mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
        invalid = ~mask[:, :, None, None, None]
    else:
        mask = torch.rand(2, 4, 6, 6) > 0.3
        invalid = ~mask[:, :, None]
    bad, clean = _poisoned(x, invalid, value)
    results = []
    for data in (bad, clean):
        data = data.clone().requires_grad_(True)
        m.zero_grad(set_to_none=True)
        out, (h, c) = m(data, mask=mask)
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append((out, h, c, data.grad, [p.grad for p in m.parameters()]))
    (out, h, c, gx, gp), (out0, h0, c0, gx0, gp0) = results
    assert torch.isfinite(out).all() and torch.isfinite(h).all() and torch.isfinite(c).all()
    torch.testing.assert_close(out, out0, rtol=0, atol=0)
    torch.testing.assert_close((h, c), (h0, c0), rtol=0, atol=0)
    assert torch.isfinite(gx).all() and all(torch.isfinite(g).all() for g in gp)
    torch.testing.assert_close(gx, gx0, rtol=0, atol=0)
    torch.testing.assert_close(gp, gp0, rtol=0, atol=0)
    assert (gx[invalid.expand_as(gx)] == 0).all()  # nothing flows back into what is not data


def test_nan_under_a_strided_pixel_mask_keeps_the_states_exact():
    """On a strided grid the input is read as given, but a NaN that only reaches masked state pixels is
    not kept: those pixels keep their old h and c (selected, not lerped), so the outputs stay finite."""
    m = rand_module(1, 2, 1, stride=2)  # 1×1 kernel, stride 2: input pixel (2y, 2x) feeds state pixel (y, x)
    x = torch.randn(1, 3, 1, 4, 4, dtype=D64)
    mask = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    mask[0, 1, 0, 0] = False
    bad, clean = x.clone(), x.clone()
    bad[0, 1, 0, 0, 0], clean[0, 1, 0, 0, 0] = math.nan, 0.0
    out, (h, c) = m(bad, mask=mask)
    out0, (h0, c0) = m(clean, mask=mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close((out, h, c), (out0, h0, c0), rtol=0, atol=0)
    ref_out, _, _ = ref_of(m, clean, mask=mask)
    torch.testing.assert_close(out0[0], ref_out[0])


def test_nan_at_valid_pixels_propagates():
    """The documented policy: NaN in valid data is not hidden by the layer."""
    m = rand_module(2, 3, 3)
    x = torch.randn(1, 2, 2, 5, 5, dtype=D64)
    x[0, 0, 0, 2, 2] = math.nan
    out, _ = m(x, mask=torch.ones(1, 2, 5, 5, dtype=torch.bool))
    assert torch.isnan(out[0, 0, :, 2, 2]).all()


# --- bidirectional and stacked ------------------------------------------------------------------------


def split_directions(bi):
    fwd = ConvLSTM2d(bi.in_channels, bi.hidden_channels, bi.kernel_size, dtype=D64)
    bwd = ConvLSTM2d(bi.in_channels, bi.hidden_channels, bi.kernel_size, dtype=D64)
    kw = bi.keras_weights()
    fwd.load_keras_weights({k.split("/")[1]: v for k, v in kw.items() if k.startswith("layer0_forward/")})
    bwd.load_keras_weights({k.split("/")[1]: v for k, v in kw.items() if k.startswith("layer0_backward/")})
    return fwd, bwd


def test_bidirectional_equals_forward_plus_pass_on_reversed_sequence():
    bi = rand_module(2, 3, 3, bidirectional=True)
    fwd, bwd = split_directions(bi)
    x = torch.randn(2, 4, 2, 5, 5, dtype=D64)
    out, (h, c) = bi(x)
    out_f, (h_f, c_f) = fwd(x)
    out_b, (h_b, c_b) = bwd(x.flip(1))
    torch.testing.assert_close(out, torch.cat([out_f, out_b.flip(1)], 2))
    torch.testing.assert_close(h, torch.cat([h_f, h_b]))
    torch.testing.assert_close(c, torch.cat([c_f, c_b]))


def test_bidirectional_with_step_mask_reverses_each_valid_prefix():
    bi = rand_module(2, 3, 3, bidirectional=True)
    fwd, bwd = split_directions(bi)
    lengths = [4, 2, 3]
    x = torch.randn(3, 4, 2, 4, 4, dtype=D64)
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    out, (h, c) = bi(x, mask=mask)
    for n, length in enumerate(lengths):
        prefix = x[n:n + 1, :length]
        out_b, (h_b, c_b) = bwd(prefix.flip(1))  # the valid steps, last first
        torch.testing.assert_close(out[n:n + 1, :length, 3:], out_b.flip(1))
        torch.testing.assert_close(h[1, n], h_b[0, 0])
        torch.testing.assert_close(c[1, n], c_b[0, 0])
        assert torch.count_nonzero(out[n, length:, 3:]) == 0  # zero initial state kept through the padding
        torch.testing.assert_close(h[0, n], fwd(prefix)[1][0][0, 0])


def test_two_layers_equal_two_stacked_modules():
    deep = rand_module(2, 3, 3, num_layers=2, stride=2)
    first = ConvLSTM2d(2, 3, 3, stride=2, dtype=D64)
    second = ConvLSTM2d(3, 3, 3, dtype=D64)
    kw = deep.keras_weights()
    first.load_keras_weights({k.split("/")[1]: v for k, v in kw.items() if k.startswith("layer0_")})
    second.load_keras_weights({k.split("/")[1]: v for k, v in kw.items() if k.startswith("layer1_")})
    x = torch.randn(2, 3, 2, 7, 7, dtype=D64)
    out, (h, c) = deep(x)
    mid, (h0, c0) = first(x)
    top, (h1, c1) = second(mid)
    torch.testing.assert_close(out, top)
    torch.testing.assert_close(h, torch.cat([h0, h1]))
    torch.testing.assert_close(c, torch.cat([c0, c1]))
    assert out.shape == (2, 3, 3, 4, 4)


def test_dropout_only_between_layers_and_only_in_training():
    m = rand_module(2, 3, 3, num_layers=2, dropout=1.0)
    x = torch.randn(1, 2, 2, 4, 4, dtype=D64)
    m.eval()
    assert not torch.equal(m(x)[0], m(torch.zeros_like(x))[0])
    m.train()
    top = ConvLSTM2d(3, 3, 3, dtype=D64)
    top.load_keras_weights({k.split("/")[1]: v for k, v in m.keras_weights().items() if k.startswith("layer1_")})
    torch.testing.assert_close(m(x)[0], top(torch.zeros(1, 2, 3, 4, 4, dtype=D64))[0])


# --- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "size"), [
    (dict(stride=2), (5, 4)),                  # ceil(9/2), ceil(8/2)
    (dict(padding="valid"), (7, 6)),           # 9 − 3 + 1, 8 − 3 + 1
    (dict(stride=2, padding="valid"), (4, 3)),  # floor((9 − 3)/2) + 1, floor((8 − 3)/2) + 1
    (dict(padding=1, dilation=2), (7, 6)),     # 9 + 2 − 4
])
def test_output_sizes(kwargs, size):
    m = ConvLSTM2d(2, 3, 3, bidirectional=True, num_layers=2, **kwargs)
    out, (h, c) = m(torch.zeros(2, 4, 2, 9, 8))
    assert out.shape == (2, 4, 6, *size)
    assert h.shape == c.shape == (4, 2, 3, *size)
    assert m.state_size((9, 8)) == size
    assert cnnkit.explain(m, (4, 2, 9, 8)).output_shape == (4, 6, *size)


# --- gradients ----------------------------------------------------------------------------------------


def test_gradcheck_float64():
    x = torch.randn(2, 3, 1, 4, 4, dtype=D64, requires_grad=True)
    w_ih = (0.5 * torch.randn(8, 1, 3, 3, dtype=D64)).requires_grad_()
    w_hh = (0.5 * torch.randn(8, 2, 3, 3, dtype=D64)).requires_grad_()
    b = torch.randn(8, dtype=D64, requires_grad=True)
    step_mask = torch.tensor([[True, True, False], [True, False, True]])
    pixel_mask = torch.rand(2, 3, 4, 4) > 0.3
    for mask in (step_mask, pixel_mask):
        assert torch.autograd.gradcheck(
            lambda *a, mask=mask: conv_lstm_nd(*a, mask=mask, recurrent_activation="sigmoid")[0],
            (x, w_ih, w_hh, b),
        )
    bi = ConvLSTM1d(1, 2, 2, bidirectional=True, dtype=D64)
    x1 = torch.randn(2, 3, 1, 5, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bi(x, mask=step_mask)[0], (x1,))


@pytest.mark.parametrize("recurrent_activation", ["sigmoid", "hard_sigmoid", "hard_sigmoid_keras2"])
@pytest.mark.parametrize("kind", ["step", "pixel"])
@pytest.mark.parametrize("stride", [1, 2], ids=["fused", "strided"])
def test_masked_gradients_match_reference(recurrent_activation, kind, stride):
    # Gradients of outputs and last states with respect to everything (input, weights, bias, h0, c0)
    # against autograd through the reference, whose masked steps select with torch.where.
    torch.manual_seed(0)
    size = -(-6 // stride)
    x = torch.randn(2, 4, 2, 6, 6, dtype=D64, requires_grad=True)
    w_ih = (0.6 * torch.randn(12, 2, 3, 3, dtype=D64)).requires_grad_()
    w_hh = (0.6 * torch.randn(12, 3, 3, 3, dtype=D64)).requires_grad_()
    b = torch.randn(12, dtype=D64, requires_grad=True)
    h0 = torch.randn(2, 3, size, size, dtype=D64, requires_grad=True)
    c0 = torch.randn(2, 3, size, size, dtype=D64, requires_grad=True)
    if kind == "step":
        mask = torch.tensor([[True, False, True, False], [False, True, True, True]])
    else:
        mask = torch.rand(2, 4, size, size) > 0.4
    weights = [torch.randn(2, 4, 3, size, size, dtype=D64), torch.randn(2, 3, size, size, dtype=D64),
               torch.randn(2, 3, size, size, dtype=D64)]
    leaves = (x, w_ih, w_hh, b, h0, c0)

    out, (h, c) = conv_lstm_nd(x, w_ih, w_hh, b, (h0, c0), mask, stride=stride,
                               recurrent_activation=recurrent_activation)
    grads = torch.autograd.grad(sum((t * w).sum() for t, w in zip((out, h, c), weights)), leaves)
    ref = keras_convlstm(x, w_ih.movedim((0, 1), (-1, -2)), w_hh.movedim((0, 1), (-1, -2)), b,
                         stride=(stride, stride), ract=RACT[recurrent_activation], mask=mask, state=(h0, c0))
    ref_grads = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ref, weights)), leaves)
    for got, expected in zip(grads, ref_grads):
        torch.testing.assert_close(got, expected)
    if kind == "pixel" and stride == 1:  # the input under a masked pixel is zero: no gradient reaches it
        assert torch.count_nonzero(grads[0][~mask.unsqueeze(2).expand_as(x)]) == 0


# --- Keras layout, init, plumbing ---------------------------------------------------------------------


def test_keras_layout_shapes_and_round_trip():
    m = ConvLSTM2d(8, 16, 3)
    assert keras_shapes(m) == {"kernel": (3, 3, 8, 64), "recurrent_kernel": (3, 3, 16, 64), "bias": (64,)}
    kw = m.keras_weights()
    # gate order i, f, c, o on the last Keras axis == the first torch axis
    torch.testing.assert_close(kw["kernel"][1, 2, 5, 16:32], m.weight_ih_l0.detach()[16:32, 5, 1, 2])
    other = ConvLSTM2d(8, 16, 3)
    other.load_keras_weights([v.numpy() for v in kw.values()])
    x = torch.randn(1, 2, 8, 6, 6)
    torch.testing.assert_close(other(x)[0], m(x)[0])


def test_keras_names_for_stacked_bidirectional():
    m = ConvLSTM1d(2, 3, 3, bidirectional=True, num_layers=2)
    shapes = keras_shapes(m)
    assert list(shapes) == [f"layer{layer}_{d}/{w}" for layer in (0, 1) for d in ("forward", "backward")
                            for w in ("kernel", "recurrent_kernel", "bias")]
    assert shapes["layer1_backward/kernel"] == (3, 6, 12)
    other = ConvLSTM1d(2, 3, 3, bidirectional=True, num_layers=2)
    other.load_keras_weights(m.keras_weights())
    x = torch.randn(2, 3, 2, 5)
    torch.testing.assert_close(other(x)[0], m(x)[0])


def test_keras_initialisation():
    m = ConvLSTM2d(2, 4, 3, init="keras")
    bias = m.bias_l0.detach()
    assert torch.equal(bias[4:8], torch.ones(4)) and torch.count_nonzero(torch.cat([bias[:4], bias[8:]])) == 0
    flat = m.keras_weights()["recurrent_kernel"].reshape(3 * 3 * 4, 16)  # Keras's orthogonal flattening
    torch.testing.assert_close(flat.t() @ flat, torch.eye(16), atol=1e-5, rtol=0)
    limit = math.sqrt(6 / (3 * 3 * 2 + 3 * 3 * 16))
    assert m.weight_ih_l0.abs().max() <= limit


def test_module_equals_functional_and_state_dict_round_trip():
    m = ConvLSTM2d(2, 3, 3, stride=2)
    x = torch.randn(2, 3, 2, 6, 6)
    out, (h, c) = m(x)
    f_out, (f_h, f_c) = conv_lstm_nd(x, m.weight_ih_l0, m.weight_hh_l0, m.bias_l0, stride=2)
    torch.testing.assert_close(out, f_out)
    torch.testing.assert_close(h[0], f_h)
    torch.testing.assert_close(c[0], f_c)
    other = ConvLSTM2d(2, 3, 3, stride=2)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other(x)[0], out)


def test_extra_repr_reads_like_the_constructor():
    assert repr(ConvLSTM2d(8, 16, 3)) == "ConvLSTM2d(8, 16, kernel_size=(3, 3))"
    m = ConvLSTM1d(2, 3, 2, stride=2, padding="valid", bidirectional=True, num_layers=2, dropout=0.5,
                   recurrent_activation="hard_sigmoid_keras2")
    assert repr(m) == ("ConvLSTM1d(2, 3, kernel_size=(2,), stride=(2,), padding='valid', bidirectional=True, "
                       "num_layers=2, dropout=0.5, recurrent_activation='hard_sigmoid_keras2')")


def test_explain_parameter_formula_and_layouts():
    e = cnnkit.explain(ConvLSTM2d(8, 16, 3), (10, 8, 32, 32))
    assert e.output_shape == (10, 16, 32, 32)
    assert e.num_params == 4 * 16 * (3 * 3 * (8 + 16)) + 4 * 16 == 13888
    assert e.keras_weights == {"kernel": (3, 3, 8, 64), "recurrent_kernel": (3, 3, 16, 64), "bias": (64,)}
    assert e.weights == {"weight_ih_l0": (64, 8, 3, 3), "weight_hh_l0": (64, 16, 3, 3), "bias_l0": (64,)}
    text = str(e)
    assert "4·16·(3·3·(8 + 16)) + 4·16 = 13,888" in text
    assert "all 10 frames at once" in text and "each of the 10 steps" in text
    assert e.keras_class == "ConvLSTM2D"


# --- errors -------------------------------------------------------------------------------------------


def test_mask_of_wrong_shape_names_both_shapes():
    m = ConvLSTM2d(2, 3, 3, stride=2)
    x = torch.zeros(2, 4, 2, 8, 8)
    with pytest.raises(ShapeError, match=r"\(N, T\) = \(2, 4\).*\(2, 4, 4, 4\).*Received mask of shape \(2, 4, 8, 8\)"):
        m(x, mask=torch.ones(2, 4, 8, 8, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"Received mask of shape \(4, 2\)"):
        m(x, mask=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"mask must be a bool tensor"):
        m(x, mask=torch.ones(2, 4))


def test_unknown_recurrent_activation():
    with pytest.raises(ShapeError, match=r"Unknown recurrent_activation 'hardsigmoid'. Expected one of "
                                         r"\('sigmoid', 'hard_sigmoid', 'hard_sigmoid_keras2'\)"):
        ConvLSTM2d(2, 3, 3, recurrent_activation="hardsigmoid")


def test_even_kernel_with_same_is_allowed_and_keeps_the_size():
    # Decision: allowed, with TensorFlow's asymmetric rule (numbers checked in test_matches_keras_equations).
    out, (h, _) = ConvLSTM2d(1, 2, (2, 4))(torch.zeros(1, 2, 1, 5, 6))
    assert out.shape == (1, 2, 2, 5, 6) and h.shape == (1, 1, 2, 5, 6)


def test_input_and_state_errors():
    m = ConvLSTM2d(2, 3, 3)
    with pytest.raises(ShapeError, match=r"expects input \(N, T, C, H, W\) with C = in_channels = 2. "
                                         r"Received input of shape \(1, 4, 3, 5, 5\)"):
        m(torch.zeros(1, 4, 3, 5, 5))
    with pytest.raises(ShapeError, match=r"expects input \(N, T, C, H, W\)"):
        m(torch.zeros(4, 2, 5, 5))
    bad = torch.zeros(1, 1, 3, 4, 4)
    with pytest.raises(ShapeError, match=r"h0 must have shape .* = \(1, 1, 3, 5, 5\). Received h0 of shape"):
        m(torch.zeros(1, 4, 2, 5, 5), (bad, bad))
    with pytest.raises(ShapeError, match=r"dropout must be a number in \[0, 1\]. Received dropout=1.5"):
        ConvLSTM2d(2, 3, 3, dropout=1.5)
    with pytest.raises(ShapeError, match=r"Unknown padding 'full'"):
        ConvLSTM2d(2, 3, 3, padding="full")
    with pytest.raises(ShapeError, match=r"Convolution output would be empty"):
        m2 = ConvLSTM2d(2, 3, 5, padding="valid")
        m2(torch.zeros(1, 2, 2, 3, 3))


def test_public_names():
    for name in ("ConvLSTM1d", "ConvLSTM2d", "conv_lstm_nd"):
        assert name in cnn.__all__ and hasattr(cnn, name)
