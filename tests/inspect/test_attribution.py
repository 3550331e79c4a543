"""Grad-CAM and saliency on constructed networks whose correct answer is known by construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import ShapeError
from cnnkit.inspect import grad_cam, saliency


def quadrant_masks(size: int = 8) -> torch.Tensor:
    """(4, size, size) masks of the quadrants: top-left, top-right, bottom-left, bottom-right."""
    h = size // 2
    m = torch.zeros(4, size, size)
    m[0, :h, :h] = m[1, :h, h:] = m[2, h:, :h] = m[3, h:, h:] = 1
    return m


class Gate(nn.Module):
    """Multiplies channel k by a fixed spatial mask k (a positional feature, fixed by construction)."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.register_buffer("masks", masks, persistent=False)

    def forward(self, x):
        return F.relu(x) * self.masks


class QuadrantClassifier(nn.Module):
    """Logit 0 depends only on the top-left quadrant of the input; logit 1 only on the rest."""

    def __init__(self, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        with torch.no_grad():  # positive filters: on inputs >= 0 the features are > 0 everywhere
            self.conv.weight.uniform_(0.1, 1.0)
            self.conv.bias.fill_(0.1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        size = 4 if pool else 8
        tl = quadrant_masks(size)[0]
        self.gate = Gate(torch.stack([tl, 1 - tl]))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.gate(self.pool(self.conv(x))))


def test_grad_cam_concentrates_in_the_quadrant_the_logit_depends_on():
    torch.manual_seed(3)
    model = QuadrantClassifier()
    x = torch.rand(3, 1, 8, 8)
    cam = grad_cam(model, x, "gate", target=0)
    tl = quadrant_masks()[0].bool()
    assert cam.shape == (3, 8, 8)
    assert cam[:, tl].sum() > 0 and cam[:, ~tl].abs().sum() == 0
    # hand computation: d logit0 / d A = 1/64 on channel 0 and 0 on channel 1 → CAM ∝ A_0
    a0 = F.relu(F.conv2d(x, model.conv.weight, model.conv.bias, padding=1))[:, 0] * tl
    torch.testing.assert_close(cam, a0 / a0.amax((1, 2), keepdim=True))
    other = grad_cam(model, x, model.gate, target=torch.tensor([1, 1, 1]), normalize=False)
    assert other[:, tl].abs().sum() == 0 and other[:, ~tl].sum() > 0
    a1 = F.relu(F.conv2d(x, model.conv.weight, model.conv.bias, padding=1))[:, 1] * ~tl
    torch.testing.assert_close(other, a1 / 64)


def test_grad_cam_upsamples_bilinearly_from_a_coarser_layer():
    torch.manual_seed(4)
    model = QuadrantClassifier(pool=True)
    x = torch.rand(2, 1, 8, 8)
    cam = grad_cam(model, x, "gate", target=0, normalize=False)
    tl4 = quadrant_masks(4)[0]
    a0 = F.relu(F.max_pool2d(F.conv2d(x, model.conv.weight, model.conv.bias, padding=1), 2))[:, 0] * tl4
    manual = F.interpolate((a0 / 16)[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(cam, manual)
    tl = quadrant_masks()[0].bool()
    assert cam[:, tl].sum() / cam.sum() > 0.8
    halo = torch.zeros(8, 8, dtype=torch.bool)
    halo[:5, :5] = True  # bilinear (align_corners=False) spreads one output pixel past the quadrant edge
    assert cam[:, ~halo].abs().sum() == 0
    small = grad_cam(model, x, "gate", target=0, upsample=False, normalize=False)
    torch.testing.assert_close(small, a0 / 16)


def test_saliency_is_the_input_gradient_of_the_constructed_model():
    model = QuadrantClassifier()
    x = torch.rand(2, 1, 8, 8)
    sal = saliency(model, x, target=0)
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[:, 0].sum(), xr)
    torch.testing.assert_close(sal, grad.abs()[:, 0])
    # the logit depends on the top-left quadrant only (through a 3×3 conv: plus a 1-pixel halo)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:5, :5] = False
    assert sal[:, outside].abs().sum() == 0 and sal[:, :4, :4].sum() > 0


class QuadrantSegmenter(nn.Module):
    """Features A_q = x gated to quadrant q; logits read each pixel's own quadrant channel: class 0 = x, class 1 = −x.

    So ∂(Σ_region class-0 logits)/∂A_q = region ∩ quadrant q, and Grad-CAM can only light up the region's quadrants.
    """

    def __init__(self):
        super().__init__()
        self.features = Gate(quadrant_masks())
        self.classifier = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[1.0] * 4, [-1.0] * 4]).view(2, 4, 1, 1))

    def forward(self, x):
        return self.classifier(self.features(x.expand(-1, 4, -1, -1)) * self.features.masks)


def test_segmentation_grad_cam_explains_the_region():
    model = QuadrantSegmenter()
    x = torch.rand(2, 1, 8, 8) + 0.1
    region = quadrant_masks()[1].bool()  # explain class 0 over the top-right quadrant
    cam = grad_cam(model, x, "features", target=0, region=region, normalize=False)
    # ∂score/∂A_q = 1 on region ∩ quadrant q → α_TR = 16/64 = 1/4, every other α = 0
    torch.testing.assert_close(cam, 0.25 * x[:, 0] * region)
    ignore = torch.zeros(8, 8, dtype=torch.bool)
    ignore[:, 6:] = True  # half of the region is unlabelled
    cam = grad_cam(model, x, "features", target=0, region=region, ignore_mask=ignore, normalize=False)
    torch.testing.assert_close(cam, (8 / 64) * x[:, 0] * region)
    mean_cam = grad_cam(model, x, "features", target=0, region=region, ignore_mask=ignore,
                        reduction="mean", normalize=False)
    torch.testing.assert_close(mean_cam, (8 / 64 / 8) * x[:, 0] * region)


def test_segmentation_saliency_is_the_valid_region():
    model = QuadrantSegmenter()
    x = torch.rand(2, 1, 8, 8)
    region = torch.zeros(2, 8, 8, dtype=torch.bool)
    region[0, :2, :2] = True
    region[1, 5:, 5:] = True
    ignore = torch.zeros(2, 8, 8, dtype=torch.bool)
    ignore[0, 0, 0] = True
    sal = saliency(model, x, target=torch.tensor([1, 0]), region=region, ignore_mask=ignore, reduction="mean")
    valid = (region & ~ignore).float()
    torch.testing.assert_close(sal, valid / valid.sum((1, 2), keepdim=True))


def _manual_cam(features: nn.Module, head: nn.Module, x: torch.Tensor, target: int, mode: str) -> torch.Tensor:
    a = features(x)
    a.retain_grad()
    head(a)[:, target].sum().backward()
    alpha = a.grad.flatten(2).mean(2)
    cam = F.relu((alpha.view(*alpha.shape, *([1] * (a.dim() - 2))) * a).sum(1))
    cam = F.interpolate(cam[:, None], size=x.shape[2:], mode=mode, align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).view(-1, *([1] * (cam.dim() - 1)))


@pytest.mark.parametrize("dims", [1, 3])
def test_grad_cam_1d_and_3d_match_a_manual_computation(dims):
    torch.manual_seed(5)
    conv, pool, adaptive = {1: (nn.Conv1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
                            3: (nn.Conv3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)}[dims]
    features = nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), pool(2))
    head = nn.Sequential(adaptive(1), nn.Flatten(), nn.Linear(4, 3))
    model = nn.Sequential(features, head)
    x = torch.randn(2, 2, *([6] * dims))
    cam = grad_cam(model, x, "0", target=2)
    assert cam.shape == (2, *([6] * dims))
    mode = {1: "linear", 3: "trilinear"}[dims]
    torch.testing.assert_close(cam, _manual_cam(features, head, x, 2, mode))


def test_hooks_removed_modes_restored_and_grads_untouched():
    model = QuadrantClassifier().train()
    model.conv.eval()
    grad_cam(model, torch.rand(1, 1, 8, 8), "gate", target=0)
    saliency(model, torch.rand(1, 1, 8, 8), target=1)
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training and not model.conv.training and model.gate.training
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError):
        grad_cam(model, torch.rand(1, 3, 8, 8), "gate", target=0)  # the conv refuses 3 channels
    assert all(not m._forward_hooks for m in model.modules()) and model.training


def test_attribution_errors():
    model = QuadrantClassifier()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ShapeError, match=r"Unknown layer name 'gat' in target_layer.*e.g. 'conv'"):
        grad_cam(model, x, "gat", target=0)
    with pytest.raises(ShapeError, match=r"target_layer 'head.1' must keep the input's 2 spatial dimension\(s\)"):
        grad_cam(model, x, "head.1", target=0)
    with pytest.raises(ShapeError, match=r"target must be class indices in \[0, 1\]. Received target=\[5, 5\]"):
        grad_cam(model, x, "gate", target=5)
    with pytest.raises(ShapeError, match=r"target must be one class index or one per sample \(2\)"):
        grad_cam(model, x, "gate", target=[0, 1, 0])
    with pytest.raises(ShapeError, match=r"input must have shape \(N, C, L\), \(N, C, H, W\) or \(N, C, D, H, W\)"):
        grad_cam(model, torch.rand(8, 8), "gate", target=0)
    with pytest.raises(ShapeError, match=r"input must not be empty"):
        saliency(model, torch.rand(0, 1, 8, 8), target=0)
    with pytest.raises(ShapeError, match=r"region and ignore_mask apply to segmentation outputs"):
        saliency(model, x, target=0, region=torch.ones(8, 8, dtype=torch.bool))
    seg = QuadrantSegmenter()
    with pytest.raises(ShapeError, match=r"region must have the output's spatial shape \(8, 8\).*Received region "
                                         r"with shape \(4, 4\)"):
        grad_cam(seg, x, "features", target=0, region=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"must keep at least one pixel per sample. Samples \[0, 1\] have none"):
        saliency(seg, x, target=0, region=torch.zeros(8, 8, dtype=torch.bool))
    with pytest.raises(ShapeError, match=r"region must be a boolean tensor"):
        saliency(seg, x, target=0, region=torch.ones(8, 8))
    with pytest.raises(ShapeError, match=r"Unknown reduction 'max'"):
        saliency(seg, x, target=0, reduction="max")
