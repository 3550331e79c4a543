"""The multispectral first layer: the rule weight by weight against plain torch, the property the docs claim
(all data bands equal to one picture g → the pretrained network's output on the grey image (g, g, g)), and the
stem found in smp and timm encoders."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import adapt_stem, adapted_stem_weight, build, stem_convolutions

smp = pytest.importorskip("segmentation_models_pytorch")

COLOUR_INDEX = {"red": 0, "green": 1, "blue": 2}


def rule(weight: torch.Tensor, bands: list[str], validity: bool = True) -> torch.Tensor:
    """The documented rule, written out band by band with plain torch (the test's own reference)."""
    out_channels, _, kh, kw = weight.shape
    n = len(bands)
    new = torch.zeros(out_channels, n + int(validity), kh, kw, dtype=torch.float64)
    grey = (weight[:, 0].double() + weight[:, 1].double() + weight[:, 2].double()) / 3
    for i, band in enumerate(bands):
        source = weight[:, COLOUR_INDEX[band.lower()]].double() if band.lower() in COLOUR_INDEX else grey
        new[:, i] = source * 3.0 / n
    return new.to(weight.dtype)


@pytest.mark.parametrize("bands", [
    ["Blue", "nir", "Red", "swir1", "green", "swir2"],
    ["nir", "swir"],
    ["red", "green", "blue"],
    ["b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11", "b12", "b13"],
])
def test_rule_weight_by_weight(bands):
    weight = torch.randn(8, 3, 7, 7, dtype=torch.float64)
    got = adapted_stem_weight(weight, bands)
    assert got.shape == (8, len(bands) + 1, 7, 7) and got.dtype == torch.float64
    torch.testing.assert_close(got, rule(weight, bands), rtol=0, atol=1e-15)
    assert torch.equal(got[:, -1], torch.zeros(8, 7, 7, dtype=torch.float64))
    without = adapted_stem_weight(weight, bands, validity_band=False)
    torch.testing.assert_close(without, rule(weight, bands, validity=False), rtol=0, atol=1e-15)


def test_rgb_alone_without_validity_is_the_pretrained_layer():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(adapted_stem_weight(weight, ["red", "green", "blue"], validity_band=False), weight)


def test_bgr_weights():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    got = adapted_stem_weight(weight, ["red", "nir"], colour_order=["blue", "green", "red"], validity_band=False)
    torch.testing.assert_close(got[:, 0], weight[:, 2] * 1.5)


def _grey_case(bands: list[str]):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 5, stride=2, padding=2).double()
    adapted = adapt_stem(copy.deepcopy(conv), bands)
    g = torch.randn(2, 1, 19, 23, dtype=torch.float64)
    validity = (torch.rand(2, 1, 19, 23) > 0.3).double()
    x = torch.cat([g] * len(bands) + [validity], dim=1)
    return conv, adapted, g, x


@pytest.mark.parametrize("bands", [
    ["nir", "red", "swir", "blue", "green"],   # the three colours once each
    ["nir", "swir", "red edge", "coastal"],    # none of them
    ["red", "green", "blue"],
])
def test_property_all_bands_equal_give_the_grey_activation(bands):
    conv, adapted, g, x = _grey_case(bands)
    torch.testing.assert_close(adapted(x), conv(torch.cat([g, g, g], dim=1)), rtol=0, atol=1e-12)


def test_property_with_some_colours_differs_by_the_documented_amount():
    bands = ["red", "nir", "swir"]
    conv, adapted, g, x = _grey_case(bands)
    grey = conv(torch.cat([g, g, g], dim=1))
    w = conv.weight.detach()
    deviation = (w[:, 0] - w.mean(dim=1))[:, None] * 3 / len(bands)  # 3/N · (W_red − M)
    expected = grey + F.conv2d(g, deviation, stride=2, padding=2)
    assert (adapted(x) - grey).abs().max() > 1e-3  # not the grey activation ...
    torch.testing.assert_close(adapted(x), expected, rtol=0, atol=1e-12)  # ... but off by exactly that


def _pretrained_file(tmp_path, encoder: str = "resnet18") -> tuple[str, dict, nn.Module]:
    """A "pretrained" 3-band Unet written by the test: its state dict as safetensors."""
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = smp.Unet(encoder, encoder_weights=None, in_channels=3, classes=4)
    for module in net.modules():  # running statistics that are not 0/1, so eval mode is a real test
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = os.fspath(tmp_path / "pretrained.safetensors")
    save_file(state, path)
    return path, state, net


@pytest.mark.parametrize(("encoder", "stems"), [
    ("resnet18", ["encoder.conv1"]),
    ("mobileone_s0", ["encoder.stage0.rbr_scale.conv", "encoder.stage0.rbr_conv.0.conv"]),  # two branches
])
def test_pretrained_file_to_named_bands(tmp_path, encoder, stems):
    path, state, pretrained = _pretrained_file(tmp_path, encoder)
    bands = ["blue", "green", "red", "nir", "swir16"]  # 5: smp's and timm's rule keeps the property only for 3k
    spec = {"library": "smp", "architecture": "Unet", "encoder": encoder}
    with pytest.raises(CnnkitError, match="give band_names"):
        build(spec, in_channels=6, num_classes=4, weights=path)
    net = build(spec, in_channels=6, num_classes=4, weights=path, band_names=bands)
    got = net.state_dict()
    keys = {f"{name}.weight" for name in stems}
    assert set(got) == set(state)
    for key in state:
        if key in keys:
            assert got[key].shape == (state[key].shape[0], 6, *state[key].shape[2:])
            torch.testing.assert_close(got[key], rule(state[key], bands), rtol=0, atol=1e-7)
        else:
            assert torch.equal(got[key], state[key]), key
    # The property on the whole network: every band equal to g gives the pretrained network's output on
    # the grey image (g, g, g), whatever the validity band holds (eval mode, run in float64; the adapted
    # weights themselves are float32, hence the tolerance).
    net, pretrained = net.double().eval(), pretrained.double().eval()
    g = torch.randn(1, 1, 64, 64, dtype=torch.float64)
    x = torch.cat([g] * len(bands) + [(torch.rand(1, 1, 64, 64) > 0.5).double()], dim=1)
    with torch.no_grad():
        grey = pretrained(torch.cat([g, g, g], dim=1))
        torch.testing.assert_close(net(x), grey, rtol=1e-4, atol=1e-4)
        # the test can fail: smp's rule (colours repeated in turn, all × 3/N) on the same weights does not keep it
        for key in keys:
            module = net.get_submodule(key.removesuffix(".weight"))
            cyclic = torch.stack([state[key][:, i % 3] for i in range(len(bands))], dim=1) * 3 / len(bands)
            module.weight.data[:, : len(bands)] = cyclic.double()
        assert (net(x) - grey).abs().max() > 1e-2


def test_a_file_whose_stem_fits_is_loaded_as_it_is(tmp_path):
    path, state, _ = _pretrained_file(tmp_path)
    net = build({"library": "smp", "architecture": "Unet", "encoder": "resnet18"}, in_channels=3, num_classes=4,
                weights=path)
    assert torch.equal(net.state_dict()["encoder.conv1.weight"], state["encoder.conv1.weight"])


@pytest.mark.parametrize("encoder", ["tu-resnet18d", "tu-regnety_002", "tu-efficientnet_b0", "tu-convnext_atto"])
def test_stem_is_timms_first_conv(encoder):
    net = build({"library": "smp", "architecture": "Unet", "encoder": encoder}, in_channels=3, num_classes=2,
                device="meta")
    first = net.encoder.model.pretrained_cfg["first_conv"]
    (found,) = stem_convolutions(net)
    # timm's feature wrapper flattens nested Sequentials with "_" (stem.0 → stem_0)
    assert found.replace("_", ".") == f"encoder.model.{first}".replace("_", ".")


def test_tracing_leaves_the_network_as_it_was():
    net = build({"library": "cnnkit", "architecture": "TinySegNet"}, in_channels=4, num_classes=2)
    net.stem[1].eval()
    before = {name: module.training for name, module in net.named_modules()}
    assert stem_convolutions(net, in_channels=4) == ["stem.0"]
    assert {name: module.training for name, module in net.named_modules()} == before
    assert all(not module._forward_pre_hooks for module in net.modules())


def test_refusals():
    conv = nn.Conv2d(3, 4, 3)
    with pytest.raises(CnnkitError, match=r"distinct \(case ignored\). Received \['red'\]"):
        adapt_stem(copy.deepcopy(conv), ["red", "Red"])
    with pytest.raises(CnnkitError, match="non-empty list of names"):
        adapt_stem(copy.deepcopy(conv), "red,green,blue")
    with pytest.raises(CnnkitError, match="non-empty strings"):
        adapt_stem(copy.deepcopy(conv), ["red", ""])
    with pytest.raises(CnnkitError, match="must read 3 channels"):
        adapt_stem(nn.Conv2d(4, 4, 3), ["red"])
    with pytest.raises(CnnkitError, match="groups=3"):
        adapt_stem(nn.Conv2d(3, 3, 3, groups=3), ["red"])
    with pytest.raises(CnnkitError, match=r"not an nn\.Conv2d"):
        adapt_stem(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), ["red"], stem=["1"])

    class Scaled(nn.Module):  # the input is changed before the first convolution
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x * 2)

    with pytest.raises(CnnkitError, match="reads its input directly"):
        adapt_stem(Scaled(), ["red"])
    adapted = adapt_stem(Scaled(), ["red", "nir"], stem=["conv"])
    assert adapted.conv.in_channels == 3 and adapted.conv.weight.shape == (4, 3, 3, 3)
