"""Partial convolution against a loop-by-loop reference of the formula, hand-computed values and nn.ConvNd."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.masking.partial_conv import PartialConv1d, PartialConv2d, PartialConv3d, partial_conv
from cnnkit.shapes import conv_output_size

MODULES = {1: PartialConv1d, 2: PartialConv2d, 3: PartialConv3d}
CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def reference(x, mask, weight, bias, stride=1, padding=0, dilation=1, groups=1):
    """The paper's formula, one output entry at a time, with padding handled as "outside = invalid".

    For every output position and channel: sum of weight × input over the *valid* entries of the window
    (channels of the group × kernel offsets), times (entries in the window / valid entries), plus bias;
    exactly 0 where no entry is valid. The updated mask is 1 where any entry is valid.
    """
    x, mask, weight = x.double().tolist(), (mask != 0).tolist(), weight.double().tolist()
    bias = None if bias is None else bias.double().tolist()
    n_samples, spatial = len(x), _shape(x[0][0])
    c_out, c_group, kernel = len(weight), len(weight[0]), _shape(weight[0][0])
    d = len(spatial)
    stride, dilation = _tuple(stride, d), _tuple(dilation, d)
    if padding == "same":
        before = tuple(dl * (k - 1) // 2 for k, dl in zip(kernel, dilation))
        out_size = spatial
    else:
        before = (0,) * d if padding == "valid" else _tuple(padding, d)
        out_size = tuple(
            (i + 2 * p - dl * (k - 1) - 1) // s + 1 for i, p, k, s, dl in zip(spatial, before, kernel, stride, dilation)
        )
    shared = len(mask[0]) == 1
    window = c_group * math.prod(kernel)
    out = torch.zeros(n_samples, c_out, *out_size, dtype=torch.float64)
    new_mask = torch.zeros(n_samples, 1 if shared else c_out, *out_size, dtype=torch.bool)
    for n, o in itertools.product(range(n_samples), range(c_out)):
        g = o // (c_out // groups)
        for pos in itertools.product(*(range(s) for s in out_size)):
            total, count = 0.0, 0
            for c in range(c_group):
                ci = g * c_group + c
                for off in itertools.product(*(range(k) for k in kernel)):
                    src = tuple(q * s - b + f * dl for q, s, b, f, dl in zip(pos, stride, before, off, dilation))
                    if not all(0 <= v < size for v, size in zip(src, spatial)):
                        continue
                    if not _at(mask[n][0 if shared else ci], src):
                        continue
                    total += _at(weight[o][c], off) * _at(x[n][ci], src)
                    count += 1
            if count:
                out[(n, o, *pos)] = total * window / count + (0.0 if bias is None else bias[o])
                new_mask[(n, 0 if shared else o, *pos)] = True
    return out, new_mask


def _shape(nested) -> tuple[int, ...]:
    shape = []
    while isinstance(nested, list):
        shape.append(len(nested))
        nested = nested[0]
    return tuple(shape)


def _at(nested, index):
    for i in index:
        nested = nested[i]
    return nested


def _tuple(v, d):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d


def _random_mask(shape, p=0.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


CONFIGS = [
    # d, c_in, c_out, kernel, stride, padding, dilation, groups, multi_channel
    (2, 3, 4, 3, 1, 1, 1, 1, False),
    (2, 3, 4, 3, 1, 1, 1, 1, True),
    (2, 4, 6, 3, 1, 1, 1, 2, False),
    (2, 4, 6, (3, 2), 2, (1, 0), 1, 2, True),
    (2, 2, 2, 3, 1, "same", 2, 1, True),
    (2, 2, 3, 2, 1, "valid", 1, 1, False),
    (1, 2, 3, 5, 2, 2, 1, 1, True),
    (3, 2, 2, 3, 1, 1, 1, 2, False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c[0]}d-g{c[7]}-{'multi' if c[8] else 'shared'}-{i}"
                                                   for i, c in enumerate(CONFIGS)])
def test_module_matches_loop_reference(config):
    d, c_in, c_out, kernel, stride, padding, dilation, groups, multi = config
    conv = MODULES[d](c_in, c_out, kernel, stride, padding, dilation, groups, multi_channel=multi,
                      dtype=torch.float64)
    spatial = (9,) * d if d < 3 else (5,) * d
    x = torch.randn(2, c_in, *spatial, dtype=torch.float64)
    mask = _random_mask((2, c_in if multi else 1, *spatial), seed=d)
    out, new_mask = conv(x, mask)
    want, want_mask = reference(x, mask, conv.weight.detach(), conv.bias.detach(), stride, padding, dilation, groups)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    assert new_mask.dtype == torch.bool
    assert torch.equal(new_mask, want_mask)
    if padding != "same":  # predicted size == actual size (same: PyTorch's own rule)
        assert tuple(out.shape[2:]) == conv_output_size(spatial, kernel, stride, padding, dilation)


@settings(max_examples=20, deadline=None)
@given(
    size=st.tuples(st.integers(3, 7), st.integers(3, 7)),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    multi=st.booleans(),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_functional_matches_loop_reference_on_random_configurations(
    size, kernel, stride, padding, dilation, groups, multi, p, seed
):
    span = [dilation * (k - 1) + 1 for k in kernel]
    assume(all(s + 2 * padding >= sp for s, sp in zip(size, span)))
    g = torch.Generator().manual_seed(seed)
    c_in, c_out = 2 * groups, 2 * groups
    x = torch.randn(1, c_in, *size, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in // groups, *kernel, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    mask = (torch.rand(1, c_in if multi else 1, *size, generator=g) < p).double()
    out, new_mask = partial_conv(x, mask, weight, bias, stride, padding, dilation, groups)
    want, want_mask = reference(x, mask, weight, bias, stride, padding, dilation, groups)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    assert new_mask.dtype == torch.float64  # the mask's own dtype
    assert torch.equal(new_mask, want_mask.double())


def test_hand_computed_example():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[True, False], [True, True]]]])
    weight = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    out, new_mask = partial_conv(x, mask, weight, torch.tensor([0.5]))
    # valid: 1·1 + 3·3 + 4·4 = 26 over 3 of 4 entries → 26 · 4/3 + 0.5
    assert out.item() == pytest.approx(26 * 4 / 3 + 0.5)
    assert new_mask.tolist() == [[[[True]]]]
    # 1-D, padding 1: padded mask [0, 1, 0, 1, 1, 0] → counts 1, 2, 2, 2; sums 1, 4, 7, 7; × 3 / count
    out, _ = partial_conv(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), torch.tensor([[[1.0, 0.0, 1.0, 1.0]]]),
                          torch.ones(1, 1, 3), padding=1)
    assert out.flatten().tolist() == [3.0, 6.0, 10.5, 10.5]


def test_all_ones_mask_is_conv2d_inside_and_renormalised_at_borders():
    conv = PartialConv2d(3, 5, 3, padding=1, dtype=torch.float64)
    plain = nn.Conv2d(3, 5, 3, padding=1, dtype=torch.float64)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    out, new_mask = conv(x, torch.ones(2, 1, 6, 7))
    want = plain(x)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], want[..., 1:-1, 1:-1], rtol=1e-12, atol=1e-12)
    # borders: the zero-padded conv without bias, × 9 / (inputs inside the image), + bias
    count = torch.ones(6, 7, dtype=torch.float64)
    for i, j in itertools.product(range(6), range(7)):
        count[i, j] = sum(0 <= i + a < 6 and 0 <= j + b < 7 for a in (-1, 0, 1) for b in (-1, 0, 1))
    assert count[0, 0] == 4 and count[0, 3] == 6 and count[3, 3] == 9
    bias = conv.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(out, (want - bias) * 9 / count + bias, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, reference(x, torch.ones(2, 1, 6, 7), conv.weight.detach(), conv.bias.detach(),
                                              padding=1)[0], rtol=1e-10, atol=1e-12)
    assert new_mask.all()


def test_groups_equal_two_separate_convolutions():
    conv = PartialConv2d(4, 6, 3, padding=1, groups=2, dtype=torch.float64)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    mask = _random_mask((2, 1, 8, 8))
    out, new_mask = conv(x, mask)
    w, b = conv.weight.detach(), conv.bias.detach()
    halves = [partial_conv(x[:, 2 * g : 2 * g + 2], mask, w[3 * g : 3 * g + 3], b[3 * g : 3 * g + 3], padding=1)
              for g in range(2)]
    torch.testing.assert_close(out, torch.cat([h[0] for h in halves], dim=1))
    assert torch.equal(new_mask, halves[0][1])


def test_multi_channel_with_identical_channel_masks_equals_shared_mask():
    shared = PartialConv2d(3, 4, 3, padding=1, dtype=torch.float64)
    multi = PartialConv2d(3, 4, 3, padding=1, multi_channel=True, dtype=torch.float64)
    multi.load_state_dict(shared.state_dict())
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    mask = _random_mask((2, 1, 7, 7))
    out_shared, mask_shared = shared(x, mask)
    out_multi, mask_multi = multi(x, mask.expand(2, 3, 7, 7))
    torch.testing.assert_close(out_multi, out_shared)
    assert mask_multi.shape == (2, 4, 7, 7)
    assert torch.equal(mask_multi, mask_shared.expand(2, 4, 7, 7))


def test_multi_channel_mask_shape_with_one_input_channel():
    conv = PartialConv2d(1, 3, 3, padding=1, multi_channel=True)
    x, mask = torch.randn(2, 1, 5, 5), _random_mask((2, 1, 5, 5))
    out, new_mask = conv(x, mask)
    assert new_mask.shape == (2, 3, 5, 5)  # one mask per output channel, ready for the next multi-channel layer
    shared_out, shared_mask = partial_conv(x, mask, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out, shared_out)
    assert shared_mask.shape == (2, 1, 5, 5) and torch.equal(new_mask, shared_mask.expand(2, 3, 5, 5))


def test_multi_channel_counts_each_channel():
    # channel 0 valid everywhere, channel 1 nowhere: half the 2·1·1 window is valid → × 2
    x = torch.tensor([[[[1.0]], [[5.0]]]])
    mask = torch.tensor([[[[1.0]], [[0.0]]]])
    out, new_mask = partial_conv(x, mask, torch.tensor([[[[3.0]], [[7.0]]]]))
    assert out.item() == 1.0 * 3.0 * 2
    assert new_mask.item() == 1.0


def _holed_mask():
    mask = torch.ones(1, 1, 10, 10, dtype=torch.bool)
    mask[..., 2:8, 2:8] = False  # 6×6 hole: the 3×3 windows centred on 3..6 see nothing
    return mask


def test_fully_invalid_windows_give_exact_zeros_without_nan():
    conv = PartialConv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(10.0)
    x = torch.randn(1, 2, 10, 10) * 1e4
    out, new_mask = conv(x, _holed_mask())
    assert torch.isfinite(out).all()
    assert (out[..., 3:7, 3:7] == 0).all()
    assert not new_mask[..., 3:7, 3:7].any()
    assert new_mask[..., 2, 2:8].all() and (out[..., 2, 2:8] != 0).all()  # a valid neighbour: renormalised
    x.requires_grad_(True)
    conv(x, _holed_mask())[0].sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad[..., 2:8, 2:8] == 0).all()


def test_bfloat16_autocast_is_finite_and_close_to_float32():
    conv = PartialConv2d(16, 8, 3, padding=1, multi_channel=True)
    x = torch.randn(2, 16, 10, 10)
    mask = _holed_mask().expand(2, 16, 10, 10).clone()
    mask[0, :8] = True  # per-channel differences too
    want, want_mask = conv(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, new_mask = conv(x, mask)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    assert torch.equal(new_mask, want_mask)
    assert (out[1, :, 3:7, 3:7] == 0).all() and not new_mask[1, :, 3:7, 3:7].any()
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.1)


def test_float16_input_is_finite():
    conv = PartialConv2d(2, 3, 3, padding=1, dtype=torch.float16)
    x = torch.randn(1, 2, 10, 10, dtype=torch.float16)
    try:
        out, _ = conv(x, _holed_mask())
    except RuntimeError as err:  # pragma: no cover - builds without CPU half convolution
        pytest.skip(f"float16 convolution not available on this CPU build: {err}")
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all() and (out[..., 3:7, 3:7] == 0).all()
    reference_out, _ = reference(x, _holed_mask(), conv.weight.detach(), conv.bias.detach(), padding=1)
    torch.testing.assert_close(out.double(), reference_out, rtol=0.02, atol=0.02)


def test_gradcheck_float64():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    mask = _random_mask((1, 2, 5, 5), p=0.5)

    def f(x, weight, bias):
        return partial_conv(x, mask, weight, bias, stride=1, padding=1, groups=2)[0]

    assert torch.autograd.gradcheck(f, (x, weight, bias))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_module_equals_functional_and_state_dict_round_trip(d):
    conv = MODULES[d](2, 4, 3, stride=2, padding=1, dilation=1, groups=2, multi_channel=True)
    x = torch.randn(2, 2, *(6,) * d)
    mask = _random_mask((2, 2, *(6,) * d))
    out, new_mask = conv(x, mask)
    want, want_mask = partial_conv(x, mask, conv.weight, conv.bias, 2, 1, 1, 2)
    torch.testing.assert_close(out, want)
    assert torch.equal(new_mask, want_mask)
    assert isinstance(conv, CONVS[d]) and list(conv.buffers()) == []
    again = MODULES[d](2, 4, 3, stride=2, padding=1, groups=2, multi_channel=True)
    again.load_state_dict(conv.state_dict())
    torch.testing.assert_close(again(x, mask)[0], out)
    out2, _ = conv(x, torch.ones_like(mask))  # no state carried over from the previous call
    torch.testing.assert_close(out2, partial_conv(x, torch.ones_like(mask), conv.weight, conv.bias, 2, 1, 1, 2)[0])


def test_repr_reads_like_the_constructor_call():
    assert repr(PartialConv2d(3, 8, 3, padding=1, multi_channel=True)) == (
        "PartialConv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), multi_channel=True)"
    )
    assert repr(PartialConv1d(1, 2, 5, bias=False)) == "PartialConv1d(1, 2, kernel_size=(5,), stride=(1,), bias=False)"


def test_bad_masks_name_expected_and_received_shapes():
    conv = PartialConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(ShapeError, match=r"mask must have shape \(2, 1, 5, 5\).*Received mask of shape \(2, 1, 5, 4\)"):
        conv(x, torch.ones(2, 1, 5, 4))
    with pytest.raises(ShapeError, match=r"mask must have shape \(2, 1, 5, 5\).*Received mask of shape \(2, 3, 5, 5\)"):
        conv(x, torch.ones(2, 3, 5, 5))  # a per-channel mask needs multi_channel=True
    with pytest.raises(ShapeError, match=r"bool or floating point.*Received mask of dtype torch.int64"):
        conv(x, torch.ones(2, 1, 5, 5, dtype=torch.long))
    multi = PartialConv2d(3, 4, 3, multi_channel=True)
    with pytest.raises(ShapeError, match=r"PartialConv2d: mask must have shape \(2, 3, 5, 5\)"):
        multi(x, torch.ones(2, 1, 5, 5))
    with pytest.raises(ShapeError, match=r"partial_conv: mask must have shape \(2, 1, 5, 5\) or \(2, 3, 5, 5\)"):
        partial_conv(x, torch.ones(2, 2, 5, 5), conv.weight)


def test_bad_arguments_are_refused():
    with pytest.raises(ShapeError, match=r"padding_mode='zeros'.*Received padding_mode='reflect'"):
        PartialConv2d(3, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ShapeError, match="multi_channel must be a bool"):
        PartialConv2d(3, 4, 3, multi_channel=1)
    with pytest.raises(ValueError, match="groups"):
        PartialConv2d(3, 4, 3, groups=2)  # nn.Conv2d's own check
    conv = PartialConv2d(3, 4, 3)
    with pytest.raises(ShapeError, match=r"expects input \(N, C, H, W\) with C=3\. Received input of shape \(2, 4, "):
        conv(torch.randn(2, 4, 5, 5), torch.ones(2, 1, 5, 5))
    with pytest.raises(ShapeError, match="padding='same' needs stride 1"):
        partial_conv(torch.randn(1, 3, 5, 5), torch.ones(1, 1, 5, 5), conv.weight, stride=2, padding="same")
    with pytest.raises(ShapeError, match="Unknown padding 'smae'"):
        partial_conv(torch.randn(1, 3, 5, 5), torch.ones(1, 1, 5, 5), conv.weight, padding="smae")
    with pytest.raises(ShapeError, match=r"input channels must equal weight.shape\[1\] × groups"):
        partial_conv(torch.randn(1, 2, 5, 5), torch.ones(1, 1, 5, 5), conv.weight)


def test_chained_layers_fill_a_hole_step_by_step():
    # Liu et al.: each layer shrinks the hole by the kernel's reach until the mask is all valid.
    mask = _holed_mask()
    layer = PartialConv2d(1, 1, 3, padding=1)
    x = torch.randn(1, 1, 10, 10)
    holes = []
    for _ in range(4):
        x, mask = layer(x, mask)
        holes.append(int((~mask).sum()))
    assert holes == [16, 4, 0, 0]  # 6×6 hole → 4×4 → 2×2 → filled


# --- NaN and inf under the mask ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("multi_channel", [False, True], ids=["shared", "multi"])
def test_nan_under_the_mask_equals_zeros_there(value, multi_channel):
    """A cloud stored as NaN: output and every gradient equal the run with zeros there, and the loop reference."""
    torch.manual_seed(0)
    conv = PartialConv2d(2, 3, 3, padding=1, multi_channel=multi_channel).double()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    mask = torch.rand(2, 2 if multi_channel else 1, 6, 6) > 0.4
    hidden = (~mask).expand_as(x)
    results = []
    for fill in (value, 0.0):
        data = x.masked_fill(hidden, fill).requires_grad_(True)
        conv.zero_grad(set_to_none=True)
        y, _ = conv(data, mask)
        y.square().sum().backward()
        results.append((y, data.grad, conv.weight.grad, conv.bias.grad))
    (y, gx, gw, gb), (y0, gx0, gw0, gb0) = results
    assert torch.isfinite(y).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    torch.testing.assert_close((y, gx, gw, gb), (y0, gx0, gw0, gb0), rtol=0, atol=0)
    assert (gx[hidden] == 0).all()
    expected, _ = reference(x.masked_fill(hidden, 0.0), mask, conv.weight.detach(), conv.bias.detach(), padding=1)
    torch.testing.assert_close(y.detach(), expected)


def test_nan_in_a_float_mask_counts_as_missing():
    x = torch.randn(1, 1, 5, 5, dtype=torch.float64)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.float64)
    mask[0, 0, 2, 2] = math.nan
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    y, new_mask = partial_conv(x, mask, weight, padding=1)
    zero_mask = mask.nan_to_num(0.0)
    y0, new_mask0 = partial_conv(x, zero_mask, weight, padding=1)
    torch.testing.assert_close(y, y0, rtol=0, atol=0)
    assert torch.equal(new_mask, new_mask0)
    torch.testing.assert_close(y, reference(x, zero_mask, weight, None, padding=1)[0])


def test_bad_constructor_arguments_raise_cnnkit_errors():
    with pytest.raises(ShapeError, match=r"bias must be True or False\. Received bias='yes'"):
        PartialConv2d(3, 4, 3, bias="yes")
    with pytest.raises(ShapeError, match=r"in_channels must be an integer >= 1\. Received in_channels=0"):
        PartialConv2d(0, 4, 3)
    with pytest.raises(ShapeError, match=r"out_channels must be an integer >= 1\. Received out_channels=True"):
        PartialConv2d(3, True, 3)
    with pytest.raises(ShapeError, match=r"kernel_size must be .*Received kernel_size=\(3, 0\)"):
        PartialConv2d(3, 4, (3, 0))
    with pytest.raises(ShapeError, match=r"divisible by groups\. Received in_channels=3, out_channels=4, groups=2"):
        PartialConv2d(3, 4, 3, groups=2)
    with pytest.raises(ShapeError, match=r"padding='same' needs stride 1"):
        PartialConv1d(3, 4, 3, stride=2, padding="same")
