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


def _check_mask(input: Tensor, mask: Tensor) -> None:
    expected = (input.shape[0], 1, *input.shape[2:])
    if mask.dtype != torch.bool or tuple(mask.shape) != expected:
        raise ShapeError(
            f"mask must be a bool tensor of shape (N, 1, *spatial) = {expected}. "
            f"Received mask of shape {tuple(mask.shape)} and dtype {mask.dtype}."
        )


class _MaskedBatchNorm(torch.autograd.Function):
    """Batch norm with statistics over the valid positions, in a few fused passes each way.

    Forward: the masked sums (two-pass variance), then torch's own eval-mode kernel with those statistics.
    Backward: the batch-norm gradient with sums over valid positions only, written out (two reductions and three
    element-wise passes, against some twenty of the same formula left to autograd) and all-reduced with the
    forward's ``process_group``. Outputs outside the mask are not part of the function: their gradient is
    ignored and no position outside the mask receives gradient (masked() never lets them reach a valid output).
    """

    @staticmethod
    def forward(ctx, input, valid, weight, bias, eps, process_group, stats_out):
        dims = [0, *range(2, input.dim())]
        shape = (1, -1, *([1] * (input.dim() - 2)))
        count = valid.sum().reshape(1)
        if process_group is not None:
            count = _reduced(count, process_group)
        n = count.item()
        if n == 0:
            raise ShapeError("masked_batch_norm needs at least one valid position. Received a mask with none.")
        mean = _reduced((input * valid).sum(dims), process_group) / n
        centred = (input - mean.view(shape)).mul_(valid)  # (x − mean) at valid positions, 0 outside
        var = _reduced(torch.mul(centred, centred).sum(dims), process_group) / n
        invstd = torch.rsqrt(var + eps)
        out = torch.batch_norm(input, weight, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(valid, centred, invstd, weight)
        ctx.count, ctx.process_group = n, process_group
        stats_out.extend((mean, var, n))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        valid, centred, invstd, weight = ctx.saved_tensors
        dims = [0, *range(2, grad.dim())]
        shape = (1, -1, *([1] * (grad.dim() - 2)))
        grad = grad * valid
        sum_dy, sum_dy_xmu = grad.sum(dims), torch.mul(grad, centred).sum(dims)
        grad_weight = sum_dy_xmu * invstd if weight is not None and ctx.needs_input_grad[2] else None
        grad_bias = sum_dy if ctx.needs_input_grad[3] else None
        grad_input = None
        if ctx.needs_input_grad[0]:
            if ctx.process_group is not None:  # the statistics are sums over every process's positions
                sum_dy, sum_dy_xmu = _reduced(torch.stack([sum_dy, sum_dy_xmu]), ctx.process_group)
            scale = invstd if weight is None else invstd * weight
            # dx = valid·scale·(dy − Σdy/n) − centred·scale·invstd²·Σ(dy·centred)/n   (dy already 0 outside)
            grad_input = torch.addcmul((-scale * sum_dy / ctx.count).view(shape), grad, scale.view(shape))
            grad_input.mul_(valid).addcmul_(centred, (-scale * invstd * invstd * sum_dy_xmu / ctx.count).view(shape))
        return grad_input, None, grad_weight, grad_bias, None, None, None


def _reduced(tensor: Tensor, process_group) -> Tensor:
    """Sum of ``tensor`` over the processes of ``process_group`` (``tensor`` itself without one)."""
    if process_group is None:
        return tensor
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=process_group)
    return tensor


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
    ``process_group``, of every process: exact two-pass variance, the gradient's sums all-reduced as
    ``nn.SyncBatchNorm`` does). The running estimates are updated as ``nn.BatchNorm`` does, with the unbiased
    variance ``var · n / (n − 1)`` for ``n`` valid positions in all. Outputs outside ``mask`` are normalised
    too, but only the valid ones are differentiated: gradients given to the others are ignored, and positions
    outside the mask receive none. First derivatives only (no double backward).

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
    stats: list = []
    out = _MaskedBatchNorm.apply(input, mask.to(input.dtype), weight, bias, eps, process_group, stats)
    mean, var, n = stats
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            unbiased = var * (n / (n - 1)) if n > 1 else var
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
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
