"""masked() on the models people use: torchvision and segmentation_models_pytorch, random weights, no downloads.

For every model, with per-sample image sizes that respect its stride and differ per sample:

* eval mode, float64: each sample's masked output equals the sample run alone to 1e-10 (relative to the output's
  largest value);
* eval mode, float32: within twice the plain model's own float32 noise (the plain model run alone in float32 vs
  float64), with a floor of 1e-6;
* train mode: every BatchNorm's running statistics equal the momentum update with the mean and unbiased
  variance of its input over valid positions only, computed here with plain torch from the BatchNorm's input
  and each sample's extent there (the shapes the sample alone gives);

MAnet's position attention (a softmax over every pair of positions) runs per sample without a hint: its refusal on
the padded canvas makes masked() run that module once per group of samples of one extent
(``auto_per_sample``); PSPNet's pyramid bins are adaptive pooling per sample.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit.masking import masked, pad_batch

tvm = pytest.importorskip("torchvision.models", reason="the model zoo needs torchvision (test extra)")
smp = pytest.importorskip("segmentation_models_pytorch", reason="the model zoo needs segmentation-models-pytorch")
tvs = pytest.importorskip("torchvision.models.segmentation")

SMALL = [(32, 64), (64, 32)]  # multiples of 32 (every model's stride), different per sample
PAN_SIZES = [(128, 160), (160, 128)]  # PAN's pyramid halves the stride-16 map three more times

pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: one thread is fastest


class VGGGlobal(nn.Module):
    """vgg11_bn's features with a global-pooling head (its own 7×7 adaptive pooling is refused)."""

    def __init__(self):
        super().__init__()
        self.features = tvm.vgg11_bn(weights=None).features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))

    def forward(self, x):
        return self.head(self.features(x))


def _tv(name):
    return lambda: getattr(tvm, name)(weights=None)


def _seg(name):
    return lambda: getattr(tvs, name)(weights=None, weights_backbone=None)


def _smp(arch, encoder):
    return lambda: getattr(smp, arch)(encoder, encoder_weights=None, classes=3)


# name -> (builder, image sizes, expected: "exact" or a regex the refusal must match, marks)
ZOO = {
    "resnet18": (_tv("resnet18"), SMALL, "exact", ()),
    "resnet50": (_tv("resnet50"), SMALL, "exact", ()),
    "densenet121": (_tv("densenet121"), SMALL, "exact", ()),
    "mobilenet_v2": (_tv("mobilenet_v2"), SMALL, "exact", ()),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), SMALL, "exact", ()),
    "efficientnet_b0": (_tv("efficientnet_b0"), SMALL, "exact", ()),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), SMALL, "exact", ()),
    "shufflenet_v2_x0_5": (_tv("shufflenet_v2_x0_5"), SMALL, "exact", ()),
    "convnext_tiny": (_tv("convnext_tiny"), SMALL, "exact", ()),
    "vgg11_bn (global pooling head)": (VGGGlobal, SMALL, "exact", ()),
    "fcn_resnet50": (_seg("fcn_resnet50"), SMALL, "exact", ()),
    "deeplabv3_mobilenet_v3_large": (_seg("deeplabv3_mobilenet_v3_large"), SMALL, "exact", ()),
    "lraspp_mobilenet_v3_large": (_seg("lraspp_mobilenet_v3_large"), SMALL, "exact", ()),
}
for _arch in ("Unet", "UnetPlusPlus", "FPN", "DeepLabV3Plus", "Linknet", "MAnet", "PAN"):
    for _encoder in ("resnet18", "mobilenet_v2", "efficientnet-b0"):
        ZOO[f"smp.{_arch}({_encoder})"] = (_smp(_arch, _encoder), PAN_SIZES if _arch == "PAN" else SMALL, "exact", ())
ZOO["smp.PSPNet(resnet18)"] = (_smp("PSPNet", "resnet18"), SMALL, "exact", ())


def _images(sizes, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g).to(dtype) for h, w in sizes]


def _main(out):
    return out["out"] if isinstance(out, dict) else out


def _outputs(out) -> list[torch.Tensor]:
    out = _main(out)
    return list(out.unpad()) if hasattr(out, "unpad") else list(out)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


def _first(record: dict, key, value) -> None:
    record.setdefault(key, value)  # a pre-hook returning anything but None would replace the module's input



def _bn_input_shapes(model, image) -> dict[str, tuple[int, ...]]:
    """The spatial shape of every BatchNorm's input when ``image`` runs alone (its extent in the batch)."""
    shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, name=name: _first(shapes, name, tuple(inp[0].shape[2:]))))
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=list(spec[3]), id=name) for name, spec in ZOO.items()]
)
def test_model_zoo(name):
    build, sizes, expected, _ = ZOO[name]
    torch.manual_seed(0)
    model = build().eval()

    assert expected == "exact"

    # eval, float64: masked == alone to 1e-10
    model.double()
    images64 = _images(sizes, torch.float64)
    with torch.no_grad():
        out64 = _outputs(masked(model)(pad_batch(images64)))
        alone64 = [_main(model(img[None]))[0] for img in images64]
    for n, (o, ref) in enumerate(zip(out64, alone64)):
        assert ref.std() > 1e-3 * ref.abs().max() > 0, "a constant output would make the comparison vacuous"
        assert _relative(o, ref) <= 1e-10, (name, n, _relative(o, ref))

    # eval, float32: within twice the plain model's own float32 noise
    model.float()
    images32 = [img.float() for img in images64]
    with torch.no_grad():
        out32 = _outputs(masked(model)(pad_batch(images32)))
        alone32 = [_main(model(img[None]))[0] for img in images32]
    for n in range(len(images32)):
        noise = _relative(alone32[n], alone64[n])
        assert _relative(out32[n], alone64[n]) <= max(2 * noise, 1e-6), (name, n, noise)

    # train: BatchNorm running statistics over valid positions only
    extents = [_bn_input_shapes(model, img) for img in images32]
    inputs, hooks = {}, []
    for bn_name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, bn_name=bn_name: _first(inputs, bn_name, inp[0].detach().double())))
    before = {k: (m.running_mean.clone(), m.running_var.clone(), m.momentum) for k, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    model.train()
    try:
        masked(model)(pad_batch(images32))
    finally:
        for h in hooks:
            h.remove()
    assert set(inputs) == set(extents[0]), "the BatchNorms that run alone run on the batch"
    modules = dict(model.named_modules())
    for bn_name, (mean0, var0, momentum) in before.items():
        if bn_name not in inputs:  # never called (e.g. smp's efficientnet encoder keeps an unused head norm)
            torch.testing.assert_close(modules[bn_name].running_mean, mean0, rtol=0, atol=0)
            continue
        x = inputs[bn_name]
        pixels = torch.cat([x[(n, slice(None), *(slice(0, s) for s in extents[n][bn_name]))].flatten(1)
                            for n in range(len(images32))], dim=1)  # (C, valid positions)
        m = modules[bn_name]
        torch.testing.assert_close(m.running_mean.double(), (1 - momentum) * mean0.double() + momentum * pixels.mean(1),
                                   rtol=1e-4, atol=1e-5, msg=f"{name}: {bn_name}.running_mean")
        torch.testing.assert_close(m.running_var.double(), (1 - momentum) * var0.double() + momentum * pixels.var(1),
                                   rtol=1e-4, atol=1e-5, msg=f"{name}: {bn_name}.running_var")


def test_the_whole_zoo_is_exact():
    # Was 31 of 35: MAnet's position attention (three encoders) and PSPNet's pyramid bins were refused.
    exact = sum(spec[2] == "exact" for spec in ZOO.values())
    assert (exact, len(ZOO)) == (35, 35)
