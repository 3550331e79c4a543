"""Tiled inference against the whole-image forward pass (plain torch), and refusals where no halo can work."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.models import TinySegNet
from cnnkit.predict import plan_tiles, tile_geometry, tiled_forward


def _randomise_norms(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


class UNet(nn.Module):
    """Down- and up-sampling through every kind of op the tracer knows: strided and dilated convs, reflect
    padding, max and average pooling, a transposed conv, bilinear upsampling, skip concatenations."""

    def __init__(self, in_channels=3, num_classes=4, width=8):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1, padding_mode="reflect"),
                                  nn.BatchNorm2d(w), nn.ReLU())
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(w, 2 * w, 3, padding=2, dilation=2), nn.ReLU())
        self.enc3 = nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(),
                                  nn.AvgPool2d(3, stride=1, padding=1))
        self.up3 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.ReLU())
        self.dec1 = nn.Sequential(nn.Conv2d(3 * w, w, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(w, num_classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up3(self.enc3(e2)), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear"), e1], 1))
        return self.head(d1)


@pytest.mark.parametrize("make", [lambda: TinySegNet(5, 4, width=8), lambda: UNet(5, 4)], ids=["TinySegNet", "UNet"])
@pytest.mark.parametrize(("size", "tile"), [((100, 76), 32), ((64, 132), 24), ((36, 36), 64)])
def test_tiled_equals_whole_image(make, size, tile):
    torch.manual_seed(0)
    model = _randomise_norms(make())
    geometry = tile_geometry(model, 5)
    scene = torch.randn(1, 5, *size)
    with torch.no_grad():
        whole = model(scene)
    tiled = tiled_forward(model, scene, geometry, tile=tile)
    assert tiled.shape == whole.shape
    assert torch.equal(tiled.argmax(1), whole.argmax(1))
    torch.testing.assert_close(tiled.softmax(1), whole.softmax(1), atol=1e-5, rtol=0)


def test_halo_is_needed_and_enough():
    """Tiles with too small a halo differ from the whole image (so the test above can fail); the traced one does
    not. (The traced halo bounds every path at once, so it may be larger than the tightest exact one.)"""
    torch.manual_seed(1)
    model = _randomise_norms(UNet(5, 4))
    geometry = tile_geometry(model, 5)
    scene = torch.randn(1, 5, 96, 96)
    with torch.no_grad():
        whole = model(scene)
    short = type(geometry)(geometry.multiple, (4, 4), geometry.scale,
                           geometry.reach)
    assert (tiled_forward(model, scene, short, tile=24) - whole).abs().max() > 1e-3
    assert (tiled_forward(model, scene, geometry, tile=24) - whole).abs().max() < 1e-5


def test_geometry_of_a_chain_by_hand():
    """conv3 p1 (+1) → pool 2 (+1) → conv3 p1 at half resolution (+2) → nearest ×2 at half resolution (+2): 6."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, padding=1),
                        nn.Upsample(scale_factor=2)).eval()
    geometry = tile_geometry(net, 1)
    assert geometry.multiple == (2, 2)
    assert geometry.halo == (6, 6)
    assert len(geometry.ops) == 4 and "1" in geometry.ops[1]


def test_reading_function_and_writer():
    """A scene given as a window reader, written window by window, equals the whole pass."""
    torch.manual_seed(2)
    model = _randomise_norms(TinySegNet(3, 2, width=4))
    geometry = tile_geometry(model, 3)
    scene = torch.randn(1, 3, 48, 80)
    out = torch.full((1, 2, 48, 80), float("nan"))
    reads = []

    def read(window):
        reads.append(window)
        return scene[(slice(None), slice(None), *window)]

    def write(window, piece):
        assert torch.isnan(out[(slice(None), slice(None), *window)]).all(), "a pixel written twice"
        out[(slice(None), slice(None), *window)] = piece

    assert tiled_forward(model, read, geometry, tile=16, size=(48, 80), write=write) is None
    with torch.no_grad():
        torch.testing.assert_close(out, model(scene), atol=1e-5, rtol=0)
    assert max((w[0].stop - w[0].start) * (w[1].stop - w[1].start) for w in reads) < 48 * 80


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), multiple=st.sampled_from([1, 2, 4]),
       tile=st.integers(1, 40), halo=st.integers(0, 3))
def test_plan_covers_the_scene_once(h, w, multiple, tile, halo):
    from fractions import Fraction

    from cnnkit.predict import TileGeometry

    size = (h * multiple, w * multiple)
    geometry = TileGeometry((multiple,) * 2, (halo * multiple,) * 2, (Fraction(1),) * 2, (Fraction(0),) * 2)
    count = torch.zeros(size, dtype=torch.int64)
    for t in plan_tiles(size, geometry, tile):
        count[t.write_slices] += 1
        for d, ((r0, r1), (w0, w1), (c0, c1)) in enumerate(zip(t.read, t.write, t.crop)):
            assert r0 % multiple == 0 and 0 <= r0 <= w0 and w1 <= r1
            assert w0 - r0 == c0 and c1 - c0 == w1 - w0
            assert r0 == max(0, w0 - halo * multiple) and r1 == min(size[d], w1 + halo * multiple)
    assert (count == 1).all()


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        q = self.conv(x).flatten(2).transpose(1, 2)
        return F.scaled_dot_product_attention(q, q, q).transpose(1, 2).reshape(x.shape[0], 4, *x.shape[2:])


class _SpatialMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y - y.mean(dim=(2, 3), keepdim=True)  # not a windowed op: only the probe can see it


@pytest.mark.parametrize(("model", "match"), [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)), r"adaptive_avg_pool2d in 1.*global or adaptive"),
    (_Attention(), "scaled_dot_product_attention"),
    (nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")), "circular"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)),
     "align_corners"),
    (_SpatialMean(), "do not reproduce"),
])
def test_refused_with_the_op(model, match):
    with pytest.raises(UnsupportedError, match=match):
        tile_geometry(model.eval(), 3)


def test_train_mode_refused():
    with pytest.raises(UnsupportedError, match="eval mode"):
        tile_geometry(TinySegNet(3, 2), 3)


def test_scene_size_must_fit_the_stride():
    model = TinySegNet(3, 2).eval()
    geometry = tile_geometry(model, 3)
    with pytest.raises(ShapeError, match="multiple of the network's total stride 4"):
        tiled_forward(model, torch.zeros(1, 3, 30, 32), geometry, tile=16)
