"""build(): every smp architecture equals smp's own network (names and shapes), the meta device holds the
checks, and tampered specs are refused before memory is spent (measured in a child process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.models import build, count_parameters

smp = pytest.importorskip("segmentation_models_pytorch")

# The architectures, read from smp independently of cnnkit.models (its own create_model table).
ARCHITECTURES = sorted(cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values())
VIT = "tu-vit_tiny_patch16_224"  # DPT reads a plain ViT's blocks: it has no ResNet form


def _encoder(architecture: str) -> str:
    return VIT if architecture == "DPT" else "resnet18"


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_every_smp_architecture_is_reachable():
    from cnnkit.models import list_architectures

    assert sorted(list_architectures()["smp"]) == ARCHITECTURES
    assert {"Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet", "PAN", "MAnet", "PSPNet"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_build_equals_smp_built_directly(architecture):
    encoder = _encoder(architecture)
    spec = {"library": "smp", "architecture": architecture, "encoder": encoder}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = getattr(smp, architecture)(encoder_name=encoder, encoder_weights=None, in_channels=6, classes=4)
        net = build(spec, in_channels=6, num_classes=4)
        meta = build(spec, in_channels=6, num_classes=4, device="meta")
    assert type(net) is type(reference)
    assert _shapes(net) == _shapes(reference)
    assert _shapes(meta) == _shapes(reference)
    assert all(t.is_meta for t in meta.state_dict().values())
    assert not any(t.is_meta for t in net.state_dict().values())
    assert net.training
    count = sum(p.numel() for p in reference.parameters())
    assert count_parameters(spec, in_channels=6, num_classes=4) == count
    if architecture != "DPT":  # its ViT takes 224 × 224 only, seconds on a CPU; the meta pass checked its shape
        net.eval()
        with torch.no_grad():
            assert net(torch.randn(1, 6, 128, 128)).shape == (1, 4, 128, 128)


def test_dpt_on_a_resnet_is_refused_with_smp_reason():
    with pytest.raises(CnnkitError, match=r"DPT/resnet18 .* could not be built"):
        build({"library": "smp", "architecture": "DPT", "encoder": "resnet18"}, in_channels=4, num_classes=2,
              device="meta")


@pytest.mark.parametrize("encoder", ["mit_b0", "mobileone_s0", "efficientnet-b0", "tu-convnext_atto"])
def test_other_encoders_build_on_meta_like_smp(encoder):
    """MiT reads stochastic-depth rates with .item() while being built (a meta tensor cannot): still built."""
    spec = {"library": "smp", "architecture": "Unet", "encoder": encoder}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = smp.Unet(encoder, encoder_weights=None, in_channels=5, classes=3)
        meta = build(spec, in_channels=5, num_classes=3, device="meta")
    assert _shapes(meta) == _shapes(reference)


def test_cnnkit_networks_build_with_their_arguments():
    net = build({"library": "cnnkit", "architecture": "SeriesSegNet", "args": {"width": 4, "hidden": 6}},
                in_channels=3, num_classes=2)
    assert (net.width, net.hidden) == (4, 6)
    with pytest.raises(CnnkitError, match="kernel_size must be odd"):
        build({"library": "cnnkit", "architecture": "SeriesSegNet", "args": {"kernel_size": 2}}, in_channels=3,
              num_classes=2, device="meta")


def test_output_size_arguments_are_checked_on_meta():
    with pytest.raises(CnnkitError, match=r"maps a \(1, 4, 224, 224\) image to \(1, 2, 448, 448\)"):
        build({"library": "smp", "architecture": "FPN", "encoder": "resnet18", "args": {"upsampling": 8}},
              in_channels=4, num_classes=2, device="meta")


def test_user_builders(monkeypatch):
    from torch import nn

    from cnnkit.models import family_of, register, registry, training_defaults
    from cnnkit.models.registry import _USER  # a fresh table for this test only

    monkeypatch.setattr(registry, "_USER", type(_USER)("registered network"))

    def head(in_channels: int, num_classes: int, hidden: int = 8) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_classes, 1))

    register("Head", head, family="transformer")
    spec = {"library": "user", "architecture": "Head", "args": {"hidden": 3}}
    assert build(spec, in_channels=4, num_classes=2)[0].out_channels == 3
    assert family_of(spec) == "transformer" and training_defaults(spec).lr == 1e-4
    with pytest.raises(CnnkitError, match="must be int"):
        build({**spec, "args": {"hidden": False}}, in_channels=4, num_classes=2)
    with pytest.raises(CnnkitError, match="one of cnnkit's own networks"):
        register("TinySegNet", head)
    with pytest.raises(CnnkitError, match="Unknown family"):
        register("Other", head, family="fast")


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"in_channels": 0}, "in_channels must be an integer from 1 to 1024"),
    ({"in_channels": True}, "in_channels must be an integer"),
    ({"num_classes": 10**7}, "num_classes must be an integer from 1 to 4096"),
    ({"num_classes": 2.0}, "num_classes must be an integer"),
    ({"weights": 123}, "weights must be None, a weight name"),
    ({"band_names": ["red", "green"]}, "band_names must name the 4 data bands"),
    ({"band_names": "red,green,blue,nir"}, "band_names must name"),
    ({"max_parameters": 10**6, "spec": {"library": "cnnkit", "architecture": "TinySegNet",
                                        "args": {"width": 4000}}}, r"864,[\d,]+ parameters and buffers .* budget"),
])
def test_build_arguments_are_checked(kwargs, words):
    arguments = {"spec": {"library": "cnnkit", "architecture": "TinySegNet"}, "in_channels": 5, "num_classes": 3}
    arguments.update(kwargs)
    with pytest.raises(CnnkitError, match=words):
        build(arguments.pop("spec"), **arguments)


# -- memory, in a child process so that the peak RSS is this test's own -------------------------------------

CHILD = textwrap.dedent("""
    import json, resource, sys, warnings
    warnings.simplefilter("ignore")
    import torch, segmentation_models_pytorch
    from cnnkit.errors import CnnkitError
    from cnnkit.models import build
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    # warm up every code path once (imports, the meta forward pass) before the baseline
    build({"library": "smp", "architecture": "Unet", "encoder": "resnet18"}, in_channels=4, num_classes=2,
          device="meta")
    base = peak()
    results = {}
    for label, spec, kwargs in json.loads(sys.argv[1]):
        try:
            build(spec, in_channels=kwargs.get("in_channels", 4), num_classes=kwargs.get("num_classes", 2),
                  device=kwargs.get("device", "cpu"))
            results[label] = "built"
        except CnnkitError as error:
            results[label] = type(error).__name__ + ": " + str(error)
    print(json.dumps({"delta_mb": peak() - base, "results": results}))
""")

CASES = [
    ("width 100000", {"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 100_000}}, {}),
    ("width 4096", {"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 4096}}, {}),
    ("classes 10**7", {"library": "cnnkit", "architecture": "TinySegNet"}, {"num_classes": 10**7}),
    ("smp decoder 4096", {"library": "smp", "architecture": "Unet", "encoder": "resnet18",
                          "args": {"decoder_channels": [4096] * 5}}, {}),
    ("resnet152 on meta", {"library": "smp", "architecture": "UnetPlusPlus", "encoder": "resnet152"},
     {"device": "meta", "in_channels": 13}),
]


def test_refusals_and_meta_builds_stay_far_below_300_mb():
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES)], capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert results["width 100000"].startswith("ShapeError") and "from -4096 to 4096" in results["width 100000"]
    assert "parameters and buffers" in results["width 4096"] and "budget" in results["width 4096"]
    assert "num_classes must be an integer from 1 to 4096" in results["classes 10**7"]
    assert "budget" in results["smp decoder 4096"]
    assert results["resnet152 on meta"] == "built"  # 26 million parameters (105 MB in float32) and none allocated
    assert report["delta_mb"] < 100, report
