"""UTAE against itself run one series at a time (padded batches), with and without an extra masked date, on
aligned crops of a larger image (tiles), and built by name through cnnkit.models — float64 throughout."""

from __future__ import annotations

import pytest
import torch

from cnnkit.errors import ShapeError
from cnnkit.models import MODELS, build, family_of, spec_for
from cnnkit.models.utae import UTAE

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _pad(items, dtype=torch.float64):
    """The padding of cnnkit.data.collate_series: dates at the end, pixels bottom and right, mask False, days 0."""
    steps = max(x.shape[0] for x, _, _ in items)
    height = max(x.shape[2] for x, _, _ in items)
    width = max(x.shape[3] for x, _, _ in items)
    x = torch.zeros(len(items), steps, items[0][0].shape[1], height, width, dtype=dtype)
    mask = torch.zeros(len(items), steps, height, width, dtype=torch.bool)
    days = torch.zeros(len(items), steps, dtype=torch.long)
    for n, (series, valid, d) in enumerate(items):
        t, _, h, w = series.shape
        x[n, :t, :, :h, :w] = series
        mask[n, :t, :h, :w] = valid
        days[n, :t] = d
    return x, mask, days


def _series(t, h, w, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    series = torch.randn(t, channels, h, w, dtype=torch.float64, generator=generator)
    valid = torch.rand(t, h, w, generator=generator) > 0.3
    series[~valid[:, None].expand_as(series)] = float("nan")  # clouds stored as NaN
    days = torch.sort(torch.randint(0, 365, (t,), generator=generator)).values
    return series, valid, days


@pytest.mark.parametrize("options", [{}, {"basis": "harmonic", "period": 365.0, "phasors": 3},
                                     {"basis": "harmonic", "period": 365.0, "harmonics": 2, "phasors": 3}])
def test_padded_batch_equals_each_series_alone(options):
    """Outputs and weight gradients: sizes that are and are not multiples of 4, lengths 2 to 5 (encoding "modulate";
    "add" is held to the same in tests/data/test_pastis.py); also with the harmonic days and the phasors (averaged
    over each block's valid pixels: padding counts 0)."""
    torch.manual_seed(0)
    net = UTAE(3, 4, encoder_widths=(4, 8, 8), num_heads=2, encoding="modulate", **options).double()
    items = [_series(5, 12, 9, seed=1), _series(2, 8, 13, seed=2), _series(4, 10, 16, seed=3)]
    x, mask, days = _pad(items)
    out = net(x, mask, days)
    sum(out[n, :, :s.shape[2], :s.shape[3]].sum() for n, (s, _, _) in enumerate(items)).backward()
    batched = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    total = 0
    for n, (series, valid, d) in enumerate(items):
        alone = net(series[None], valid[None], d[None])
        assert torch.isfinite(alone).all()
        torch.testing.assert_close(out[n, :, :series.shape[2], :series.shape[3]], alone[0], **TOL)
        total = total + alone.sum()
    total.backward()
    for a, b in zip(batched, (p.grad for p in net.parameters())):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("encoding", "phasors", "harmonics"), [("add", 0, None), ("modulate", 0, None),
                                                               ("modulate", 2, None), ("modulate", 2, 2)])
def test_a_fully_masked_extra_date_changes_nothing(encoding, phasors, harmonics):
    torch.manual_seed(1)
    basis = {"basis": "harmonic", "harmonics": harmonics} if harmonics is not None else {}
    net = UTAE(3, 4, encoder_widths=(4, 8, 8), num_heads=2, encoding=encoding, phasors=phasors, **basis).double()
    series, valid, days = _series(4, 11, 14, seed=4)
    reference = net(series[None], valid[None], days[None])
    extra = torch.full((1, 3, 11, 14), 1e6, dtype=torch.float64)
    for at in (0, 2, 4):
        x = torch.cat([series[:at], extra, series[at:]])[None]
        mask = torch.cat([valid[:at], torch.zeros(1, 11, 14, dtype=torch.bool), valid[at:]])[None]
        d = torch.cat([days[:at], torch.tensor([123]), days[at:]])[None]
        torch.testing.assert_close(net(x, mask, d), reference, **TOL)
    # NaN under the mask changes nothing and gets no gradient; days=None means 0 … T−1
    cloudy = series.clone().requires_grad_(True)
    zeroed = torch.where(valid[:, None], series, torch.zeros((), dtype=torch.float64))
    out = net(cloudy[None], valid[None], days[None])
    torch.testing.assert_close(out, net(zeroed[None], valid[None], days[None]), rtol=0, atol=0)
    out.sum().backward()
    assert torch.isfinite(cloudy.grad).all() and (cloudy.grad[~valid[:, None].expand_as(series)] == 0).all()
    torch.testing.assert_close(net(zeroed[None], valid[None]), net(zeroed[None], valid[None], torch.arange(4)[None]),
                               rtol=0, atol=0)


def test_the_days_matter():
    """The date encoding is used: the same frames on other days give another output."""
    torch.manual_seed(2)
    net = UTAE(2, 3, encoder_widths=(4, 4), num_heads=2).double()
    series, valid, days = _series(3, 8, 8, channels=2, seed=5)
    a = net(series[None], valid[None], days[None])
    b = net(series[None], valid[None], days[None] + 90)
    assert (a - b).abs().max() > 1e-6


@pytest.mark.parametrize("phasors", [0, 2])
def test_aligned_tiles_with_a_halo_equal_the_whole_image(phasors):
    """Windows starting on multiples of 2^(levels−1), with a halo of the receptive field, equal the whole image
    at their centre (no statistic over pixels: ChannelNorm is per pixel; the phasors' blocks are aligned)."""
    torch.manual_seed(3)
    net = UTAE(2, 3, encoder_widths=(4, 4, 4), num_heads=2, phasors=phasors).double()
    series, valid, days = _series(3, 56, 60, channels=2, seed=6)
    whole = net(series[None], valid[None], days[None])[0]
    halo = 20  # the receptive field of 3 levels reaches 19 pixels (measured by gradients, see docs/timeseries.md)
    for top, left in ((0, 0), (8, 12), (16, 4)):
        window = (slice(top, top + 40), slice(left, left + 48))
        tile = net(series[None, :, :, window[0], window[1]], valid[None, :, window[0], window[1]], days[None])[0]
        inner_top, inner_left = (halo if top else 0), (halo if left else 0)
        expected = whole[:, top + inner_top:top + 40 - halo, left + inner_left:left + 48 - halo]
        torch.testing.assert_close(tile[:, inner_top:40 - halo, inner_left:48 - halo], expected, **TOL)
    assert net.size_multiple == 4


def test_phasors_are_the_blocks_mean_of_a_linear_view_of_the_valid_pixels():
    """The attention's extra input channels, by hand: for each date and 2 × 2 block, W·x averaged over the block's
    valid pixels (0 for a block without any)."""
    torch.manual_seed(7)
    net = UTAE(2, 3, encoder_widths=(4, 4), num_heads=2, phasors=2).double()
    series, valid, days = _series(3, 6, 5, channels=2, seed=8)
    valid[1, :2, :2] = False  # a block without data on date 1
    seen = {}
    net.attention.in_norm.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0].detach()))
    net(series[None], valid[None], days[None])
    got = seen["input"].reshape(3, 6, 3, 3)[:, 4:]  # (T, P, 3, 3): the padded 6 × 6 image in 2 × 2 blocks
    w = net.phasor.weight[:, :, 0, 0]
    for t in range(3):
        for by in range(3):
            for bx in range(3):
                values = [w @ series[t, :, y, x] for y in range(2 * by, 2 * by + 2) for x in range(2 * bx, 2 * bx + 2)
                          if y < 6 and x < 5 and valid[t, y, x]]
                expected = torch.stack(values).mean(0) if values else torch.zeros(2, dtype=torch.float64)
                torch.testing.assert_close(got[t, :, by, bx], expected, rtol=1e-12, atol=1e-12)


def test_built_by_name_and_errors():
    assert MODELS["UTAE"] is UTAE and family_of({"library": "cnnkit", "architecture": "UTAE"}) == "attention-series"
    spec = spec_for("UTAE", args={"encoder_widths": [4, 8], "num_heads": 2})
    net = build(spec, in_channels=5, num_classes=3)
    assert isinstance(net, UTAE) and net.encoder_widths == (4, 8)
    assert net(torch.zeros(1, 2, 5, 6, 7), torch.ones(1, 2, 6, 7, dtype=torch.bool)).shape == (1, 3, 6, 7)
    with pytest.raises(ShapeError, match=r"spec\['args'\]\['num_heads'\] must be int"):
        spec_for("UTAE", args={"num_heads": "2"})
    with pytest.raises(ShapeError, match=r"divisible by num_heads.*encoder_widths=\(6, 8\), num_heads=4"):
        UTAE(3, 2, encoder_widths=(6, 8))
    with pytest.raises(ShapeError, match="encoder_widths must be a list of at least 2"):
        UTAE(3, 2, encoder_widths=(8,))
    with pytest.raises(ShapeError, match="decoder_widths must have one width per level"):
        UTAE(3, 2, encoder_widths=(8, 8), decoder_widths=(8, 8, 8))
    net = UTAE(3, 2, encoder_widths=(4, 4), num_heads=2)
    with pytest.raises(ShapeError, match=r"x \(N, T, C, H, W\) with C = in_channels = 3"):
        net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"mask must be \(N, T, H, W\) = \(1, 2, 8, 8\)"):
        net(torch.zeros(1, 2, 3, 8, 8), torch.ones(1, 2, 8, 9, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"days must be \(N, T\) = \(1, 2\)"):
        net(torch.zeros(1, 2, 3, 8, 8), None, torch.zeros(1, 3))
