"""Normalisation over valid positions only: batch norm (optionally across processes) and group norm.

These are the functional ops :func:`cnnkit.masked` uses in place of ``F.batch_norm`` (training mode),
``F.group_norm`` and ``F.instance_norm`` when their input is a padded batch. Each takes the data and a
boolean ``mask`` (N, 1, *spatial) of valid positions; positions outside the mask neither contribute to
the statistics nor receive gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnnkit.errors import ShapeError

__all__ = ["masked_batch_norm", "masked_group_norm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients (another all-reduce)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, process_group) -> Tensor:
        import torch.distributed as dist

        ctx.process_group = process_group
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=process_group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.process_group)
        return grad, None


def _all_reduce(tensor: Tensor, process_group) -> Tensor:
    """Differentiable sum over the processes of ``process_group`` (identity without one)."""
    if process_group is None:
        return tensor
    return _AllReduceSum.apply(tensor, process_group)


def _check_mask(input: Tensor, mask: Tensor) -> None:
    expected = (input.shape[0], 1, *input.shape[2:])
    if mask.dtype != torch.bool or tuple(mask.shape) != expected:
        raise ShapeError(
            f"mask must be a bool tensor of shape (N, 1, *spatial) = {expected}. "
            f"Received mask of shape {tuple(mask.shape)} and dtype {mask.dtype}."
        )


def masked_batch_norm(
    input: Tensor,
    mask: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
    process_group=None,
) -> Tensor:
    """Training-mode batch norm whose statistics use valid positions only.

    ``mean`` and the biased ``var`` are taken over every valid position of every sample (and, with a
    ``process_group``, of every process: two differentiable all-reduces, exact two-pass variance). The
    running estimates are updated as ``nn.BatchNorm`` does, with the unbiased variance
    ``var · n / (n − 1)`` for ``n`` valid positions in all.

    Args:
        input: (N, C, *spatial). Values outside ``mask`` may be anything finite.
        mask: (N, 1, *spatial) bool, True at valid positions.
        running_mean, running_var: (C,) buffers updated in place, or ``None``.
        weight, bias: (C,) affine parameters or ``None``.
        momentum: Weight of the new batch statistics in the running estimates.
        eps: Added to the variance.
        process_group: A ``torch.distributed`` group to reduce over, or ``None``.

    Examples:
        >>> x = torch.tensor([[[1.0, 3.0, 100.0]]])      # (N=1, C=1, L=3); the last position is padding
        >>> m = torch.tensor([[[True, True, False]]])
        >>> masked_batch_norm(x, m, None, None, eps=0.0)[..., :2]
        tensor([[[-1.,  1.]]])
    """
    _check_mask(input, mask)
    dims = [0, *range(2, input.dim())]
    shape = (1, -1, *([1] * (input.dim() - 2)))
    valid = mask.to(input.dtype)
    count = _all_reduce(valid.sum().reshape(1), process_group)
    if count.item() == 0:
        raise ShapeError("masked_batch_norm needs at least one valid position. Received a mask with none.")
    total = _all_reduce((input * valid).sum(dims), process_group)
    mean = total / count
    centred = (input - mean.view(shape)) * valid
    var = _all_reduce((centred * centred).sum(dims), process_group) / count
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            n = count.item()
            unbiased = var * (n / (n - 1)) if n > 1 else var
            running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.detach().to(running_var.dtype), alpha=momentum)
    out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


def masked_group_norm(
    input: Tensor,
    mask: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group norm (per sample, per group of channels) over each sample's valid positions.

    With ``num_groups = C`` this is instance norm.

    Examples:
        >>> x = torch.tensor([[[2.0, 4.0, -50.0]]])
        >>> m = torch.tensor([[[True, True, False]]])
        >>> masked_group_norm(x, m, 1, eps=0.0)[..., :2]
        tensor([[[-1.,  1.]]])
    """
    _check_mask(input, mask)
    n, c = input.shape[:2]
    if c % num_groups:
        raise ShapeError(f"num_channels must be divisible by num_groups. Received C={c}, num_groups={num_groups}.")
    valid = mask.to(input.dtype)
    grouped = input.reshape(n, num_groups, c // num_groups, *input.shape[2:])
    gvalid = valid.unsqueeze(1)  # (N, 1, 1, *spatial)
    dims = list(range(2, grouped.dim()))
    count = (gvalid.sum(dims) * (c // num_groups)).clamp_min(1)  # (N, 1)
    mean = (grouped * gvalid).sum(dims) / count
    view = (n, num_groups, *([1] * (grouped.dim() - 2)))
    centred = (grouped - mean.view(view)) * gvalid
    var = (centred * centred).sum(dims) / count
    out = ((grouped - mean.view(view)) * torch.rsqrt(var.view(view) + eps)).reshape(input.shape)
    shape = (1, -1, *([1] * (input.dim() - 2)))
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out
