"""SeriesSegNet on padded batches (time and space) against each series run alone."""

from __future__ import annotations

import math

import pytest
import torch

from cnnkit.errors import ShapeError
from cnnkit.models.series import SeriesSegNet


def _pad(items, dtype):
    steps = max(x.shape[0] for x, _ in items)
    height = max(x.shape[2] for x, _ in items)
    width = max(x.shape[3] for x, _ in items)
    x = torch.zeros(len(items), steps, items[0][0].shape[1], height, width, dtype=dtype)
    mask = torch.zeros(len(items), steps, height, width, dtype=torch.bool)
    for n, (series, valid) in enumerate(items):
        t, _, h, w = series.shape
        x[n, :t, :, :h, :w] = series
        mask[n, :t, :h, :w] = valid
    return x, mask


@pytest.mark.parametrize("options", [{"kernel_size": 3}, {"kernel_size": 1},
                                     {"kernel_size": 1, "harmonics": 2, "head_dilations": (1, 2, 4)},
                                     {"kernel_size": 1, "harmonics": 2, "phasors": 3, "context": 5}])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_padded_batch_equals_each_series_alone(dtype, tol, options):
    """Padded in time and space (days 0 at padded dates, as collate_series pads them), each series' output and the
    weight gradients equal those of the series alone — also with the harmonics and a head of several spatial
    convolutions (padded pixels, never valid, are 0 between them), and with the neighbourhood context (padded
    pixels weigh 0)."""
    torch.manual_seed(0)
    net = SeriesSegNet(3, 4, width=6, hidden=5, **options).to(dtype)
    shapes = [(5, 12, 9), (2, 7, 13), (4, 10, 10)]
    items, all_days = [], []
    for t, h, w in shapes:
        series = torch.randn(t, 3, h, w, dtype=dtype)
        valid = torch.rand(t, h, w) > 0.3
        series[~valid[:, None].expand_as(series)] = float("nan")  # clouds stored as NaN
        items.append((series, valid))
        all_days.append(torch.sort(torch.randint(0, 365, (t,))).values)
    x, mask = _pad(items, dtype)
    days = torch.zeros(len(items), x.shape[1], dtype=torch.long)
    for n, d in enumerate(all_days):
        days[n, :len(d)] = d
    out = net(x, mask, days)
    sum(out[n, :, :s.shape[2], :s.shape[3]].sum() for n, (s, _) in enumerate(items)).backward()
    batched = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    alone_total = 0
    for n, (series, valid) in enumerate(items):
        alone = net(series[None], valid[None], all_days[n][None])
        h, w = series.shape[2:]
        assert torch.isfinite(alone).all()
        torch.testing.assert_close(out[n, :, :h, :w], alone[0], atol=tol, rtol=tol)
        alone_total = alone_total + alone.sum()
    alone_total.backward()
    for a, b in zip(batched, (p.grad for p in net.parameters())):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=10 * tol, rtol=10 * tol)


def test_masked_date_keeps_the_state():
    """A date masked everywhere changes nothing: the series without it gives the same output."""
    torch.manual_seed(1)
    net = SeriesSegNet(2, 3, width=4, hidden=4).double()
    series = torch.randn(1, 4, 2, 8, 8, dtype=torch.float64)
    mask = torch.ones(1, 4, 8, 8, dtype=torch.bool)
    mask[:, 2] = False
    series[:, 2] = float("nan")
    kept = [0, 1, 3]
    torch.testing.assert_close(net(series, mask), net(series[:, kept], mask[:, kept]), atol=1e-12, rtol=0)


def test_harmonics_by_hand_and_a_masked_date_changes_nothing():
    """With harmonics the ConvLSTM reads [e, e·sin(2πk d/P), e·cos(2πk d/P)] (checked against the network's own
    encoder and recurrence fed by hand); a fully masked extra date, whatever its day, changes nothing; the days
    matter; a pixel without any valid date is 0 between the head's convolutions."""
    torch.manual_seed(3)
    net = SeriesSegNet(2, 3, width=4, hidden=4, kernel_size=1, harmonics=2, period=365.0,
                       head_dilations=(1, 2)).double()
    series = torch.randn(1, 3, 2, 9, 8, dtype=torch.float64)
    mask = torch.rand(1, 3, 9, 8) > 0.3
    mask[0, :, 0, 0] = False  # never valid
    days = torch.tensor([[10, 100, 250]])
    out = net(series, mask, days)
    # by hand
    e = net.encoder(torch.where(mask[0, :, None], series[0], torch.zeros((), dtype=torch.float64)))  # (T, 4, H, W)
    parts = [e]
    for k in (1, 2):
        angle = 2 * math.pi * k * days[0].double() / 365.0
        parts += [e * torch.sin(angle)[:, None, None, None], e * torch.cos(angle)[:, None, None, None]]
    # the network orders the products sin1, cos1, sin2, cos2, each over the 4 features
    _, (h_n, _) = net.recurrent(torch.cat(parts, 1)[None], mask=mask)
    hidden = h_n[-1]
    keep = mask.any(1)[:, None]
    conv1, conv2, last = net.head[0], net.head[2], net.head[4]
    hidden = torch.where(keep, torch.relu(conv1(hidden)), torch.zeros((), dtype=torch.float64))
    hidden = torch.where(keep, torch.relu(conv2(hidden)), torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(out, last(hidden), rtol=1e-12, atol=1e-12)
    # a fully masked extra date
    x = torch.cat([series[:, :1], torch.full((1, 1, 2, 9, 8), 1e6, dtype=torch.float64), series[:, 1:]], 1)
    m = torch.cat([mask[:, :1], torch.zeros(1, 1, 9, 8, dtype=torch.bool), mask[:, 1:]], 1)
    torch.testing.assert_close(net(x, m, torch.tensor([[10, 42, 100, 250]])), out, rtol=0, atol=1e-12)
    assert (net(series, mask, days + 60) - out).abs().max() > 1e-6


def test_phasors_are_linear_views_of_the_bands_times_the_harmonics():
    """With phasors=P the ConvLSTM reads [e, p, p·sin(2πk d/P), p·cos(2πk d/P)] with p = W·x (no bias, no ReLU) of
    each date's masked bands; checked against the network's recurrence fed by hand."""
    torch.manual_seed(5)
    net = SeriesSegNet(2, 3, width=4, hidden=4, kernel_size=1, harmonics=1, phasors=2).double()
    series = torch.randn(1, 3, 2, 5, 4, dtype=torch.float64)
    mask = torch.rand(1, 3, 5, 4) > 0.3
    days = torch.tensor([[30, 200, 300]])
    x = torch.where(mask[0, :, None], series[0], torch.zeros((), dtype=torch.float64))
    e = net.encoder(x)
    p = torch.einsum("pc,tcyx->tpyx", net.phasor.weight[:, :, 0, 0], x)
    angle = 2 * math.pi * days[0].double() / 365.0
    fed = torch.cat([e, p, p * torch.sin(angle)[:, None, None, None], p * torch.cos(angle)[:, None, None, None]], 1)
    _, (h_n, _) = net.recurrent(fed[None], mask=mask)
    torch.testing.assert_close(net(series, mask, days), net.head(h_n[-1]), rtol=1e-12, atol=1e-12)


def test_context_is_the_neighbours_mean_weighted_by_their_valid_dates():
    """The head's input beside each pixel's final state: the mean of the states in its k × k window (inside the
    image) weighted by their numbers of valid dates, by hand with loops; 0 at a pixel never seen itself."""
    torch.manual_seed(4)
    net = SeriesSegNet(2, 3, width=4, hidden=3, kernel_size=1, context=3).double()
    series = torch.randn(1, 4, 2, 5, 6, dtype=torch.float64)
    mask = torch.rand(1, 4, 5, 6) > 0.5
    mask[0, :, 2, 2] = False
    mask[0, :, 1:4, 1:4] = False  # a pixel whose whole window was never seen
    mask[0, 0, 1, 1] = True
    seen = {}
    net.head[0].register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0].detach()))
    net(series, mask)
    e = net.encoder(torch.where(mask[0, :, None], series[0], torch.zeros((), dtype=torch.float64)))
    _, (h_n, _) = net.recurrent(e[None], mask=mask)
    state, count = h_n[-1][0], mask[0].sum(0).double()
    head_input = seen["input"][0]
    torch.testing.assert_close(head_input[:3], state, rtol=0, atol=0)
    for i in range(5):
        for j in range(6):
            total, weight = torch.zeros(3, dtype=torch.float64), 0.0
            for y in range(max(0, i - 1), min(5, i + 2)):
                for x in range(max(0, j - 1), min(6, j + 2)):
                    total += count[y, x] * state[:, y, x]
                    weight += float(count[y, x])
            expected = total / weight if count[i, j] else total * 0  # 0 where the pixel itself was never seen
            torch.testing.assert_close(head_input[3:, i, j], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ShapeError, match=r"context must be odd \(a centred window\) or 0. Received context=4"):
        SeriesSegNet(2, 3, context=4)


def test_shape_errors():
    net = SeriesSegNet(3, 2)
    with pytest.raises(ShapeError, match=r"x \(N, T, C, H, W\) with C = in_channels = 3"):
        net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"kernel_size must be odd"):
        SeriesSegNet(3, 2, kernel_size=2)
    with pytest.raises(ShapeError, match=r"period must be a number > 0 \(days\). Received period=0"):
        SeriesSegNet(3, 2, harmonics=1, period=0)
    with pytest.raises(ShapeError, match=r"head_dilations must be a list of at least one dilation. Received "
                                         r"head_dilations=\(\)"):
        SeriesSegNet(3, 2, head_dilations=())
    with pytest.raises(ShapeError, match=r"mask must be \(N, T, H, W\) = \(1, 2, 8, 8\)"):
        net(torch.zeros(1, 2, 3, 8, 8), torch.ones(1, 2, 8, 9, dtype=torch.bool))


def test_masked_pixels_keep_their_state_and_get_no_gradient():
    """Per pixel and date: where a pixel is masked (a cloud), the ConvLSTM's output there repeats the previous
    date's exactly; the cloudy input (NaN) gets gradient 0 and changes nothing; clear pixels see the cloud as 0."""
    from cnnkit.nn import ConvLSTM2d

    torch.manual_seed(2)
    lstm = ConvLSTM2d(3, 4, 3, padding="same").double()
    x = torch.randn(1, 5, 3, 6, 7, dtype=torch.float64)
    mask = torch.rand(1, 5, 6, 7) > 0.4
    mask[:, 0] = True
    cloudy = x.clone()
    cloudy[~mask[:, :, None].expand_as(x)] = float("nan")
    cloudy.requires_grad_(True)
    out, _ = lstm(cloudy, mask=mask)
    for t in range(1, 5):
        kept = ~mask[0, t]
        assert kept.any()
        torch.testing.assert_close(out[0, t][:, kept], out[0, t - 1][:, kept], rtol=0, atol=0)
    out.sum().backward()
    grad = cloudy.grad
    assert torch.isfinite(grad).all() and (grad[~mask[:, :, None].expand_as(x)] == 0).all()
    zeroed, _ = lstm(torch.where(mask[:, :, None], x, torch.zeros((), dtype=x.dtype)), mask=mask)
    torch.testing.assert_close(out, zeroed, rtol=0, atol=0)
