"""weights="imagenet": through smp's and timm's own download and cache. Offline (Hugging Face's offline mode,
the library's real code path: no network call, no retry, no hang) the error names the cache folder this process
uses and how to fill it; with the file served locally, the adapted stem follows the rule."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from cnnkit.errors import CnnkitError
from cnnkit.models import adapted_stem_weight, build
from cnnkit.models.pretrained import weights_location

smp = pytest.importorskip("segmentation_models_pytorch")
constants = pytest.importorskip("huggingface_hub.constants")

UNET = {"library": "smp", "architecture": "Unet", "encoder": "resnet18"}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Hugging Face Hub in offline mode with an empty cache of this test's own."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", os.fspath(cache))
    return os.fspath(cache)


@pytest.mark.parametrize(("encoder", "folder"), [
    ("resnet18", "models--smp-hub--resnet18.imagenet"),
    ("tu-resnet18", "models--timm--resnet18.a1_in1k"),
])
def test_offline_error_names_the_cache(offline, encoder, folder):
    with pytest.raises(CnnkitError) as caught:
        build({**UNET, "encoder": encoder}, in_channels=3, num_classes=2, weights="imagenet")
    message = str(caught.value)
    assert f"Could not get the pretrained weights 'imagenet' of encoder {encoder!r}" in message
    assert "LocalEntryNotFoundError" in message  # the library's own offline exception, named
    assert os.path.join(offline, folder) in message  # the cache folder this process uses
    assert "snapshot_download" in message and "HF_HUB_OFFLINE=1" in message and "HF_HUB_CACHE" in message


def test_url_weights_name_torch_hubs_folder(monkeypatch):
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]
    monkeypatch.setitem(settings, "old", {"url": "https://example.org/weights/resnet18-abc.pth"})
    text = weights_location("resnet18", "old")
    assert os.path.join(torch.hub.get_dir(), "checkpoints", "resnet18-abc.pth") in text
    assert "TORCH_HOME" in text


def test_weight_names_are_checked():
    with pytest.raises(CnnkitError, match=r"Unknown weights 'imagenett' for encoder 'resnet18'. Closest: \['imagenet'"):
        build(UNET, in_channels=3, num_classes=2, weights="imagenett")
    with pytest.raises(CnnkitError, match="tag goes in the encoder name"):
        build({**UNET, "encoder": "tu-resnet18"}, in_channels=3, num_classes=2, weights="ssl")
    with pytest.raises(CnnkitError, match="exist for smp encoders only"):
        build({"library": "cnnkit", "architecture": "TinySegNet"}, in_channels=3, num_classes=2, weights="imagenet")


@pytest.fixture
def served(monkeypatch, tmp_path):
    """smp's download answered from files written by the test: a seeded resnet18 encoder as "ImageNet"."""
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = smp.encoders.get_encoder("resnet18", weights=None)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, os.fspath(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}))
    asked = []

    def download(repo_id, filename, revision=None, **_):
        asked.append((repo_id, filename))
        return os.fspath(tmp_path / filename)

    monkeypatch.setattr(smp.encoders, "hf_hub_download", download)
    return state, asked


def test_imagenet_weights_adapted_to_named_bands(served):
    state, asked = served
    bands = ["nir", "red", "green", "blue"]
    with pytest.raises(CnnkitError, match="give band_names"):
        build(UNET, in_channels=5, num_classes=2, weights="imagenet")
    net = build(UNET, in_channels=5, num_classes=2, weights="imagenet", band_names=bands)
    assert ("smp-hub/resnet18.imagenet", "model.safetensors") in asked
    got = net.encoder.state_dict()
    torch.testing.assert_close(got["conv1.weight"], adapted_stem_weight(state["conv1.weight"], bands), rtol=0,
                               atol=0)
    expected_first = (state["conv1.weight"].double().sum(dim=1) / 3 * 3 / 4).float()  # nir: mean × 3/4, by hand
    torch.testing.assert_close(got["conv1.weight"][:, 0], expected_first, rtol=0, atol=1e-7)
    assert torch.equal(got["conv1.weight"][:, 4], torch.zeros_like(got["conv1.weight"][:, 4]))
    for key, value in state.items():
        if key != "conv1.weight":
            assert torch.equal(got[key], value), key


def test_imagenet_rgb_without_names_is_smps_network(served):
    state, _ = served
    net = build(UNET, in_channels=3, num_classes=2, weights="imagenet")
    assert torch.equal(net.encoder.conv1.weight, state["conv1.weight"])
