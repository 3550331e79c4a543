"""Running a module for its shapes only: on the meta device, where tensors have a shape and no memory.

:func:`explain` (for layers without an explainer) and :func:`summary` need the output shapes of a forward
pass, never its numbers. :func:`run_for_shapes` swaps every parameter and buffer of the module for a
*meta* twin of the same shape and dtype (:func:`torch.func.functional_call`, which restores the real ones
afterwards, also when the forward raises), feeds a meta input, and makes tensors created inside
``forward`` meta too (``torch.device("meta")`` as a context). Nothing of real size is allocated, so a
``Linear(60000, 60000)`` or a ``Conv2d(3, 10**9, 5)`` is answered in milliseconds. The module object
itself is used (not a copy): hooks, tied weights and ``forward`` replaced by a closure all behave as in a
real run, and weights shared between modules stay shared.

Some forwards cannot run on meta tensors: they read values (``if x.sum() > 0``, ``x.item()``,
``torch.nonzero``) or call kernels without a meta implementation. :func:`meta_failure` recognises those
errors; callers then either run the module for real on zeros when that is small (:data:`REAL_RUN_LIMIT`)
and the module's weights are real, or say why they cannot.
"""

from __future__ import annotations

import inspect
import itertools

import torch
from torch import Tensor, nn

from cnnkit.errors import UnsupportedError

__all__ = ["REAL_RUN_LIMIT", "check_one_input", "is_meta", "meta_failure", "meta_twins", "run_for_shapes"]

REAL_RUN_LIMIT = 1 << 22
"""Largest input (elements, batch included) run for real on zeros when a module cannot run on meta."""


def meta_twins(module: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer name (duplicates included) → a meta tensor of the same shape and dtype.

    A tensor reachable under several names gets one twin, so tied weights stay tied.
    """
    twins: dict[int, Tensor] = {}
    named = {}
    for name, tensor in itertools.chain(module.named_parameters(remove_duplicate=False),
                                        module.named_buffers(remove_duplicate=False)):
        if tensor is None:
            continue
        twin = twins.get(id(tensor))
        if twin is None:
            twin = torch.empty_like(tensor, device="meta")
            if isinstance(tensor, nn.Parameter):
                twin = nn.Parameter(twin, requires_grad=tensor.requires_grad)
            twins[id(tensor)] = twin
        named[name] = twin
    return named


def is_meta(module: nn.Module) -> bool:
    """Whether any parameter or buffer of ``module`` lives on the meta device (built for shapes only)."""
    return any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers()))


def run_for_shapes(module: nn.Module, x: Tensor):
    """``module(x)`` with meta weights and a meta ``x`` of ``x``'s shape and dtype, in ``no_grad``.

    The module's real parameters and buffers are put back when the call returns or raises. The caller
    sets the train/eval mode.
    """
    x = torch.empty_like(x, device="meta")
    with torch.no_grad(), torch.device("meta"):
        return torch.func.functional_call(module, meta_twins(module), (x,), tie_weights=True, strict=False)


def meta_failure(error: BaseException) -> bool:
    """Whether ``error`` says that an op cannot run on meta tensors (not that the shapes are wrong)."""
    text = str(error).lower()
    if isinstance(error, NotImplementedError) and not isinstance(error, UnsupportedError):
        return True
    return "meta" in text or "data-dependent" in text or "data dependent" in text


def check_one_input(module: nn.Module, what: str) -> None:
    """Raise :class:`UnsupportedError` if ``module.forward`` needs more than one input.

    ``explain`` and ``summary`` feed one tensor of ``input_shape``; a ``Transformer`` (``src``, ``tgt``)
    or an attention layer with separate keys cannot be run that way.
    """
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return
    required = [
        p.name for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(required) > 1:
        name = type(module).__name__
        raise UnsupportedError(
            f"{what} feeds one tensor of input_shape, but {name}.forward needs {len(required)} inputs "
            f"({', '.join(required)}). Explain its parts one by one (e.g. the encoder and decoder layers of a "
            f"Transformer), or wrap {name} in a module whose forward takes one tensor."
        )
