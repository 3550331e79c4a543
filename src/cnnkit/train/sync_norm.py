"""Batch norm reduced over all processes also where a process's batch is not padded.

:func:`cnnkit.masked` with ``sync_batchnorm=True`` reduces the statistics of batch norm over the valid positions
of every process — for the tensors it tracks as padded. A tensor whose samples all fill its canvas (a share of
samples of one size, or extents that meet after a stride) is an ordinary tensor to it, and its batch norm runs
as plain ``F.batch_norm``: local statistics, and none of the collectives that the other processes are waiting in,
so the run hangs. :class:`SyncUnpaddedBatchNorm`, entered around the masked model's call, sees the training-mode
batch norms that ``masked`` lets through and runs them as :func:`~cnnkit.masking.masked_batch_norm` with every
position valid and the same process group: the same statistics and the same collectives as a padded tensor.
(Where ``masked`` itself does this, this mode sees nothing and is harmless.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from cnnkit.masking import masked_batch_norm
from cnnkit.masking.state import bind

__all__ = ["SyncUnpaddedBatchNorm"]

_BATCH_NORMS = (F.batch_norm, torch.batch_norm)


class SyncUnpaddedBatchNorm(TorchFunctionMode):
    """Torch function mode: training-mode batch norm of ordinary tensors, reduced over ``process_group``.

    Enter it *outside* the :func:`cnnkit.masked` call: ``masked``'s own mode sees every call first and hands on
    only those without a padded argument.

    Args:
        process_group: A ``torch.distributed`` group (e.g. ``torch.distributed.group.WORLD``).

    Examples:
        >>> bn = torch.nn.BatchNorm1d(2).train()
        >>> with SyncUnpaddedBatchNorm(None):       # no group: the statistics of this process alone
        ...     out = bn(torch.tensor([[[1.0, 3.0], [2.0, 2.0]]]))
        >>> out.detach().round(decimals=3), bn.running_mean
        (tensor([[[-1.,  1.], [ 0.,  0.]]]), tensor([0.2000, 0.2000]))
    """

    def __init__(self, process_group) -> None:
        super().__init__()
        self.process_group = process_group

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _BATCH_NORMS:
            return func(*args, **kwargs)
        b = bind(func, args, kwargs)
        if not b.get("training"):
            return func(*args, **kwargs)
        x = b["input"]
        valid = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=torch.bool, device=x.device)
        momentum = b.get("momentum")
        return masked_batch_norm(x, valid, b.get("running_mean"), b.get("running_var"), b.get("weight"),
                                 b.get("bias"), 0.1 if momentum is None else momentum, b.get("eps", 1e-5),
                                 self.process_group)
