"""Weights files as untrusted input: only regular files inside the root, names and shapes compared from the
header by layer, non-finite values and pickled code refused."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models import build, check_state_dict, load_weights, read_header, regular_file

smp = pytest.importorskip("segmentation_models_pytorch")

UNET = {"library": "smp", "architecture": "Unet", "encoder": "resnet18"}


def _smp(architecture: str, encoder: str = "resnet18", in_channels: int = 4, classes: int = 3) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(smp, architecture)(encoder, encoder_weights=None, in_channels=in_channels, classes=classes)


def _save(state: dict, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, os.fspath(path))
    return os.fspath(path)


def test_weights_of_another_architecture_are_listed_by_layer(tmp_path):
    fpn = _smp("FPN").state_dict()
    path = _save(fpn, tmp_path / "fpn.safetensors")
    net = build(UNET, in_channels=4, num_classes=3, device="meta")
    unet = net.state_dict()
    diff = check_state_dict(net, read_header(path), strict=False)
    # independent reference: the two state dicts compared by hand
    assert set(diff.missing) == set(unet) - set(fpn)
    assert set(diff.unexpected) == set(fpn) - set(unet)
    assert {(k, a, b) for k, a, b in diff.mismatched} == {
        (k, tuple(unet[k].shape), tuple(fpn[k].shape)) for k in set(unet) & set(fpn) if unet[k].shape != fpn[k].shape}
    assert diff.mismatched and diff.missing and diff.unexpected
    text = diff.describe()
    assert "segmentation_head.0.weight: network (3, 16, 3, 3), file (3, 128, 1, 1)" in text
    assert "decoder.blocks.0.conv1.0: weight" in text  # missing, named by layer
    assert "in the file, not in the network" in text
    with pytest.raises(CnnkitError, match=r"do not fit Unet/resnet18 with in_channels=4, num_classes=3"):
        build(UNET, in_channels=4, num_classes=3, weights=path)


def test_a_deeper_encoder_and_other_classes(tmp_path):
    path = _save(_smp("Unet", "resnet34", classes=5).state_dict(), tmp_path / "r34.safetensors")
    with pytest.raises(CnnkitError) as caught:
        build(UNET, in_channels=4, num_classes=3, weights=path)
    message = str(caught.value)
    assert "encoder.layer1.2.conv1: weight" in message  # resnet34's third block: not in resnet18
    assert "segmentation_head.0.weight: network (3, 16, 3, 3), file (5, 16, 3, 3)" in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_round_trip_and_root(tmp_path, suffix):
    reference = _smp("Unet")
    state = reference.state_dict()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        _save(state, path)
    else:
        torch.save(state, path)
    assert read_header(path) == {k: tuple(v.shape) for k, v in state.items()}
    net = build(UNET, in_channels=4, num_classes=3, weights=path.name, root=tmp_path)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_strict_false_loads_what_fits(tmp_path):
    net = _smp("Unet")
    other = _smp("Unet", classes=7).state_dict()
    path = _save(other, tmp_path / "seven.safetensors")
    diff = load_weights(net, path, strict=False)
    assert [k for k, _, _ in diff.mismatched] == ["segmentation_head.0.weight", "segmentation_head.0.bias"]
    assert torch.equal(net.state_dict()["encoder.conv1.weight"], other["encoder.conv1.weight"])
    assert net.segmentation_head[0].weight.shape[0] == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, bad):
    state = _smp("Unet").state_dict()
    state["decoder.blocks.1.conv2.0.weight"][0, 0, 0, 0] = bad
    path = _save(state, tmp_path / "bad.safetensors")
    with pytest.raises(CnnkitError, match=r"NaN or infinite values in 1 tensor: decoder.blocks.1.conv2.0.weight"):
        build(UNET, in_channels=4, num_classes=3, weights=path)


def test_a_float_weight_stored_as_integers_is_refused(tmp_path):
    state = {"weight": torch.ones(3, 2, dtype=torch.int32), "bias": torch.zeros(3)}
    path = _save(state, tmp_path / "int.safetensors")
    with pytest.raises(CnnkitError, match=r"holds weight as torch.int32, where the network holds torch.float32"):
        load_weights(nn.Linear(2, 3), path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_load_only_tensors(tmp_path):
    code = tmp_path / "code.pt"
    torch.save({"weight": _Payload()}, code)
    with pytest.raises(CnnkitError, match="weights_only=True"):
        load_weights(nn.Linear(2, 3), code)
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": nn.Linear(2, 3).state_dict(), "epoch": 3}, nested)
    with pytest.raises(CnnkitError, match=r"flat name → tensor state dict"):
        load_weights(nn.Linear(2, 3), nested)
    big = tmp_path / "big.pt"
    torch.save({"weight": torch.zeros(3, 2), "bias": torch.zeros(3), "padding": torch.zeros(1_000_000)}, big)
    with pytest.raises(CnnkitError, match="more than twice what the network's 2 tensors take"):
        load_weights(nn.Linear(2, 3), big)


def test_files_outside_the_root_are_refused(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    state = nn.Linear(2, 3).state_dict()
    outside = _save(state, other / "model.safetensors")
    inside = _save(state, run / "model.safetensors")
    (run / "link.safetensors").symlink_to(outside)
    (run / "inner.safetensors").symlink_to(inside)
    (run / "folder.safetensors").mkdir()
    os.mkfifo(run / "fifo.safetensors")
    assert regular_file("inner.safetensors", root=run) == run.resolve() / "model.safetensors"
    assert regular_file(inside, root=run) == run.resolve() / "model.safetensors"
    for given in ("../other/model.safetensors", outside, "link.safetensors"):
        with pytest.raises(CnnkitError, match="lies outside"):
            load_weights(nn.Linear(2, 3), given, root=run)
    for given, words in (("folder.safetensors", "not a regular file"), ("fifo.safetensors", "not a regular file"),
                         ("missing.safetensors", "does not exist")):
        with pytest.raises(CnnkitError, match=words):
            read_header(given, root=run)
    with pytest.raises(CnnkitError, match="not a regular file"):
        read_header("/dev/zero")
    (run / "model.json").write_text("{}")
    with pytest.raises(CnnkitError, match=r"must end in one of \('.safetensors', '.pt', '.pth'\)"):
        read_header("model.json", root=run)
    for given in (None, 123, ["model.safetensors"]):
        with pytest.raises(CnnkitError, match="must be a path"):
            read_header(given, root=run)


def test_a_damaged_file_is_named(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CnnkitError, match=r"broken\.safetensors' is not a readable safetensors file"):
        read_header(path)
    pt = tmp_path / "broken.pt"
    pt.write_bytes(b"not a pickle")
    with pytest.raises(CnnkitError, match=r"broken\.pt' is not a PyTorch state dict"):
        read_header(pt)
