"""Where does the network look? Grad-CAM and gradient saliency, for classification and segmentation.

:func:`grad_cam` (Selvaraju et al., 2017) weighs the feature maps ``A_k`` of a target layer by the
spatial mean of ``∂score/∂A_k`` and keeps the positive part: ``CAM = ReLU(Σ_k α_k A_k)`` with
``α_k = mean_positions ∂score/∂A_k``; the map is then resized to the input with (bi/tri)linear
interpolation. :func:`saliency` (Simonyan et al., 2014) is ``|∂score/∂input|``, reduced over channels.

The *score* is, per sample ``n``:

* classification, logits (N, C): ``logits[n, target[n]]``;
* segmentation, logits (N, C, *spatial): the sum (or mean) of ``logits[n, target[n]]`` over the pixels of
  ``region`` (default: all) that ``ignore_mask`` does not exclude — "why did the network call this area
  a road?". A sample with no valid pixel is an error, never a silent zero.

Samples are independent (the model runs in eval mode, so BatchNorm does not mix them), so one backward
pass of ``Σ_n score_n`` gives every sample's gradients. Gradients are taken with
``torch.autograd.grad``: the model's ``.grad`` fields are not touched. The forward hook is removed and
the train/eval modes restored in ``finally``.

Why not a library: ``grad-cam`` (pytorch-grad-cam) targets 2-D images (it resizes with OpenCV and
returns NumPy arrays) and would add ``opencv-python`` to our dependencies; ``captum``'s ``LayerGradCam``
fits technically but is a sizeable dependency for ~100 lines, and segmentation targets with region and
ignore masks would still need our own wrapper. The computation here is short and tested against
constructed networks whose answer is known.

References:
    R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017.
    K. Simonyan, A. Vedaldi, A. Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR Workshop 2014.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnkit._checks import check_choice
from cnnkit.errors import ArgumentTypeError, ShapeError
from cnnkit.inspect._layers import resolve_layers

__all__ = ["grad_cam", "saliency"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor) or not input.is_floating_point():
        got = input.dtype if isinstance(input, Tensor) else type(input).__name__
        raise ShapeError(f"input must be a floating-point tensor. Received {got}.")
    if input.dim() not in (3, 4, 5):
        raise ShapeError(
            "input must have shape (N, C, L), (N, C, H, W) or (N, C, D, H, W). "
            f"Received input with shape {tuple(input.shape)}."
        )
    if input.numel() == 0:
        raise ShapeError(f"input must not be empty. Received input with shape {tuple(input.shape)}.")


def _targets(target: Any, n: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ShapeError(f"target must be class indices (integers). Received target={target!r}.")
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ShapeError(
            f"target must be one class index or one per sample ({n}). Received target with shape {tuple(t.shape)}."
        )
    return t.long()


def _mask(mask: Any, name: str, shape: tuple[int, ...]) -> Tensor:
    """A boolean (N, *spatial) mask from (N, *spatial) or (*spatial)."""
    m = torch.as_tensor(mask)
    if m.dtype != torch.bool:
        raise ShapeError(f"{name} must be a boolean tensor. Received {name} with dtype {m.dtype}.")
    if tuple(m.shape) == shape[1:]:
        m = m.expand(shape)
    if tuple(m.shape) != shape:
        raise ShapeError(
            f"{name} must have the output's spatial shape {shape[1:]} or {shape}. Received {name} with shape "
            f"{tuple(m.shape)}."
        )
    return m


def _score(
    output: Any, target: Tensor, region: Any, ignore_mask: Any, reduction: str
) -> Tensor:
    if not isinstance(output, Tensor):
        raise ShapeError(f"the model must return one tensor of logits. Received {type(output).__name__}.")
    n = output.shape[0]
    if output.dim() < 2:
        raise ShapeError(
            f"the model's output must be (N, C) or (N, C, *spatial). Received shape {tuple(output.shape)}."
        )
    classes = output.shape[1]
    if (target < 0).any() or (target >= classes).any():
        raise ShapeError(f"target must be class indices in [0, {classes - 1}]. Received target={target.tolist()}.")
    picked = output[torch.arange(n, device=output.device), target]  # (N, *spatial)
    if output.dim() == 2:
        if region is not None or ignore_mask is not None:
            raise ShapeError(
                "region and ignore_mask apply to segmentation outputs (N, C, *spatial). "
                f"Received an output of shape {tuple(output.shape)}."
            )
        return picked.sum()
    valid = torch.ones(picked.shape, dtype=torch.bool, device=output.device)
    if region is not None:
        valid = valid & _mask(region, "region", tuple(picked.shape)).to(output.device)
    if ignore_mask is not None:
        valid = valid & ~_mask(ignore_mask, "ignore_mask", tuple(picked.shape)).to(output.device)
    counts = valid.flatten(1).sum(1)
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ShapeError(
            f"region minus ignore_mask must keep at least one pixel per sample. Samples {empty} have none."
        )
    per_sample = (picked * valid).flatten(1).sum(1)
    if reduction == "mean":
        per_sample = per_sample / counts
    return per_sample.sum()


def _run(model: nn.Module, fn: Callable[[], Tensor]) -> Tensor:
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.enable_grad():
            return fn()
    finally:
        for m, training in modes.items():
            m.train(training)


def grad_cam(
    model: nn.Module,
    input: Tensor,
    target_layer: str | nn.Module,
    target: int | Tensor,
    *,
    region: Tensor | None = None,
    ignore_mask: Tensor | None = None,
    reduction: str = "sum",
    upsample: bool = True,
    normalize: bool = True,
) -> Tensor:
    """Grad-CAM heat map of ``target`` at ``target_layer``, for classification or segmentation models.

    Args:
        model: Returns logits (N, C) (classification) or (N, C, *spatial) (segmentation).
        input: The batch, (N, C, L), (N, C, H, W) or (N, C, D, H, W).
        target_layer: Dotted name (from ``named_modules``) or module whose output (N, K, *spatial') is
            explained; it must keep the input's number of spatial dimensions (a conv block, not a Linear).
        target: The class to explain: one index, or one per sample (N,).
        region: Segmentation only — boolean (N, *out_spatial) or (*out_spatial): pixels whose ``target``
            logits make the score (default: all).
        ignore_mask: Segmentation only — boolean, True where pixels are left out (unlabelled, clouds).
        reduction: ``"sum"`` (default) or ``"mean"`` of the logits over the valid pixels.
        upsample: Resize the map to the input's spatial size (linear / bilinear / trilinear,
            ``align_corners=False``); otherwise return it at the layer's resolution.
        normalize: Divide each sample's map by its maximum (maps of all zeros stay zero).

    Shape:
        - input: (N, C, *S) with len(S) in {1, 2, 3}
        - Output: (N, *S) if ``upsample`` else (N, *S') with S' the target layer's spatial size; detached.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> cam = grad_cam(net, torch.randn(2, 1, 8, 8), "1", target=[0, 1])
        >>> cam.shape, bool(cam.min() >= 0), bool(cam.amax((1, 2)).le(1).all())
        (torch.Size([2, 8, 8]), True, True)

    References:
        Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
        Localization", ICCV 2017.
    """
    _check_input(input)
    check_choice(reduction, ("sum", "mean"), "reduction")
    if isinstance(target_layer, (str, nn.Module)):
        ((layer_name, layer),) = resolve_layers(model, target_layer, "target_layer").items()
    else:
        raise ArgumentTypeError(
            f"target_layer must be a layer name or a module. Received {type(target_layer).__name__}.")
    targets = _targets(target, input.shape[0], input.device)
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(output)

    def compute() -> Tensor:
        handle = layer.register_forward_hook(hook)
        try:
            x = input.detach().requires_grad_(True)  # so the layer's output needs grad even if weights are frozen
            output = model(x)
        finally:
            handle.remove()
        if len(captured) != 1 or not isinstance(captured[0], Tensor):
            raise ShapeError(
                f"target_layer {layer_name!r} must run exactly once and return one tensor. "
                f"It ran {len(captured)} times" + (f" and returned {type(captured[0]).__name__}." if captured else ".")
            )
        acts = captured[0]
        if acts.dim() != input.dim():
            raise ShapeError(
                f"target_layer {layer_name!r} must keep the input's {input.dim() - 2} spatial dimension(s) "
                f"(N, K, *spatial). Received its output of shape {tuple(acts.shape)} for input {tuple(input.shape)}."
            )
        score = _score(output, targets, region, ignore_mask, reduction)
        (grads,) = torch.autograd.grad(score, acts)
        weights = grads.flatten(2).mean(2)  # α_k, (N, K)
        cam = F.relu((weights.view(*weights.shape, *([1] * (acts.dim() - 2))) * acts).sum(1))
        return cam.detach()

    cam = _run(model, compute)
    if upsample and cam.shape[1:] != input.shape[2:]:
        cam = F.interpolate(cam[:, None], size=input.shape[2:], mode=_MODES[input.dim() - 2],
                            align_corners=False)[:, 0]
    if normalize:
        peak = cam.flatten(1).amax(1).view(-1, *([1] * (cam.dim() - 1)))
        cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), cam)
    return cam


def saliency(
    model: nn.Module,
    input: Tensor,
    target: int | Tensor,
    *,
    region: Tensor | None = None,
    ignore_mask: Tensor | None = None,
    reduction: str = "sum",
    channels: str = "max",
) -> Tensor:
    """Gradient saliency ``|∂score/∂input|``: how much each input pixel moves the target score.

    The score is the same as in :func:`grad_cam` (a class logit, or a class's logits over a region).

    Args:
        model, input, target, region, ignore_mask, reduction: As in :func:`grad_cam`.
        channels: Reduce |gradient| over input channels with ``"max"`` (Simonyan et al.), ``"sum"``, or
            ``"none"`` to keep them.

    Shape:
        - input: (N, C, *S)
        - Output: (N, *S), or (N, C, *S) with ``channels="none"``; detached.

    Examples:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.0, 3.0]]))
        >>> saliency(net, torch.randn(1, 1, 2, 2), target=0)
        tensor([[[1., 2.],
                 [0., 3.]]])

    References:
        Simonyan, Vedaldi, Zisserman, "Deep Inside Convolutional Networks: Visualising Image
        Classification Models and Saliency Maps", ICLR Workshop 2014.
    """
    _check_input(input)
    check_choice(reduction, ("sum", "mean"), "reduction")
    check_choice(channels, ("max", "sum", "none"), "channels")
    targets = _targets(target, input.shape[0], input.device)

    def compute() -> Tensor:
        x = input.detach().requires_grad_(True)
        score = _score(model(x), targets, region, ignore_mask, reduction)
        (grad,) = torch.autograd.grad(score, x)
        return grad.detach().abs()

    grad = _run(model, compute)
    if channels == "max":
        return grad.amax(1)
    if channels == "sum":
        return grad.sum(1)
    return grad
