"""LTAE2d and its functions against per-pixel references written with plain torch (one pixel, one head, only its
valid dates), hand values, and the exactness rules: masked dates weigh exactly 0, all-masked pixels give 0."""

from __future__ import annotations

import math

import pytest
import torch

from cnnkit.errors import ShapeError
from cnnkit.nn import LTAE2d
from cnnkit.nn.temporal_attention import ChannelNorm, collapse_dates, date_encoding, masked_softmax


def test_masked_softmax_is_the_softmax_of_the_valid_entries():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    logits[0, 1] = float("nan")  # a masked NaN is selected away
    logits.requires_grad_(True)
    weights = masked_softmax(logits, mask, 1)
    for row in range(3):
        expected = torch.zeros(5, dtype=torch.float64)
        if mask[row].any():
            expected[mask[row]] = torch.softmax(logits[row, mask[row]].detach(), 0)
        torch.testing.assert_close(weights[row].detach(), expected, rtol=0, atol=1e-15)
    assert (weights[~mask] == 0).all()
    (weights * torch.randn(3, 5, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~mask] == 0).all()


def test_date_encoding_by_hand():
    days = torch.tensor([[0.0, 37.0, 200.0]], dtype=torch.float64)
    encoding = date_encoding(days, 8, period=1000.0, repeat=2)
    assert encoding.shape == (1, 3, 8)
    for t, day in enumerate(days[0].tolist()):
        by_hand = []
        for i in range(4):
            angle = day / 1000.0 ** (2 * (i // 2) / 4)
            by_hand.append(math.sin(angle) if i % 2 == 0 else math.cos(angle))
        torch.testing.assert_close(encoding[0, t], torch.tensor(by_hand * 2, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ShapeError, match="channels must be divisible by repeat"):
        date_encoding(days, 6, repeat=4)


def test_harmonic_date_encoding_by_hand():
    """basis="harmonic": 1, 2, … cycles per period (a season of 365 days), repeated per head; an odd width ends
    with the sine of its last harmonic."""
    days = torch.tensor([[0.0, 37.0, 200.0]], dtype=torch.float64)
    encoding = date_encoding(days, 6, period=365.0, repeat=2, basis="harmonic")
    for t, day in enumerate(days[0].tolist()):
        by_hand = [math.sin(2 * math.pi * day / 365), math.cos(2 * math.pi * day / 365),
                   math.sin(4 * math.pi * day / 365)]
        torch.testing.assert_close(encoding[0, t], torch.tensor(by_hand * 2, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ShapeError, match=r"Unknown basis 'fourier'. Expected one of \('geometric', 'harmonic'\)"):
        date_encoding(days, 4, basis="fourier")


def test_harmonics_cycle_the_pairs_through_0_to_k_cycles():
    """harmonics=K: pair i is (sin, cos) of (i mod (K + 1)) cycles per period; 0 cycles is (0, 1)."""
    days = torch.tensor([[0.0, 37.0, 200.0]], dtype=torch.float64)
    encoding = date_encoding(days, 14, period=365.0, repeat=2, basis="harmonic", harmonics=2)  # 7 channels a head
    for t, day in enumerate(days[0].tolist()):
        by_hand = []
        for c in range(7):
            angle = 2 * math.pi * ((c // 2) % 3) * day / 365
            by_hand.append(math.sin(angle) if c % 2 == 0 else math.cos(angle))
        torch.testing.assert_close(encoding[0, t], torch.tensor(by_hand * 2, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (encoding[..., [0, 6, 7, 13]] == 0).all() and (encoding[..., [1, 8]] == 1).all()  # sin 0, cos 0
    with pytest.raises(ShapeError, match=r"harmonics applies to basis='harmonic' only. Received basis='geometric'"):
        date_encoding(days, 4, harmonics=2)
    with pytest.raises(ShapeError, match=r"harmonics"):
        date_encoding(days, 4, basis="harmonic", harmonics=-1)
    with pytest.raises(ShapeError, match=r"harmonics applies to basis='harmonic' only"):
        LTAE2d(4, harmonics=1)


def test_collapse_dates_against_a_loop():
    torch.manual_seed(1)
    values, weights = torch.randn(2, 3, 6, 4, 5), torch.rand(2, 2, 3, 4, 5)
    expected = torch.zeros(2, 6, 4, 5)
    for head in range(2):
        for t in range(3):
            expected[:, 3 * head:3 * head + 3] += weights[:, head, t, None] * values[:, t, 3 * head:3 * head + 3]
    torch.testing.assert_close(collapse_dates(values, weights), expected)
    # channels last (each pixel's channels side by side, as UTAE's encoder leaves them): the other code path
    channels_last = values.reshape(6, 6, 4, 5).contiguous(memory_format=torch.channels_last).reshape(2, 3, 6, 4, 5)
    assert channels_last.stride(2) == 1
    torch.testing.assert_close(collapse_dates(channels_last, weights), expected)
    with pytest.raises(ShapeError, match=r"C divisible by the heads"):
        collapse_dates(torch.zeros(1, 3, 5, 2, 2), torch.zeros(1, 2, 3, 2, 2))


def test_channel_norm_is_layer_norm_per_pixel():
    torch.manual_seed(2)
    norm = ChannelNorm(4).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(4)), norm.bias.copy_(torch.randn(4))
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    y = norm(x)
    for n, t, i, j in [(0, 0, 0, 0), (1, 2, 4, 5), (0, 1, 3, 2)]:
        v = x[n, t, :, i, j]
        by_hand = (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5) * norm.weight + norm.bias
        torch.testing.assert_close(y[n, t, :, i, j], by_hand.detach())
    with pytest.raises(ShapeError, match=r"C = 4"):
        norm(torch.zeros(2, 3, 3, 3))


def _reference(layer: LTAE2d, x, mask, days, n, i, j):
    """One pixel, with only its valid dates, from the weights and the equations (no shared code but ChannelNorm's
    layer norm, which test_channel_norm_is_layer_norm_per_pixel holds to a hand formula)."""
    valid = mask[n, :, i, j]
    if not valid.any():
        return torch.zeros(layer.out_channels, dtype=x.dtype)
    xs = x[n, valid, :, i, j]  # (t, C)
    normed = torch.nn.functional.layer_norm(xs, (xs.shape[1],), layer.in_norm.weight, layer.in_norm.bias, 1e-5)
    e = normed @ layer.in_proj.weight[:, :, 0, 0].T + layer.in_proj.bias
    d = layer.d_model // layer.num_heads
    for t, day in enumerate(days[n, valid].tolist()):
        cycles = [c // 2 + 1 if layer.harmonics is None else (c // 2) % (layer.harmonics + 1) for c in range(d)]
        angles = ([2 * math.pi * k * day / layer.period for k in cycles] if layer.basis == "harmonic"
                  else [day / 1000.0 ** (2 * (c // 2) / d) for c in range(d)])
        pe = torch.tensor([math.sin(a) if c % 2 == 0 else math.cos(a) for c, a in enumerate(angles)] * layer.num_heads,
                          dtype=x.dtype)
        e[t] = e[t] + pe if layer.encoding == "add" else e[t] * pe + pe
    keys = (e @ layer.key.weight[:, :, 0, 0].T + layer.key.bias).reshape(len(e), layer.num_heads, -1)
    heads = []
    for h in range(layer.num_heads):
        a = torch.softmax(keys[:, h] @ layer.query[h] / math.sqrt(layer.key_channels), 0)
        heads.append(a @ e[:, h * d:(h + 1) * d])
    pooled = torch.cat(heads)
    hidden = pooled @ layer.mlp[0].weight[:, :, 0, 0].T + layer.mlp[0].bias
    hidden = torch.nn.functional.layer_norm(hidden, (len(hidden),), layer.mlp[1].weight, layer.mlp[1].bias, 1e-5)
    return torch.relu(hidden)


@pytest.mark.parametrize(("encoding", "basis", "harmonics"), [
    ("add", "geometric", None), ("modulate", "geometric", None), ("modulate", "harmonic", None),
    ("modulate", "harmonic", 1)])
def test_ltae_equals_the_per_pixel_reference_and_ignores_masked_dates(encoding, basis, harmonics):
    torch.manual_seed(3)
    layer = LTAE2d(6, 5, num_heads=2, key_channels=3, d_model=8, encoding=encoding, basis=basis, harmonics=harmonics,
                   period=365.0 if basis == "harmonic" else 1000.0).double()
    x = torch.randn(2, 4, 6, 3, 3, dtype=torch.float64)
    mask = torch.rand(2, 4, 3, 3) > 0.4
    mask[0, :, 1, 1] = False  # a pixel without data
    x[~mask[:, :, None].expand_as(x)] = float("nan")
    days = torch.tensor([[10, 40, 41, 300], [0, 5, 100, 101]])
    out, weights = layer(x, mask, days)
    assert out.shape == (2, 5, 3, 3) and weights.shape == (2, 2, 4, 3, 3)
    assert torch.isfinite(out).all() and (weights[~mask[:, None].expand_as(weights)] == 0).all()
    assert (out[0, :, 1, 1] == 0).all()
    with torch.no_grad():
        for n in range(2):
            for i in range(3):
                for j in range(3):
                    torch.testing.assert_close(out[n, :, i, j], _reference(layer, x, mask, days, n, i, j),
                                               rtol=1e-10, atol=1e-10)
    # a fully masked extra date, anywhere and on any day, changes nothing
    x2 = torch.cat([x[:, :2], torch.randn(2, 1, 6, 3, 3, dtype=torch.float64), x[:, 2:]], 1)
    mask2 = torch.cat([mask[:, :2], torch.zeros(2, 1, 3, 3, dtype=torch.bool), mask[:, 2:]], 1)
    days2 = torch.cat([days[:, :2], torch.tensor([[999], [7]]), days[:, 2:]], 1)
    torch.testing.assert_close(layer(x2, mask2, days2)[0], out, rtol=0, atol=1e-10)


def test_ltae_gradcheck_state_dict_and_errors():
    torch.manual_seed(4)
    layer = LTAE2d(4, 3, num_heads=2, key_channels=2).double()
    x = torch.randn(1, 3, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    assert torch.autograd.gradcheck(lambda v: layer(v, mask)[0], (x,))
    copy = LTAE2d(4, 3, num_heads=2, key_channels=2).double()
    copy.load_state_dict(layer.state_dict())
    torch.testing.assert_close(copy(x, mask)[0], layer(x, mask)[0], rtol=0, atol=0)
    days = torch.arange(3).expand(1, 3)
    torch.testing.assert_close(layer(x, mask, days)[0], layer(x, mask)[0], rtol=0, atol=0)  # None = 0 … T−1
    assert layer.extra_repr() == "4, 3, num_heads=2, key_channels=2"
    with pytest.raises(ShapeError, match=r"C = in_channels = 4"):
        layer(torch.zeros(1, 3, 5, 2, 2))
    with pytest.raises(ShapeError, match=r"mask must be \(N, T, H, W\) = \(1, 3, 2, 2\)"):
        layer(x, mask[:, :2])
    with pytest.raises(ShapeError, match=r"days must be \(N, T\) = \(1, 3\)"):
        layer(x, mask, torch.zeros(3))
    with pytest.raises(ShapeError, match="d_model must be divisible by num_heads"):
        LTAE2d(4, num_heads=3)
    with pytest.raises(ShapeError, match="period must be a number > 0"):
        LTAE2d(4, period=0)
    with pytest.raises(ShapeError, match=r"Unknown encoding 'multiply'. Expected one of \('add', 'modulate'\)"):
        LTAE2d(4, encoding="multiply")
