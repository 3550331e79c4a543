"""Modules that :func:`cnnkit.masked` runs once per group of samples of one extent, on each group's valid crop.

Some modules compute things that are defined per sample but not on a padded canvas: smp MAnet's position
attention (``PABBlock``) flattens the spatial positions, and its softmax runs over the whole flattened
(HW × HW) map, so every position of a sample alone sees exactly that sample's positions. Such a module runs,
for each group of samples whose padded inputs have one extent, on the inputs cropped to that extent (an
ordinary batch: no padding at all), and its outputs are placed back on a canvas with those extents. That is
exactly what each sample gives alone, by construction; the cost is one call per distinct extent.

Which modules run per sample: the ones named by ``masked(model, per_sample=...)`` (classes or dotted paths),
the classes registered with :func:`register_per_sample_module`, and (``auto_per_sample=True``, the default) a
module in which an op was refused: the forward pass is then run again from the start (with every buffer and
the random number generator restored) with that module run per sample, and the choice is kept for the next
calls. A module that normalises with batch statistics (a ``BatchNorm`` in training mode) cannot run per
sample (its statistics would come from one group, not from the valid pixels of the whole batch) and is
refused.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils import _pytree as pytree

from cnnkit import _ops
from cnnkit._tensors import tensors_in
from cnnkit.errors import ArgumentTypeError, ShapeError, UnsupportedError
from cnnkit.masking.state import _ACTIVE, RULES, MaskedContext, canonical_axes

__all__ = ["batch_statistics_module", "install", "register_per_sample_module", "resolve", "run_per_sample"]


def register_per_sample_module(*classes: type) -> None:
    """Run every module of these classes per group of samples of one extent under :func:`~cnnkit.masked`.

    For modules whose ops are defined per sample but not on a padded canvas (attention over all spatial positions,
    a softmax over a flattened map): each group runs on its valid crop, so the result is what each sample gives
    alone. Same as naming the class in ``masked(model, per_sample=(cls,))`` for every model.

    Examples:
        >>> class Attention(nn.Module):
        ...     def forward(self, x):
        ...         q = x.flatten(2)
        ...         return (q.transpose(1, 2) @ q).softmax(-1).matmul(q.transpose(1, 2)).transpose(1, 2).view_as(x)
        >>> register_per_sample_module(Attention)
        >>> from cnnkit.masking import masked, pad_batch
        >>> images = [torch.randn(2, 3, 4), torch.randn(2, 2, 5)]
        >>> out = masked(Attention())(pad_batch(images)).unpad()
        >>> torch.allclose(out[1], Attention()(images[1][None])[0], atol=1e-6)
        True
        >>> _ops.PER_SAMPLE_MODULES.remove(Attention)  # (the registry is global)
    """
    _ops.register_per_sample(*classes)


def run_per_sample(module: nn.Module, forward, *args, **kwargs):
    """``forward(*args, **kwargs)``; under :func:`~cnnkit.masked` its rule runs it per group of one extent."""
    return forward(*args, **kwargs)


def resolve(model: nn.Module, per_sample: Iterable) -> dict[str, nn.Module]:
    """The modules of ``model`` to run per sample, by path: ``per_sample``'s classes and paths, and the classes of
    :data:`cnnkit._ops.PER_SAMPLE_MODULES`."""
    classes: list[type] = list(_ops.PER_SAMPLE_MODULES)
    chosen: dict[str, nn.Module] = {}
    for item in per_sample:
        if isinstance(item, str):
            try:
                chosen[item] = model.get_submodule(item)
            except AttributeError:
                raise ArgumentTypeError(
                    f"per_sample names a module path that the model does not have. Received per_sample "
                    f"entry {item!r}; paths look like 'decoder.center' (see model.named_modules())."
                ) from None
        elif isinstance(item, type) and issubclass(item, nn.Module):
            classes.append(item)
        else:
            raise ArgumentTypeError(
                f"per_sample must hold nn.Module subclasses or module paths (str). Received {item!r}."
            )
    if classes:
        kinds = tuple(classes)
        for name, m in model.named_modules():
            if isinstance(m, kinds):
                chosen.setdefault(name, m)
    # A module inside another one run per sample runs inside that one's per-sample call: keep the outer one.
    return {name: m for name, m in chosen.items()
            if not any(name.startswith(other + ".") or (other == "" and name) for other in chosen)}


def batch_statistics_module(module: nn.Module) -> str | None:
    """The path (inside ``module``) of a batch norm that would use batch statistics, if any."""
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return name or "(the module itself)"
    return None


def install(ctx: MaskedContext, modules: dict[str, nn.Module]) -> list:
    """Route each module's calls through :func:`run_per_sample` while ``ctx`` runs; returns what :func:`uninstall`
    needs to restore them (an instance attribute ``forward``, removed in ``finally``)."""
    saved = []
    for name, m in modules.items():
        if any(m is other for other, _ in saved):
            continue
        before = m.__dict__.get("forward", _MISSING)
        m.__dict__["forward"] = functools.partial(_call, ctx, name, m, m.forward)
        saved.append((m, before))
    return saved


def uninstall(saved: list) -> None:
    for m, before in reversed(saved):
        if before is _MISSING:
            m.__dict__.pop("forward", None)
        else:
            m.__dict__["forward"] = before


_MISSING = object()


def _call(ctx: MaskedContext, name: str, module: nn.Module, forward, *args, **kwargs):
    if ctx.busy or not _ACTIVE or _ACTIVE[-1] is not ctx:
        return forward(*args, **kwargs)
    padded = [t for t in tensors_in((args, kwargs)) if ctx.is_padded(t)]
    if not padded:  # nothing padded reaches it: an ordinary call, under the mode as usual
        return forward(*args, **kwargs)
    return torch.overrides.handle_torch_function(run_per_sample, padded, (name, module), forward, *args, **kwargs)


def _per_sample_rule(ctx: MaskedContext, func, args, kwargs):
    (name, module), forward, *rest = args
    label = f"module '{name}' ({type(module).__name__})"
    bn = batch_statistics_module(module)
    if bn is not None:
        raise UnsupportedError(
            f"masked(): {label} cannot run per sample: it contains a batch norm using batch statistics ('{bn}', "
            "training mode), which would normalise each group of samples on its own instead of over the valid "
            "pixels of the whole batch. Run it in eval mode, or make its ops supported on a padded batch."
        )
    leaves, spec = pytree.tree_flatten((tuple(rest), kwargs))
    padded = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor) and ctx.is_padded(leaf)]
    first = leaves[padded[0]]
    batch = first.shape[0]
    for i, leaf in enumerate(leaves):
        if not isinstance(leaf, Tensor):
            continue
        if i in padded:
            entry = ctx.entries[leaf]
            if entry.batch != 0 or entry.axes != canonical_axes(leaf.dim()) or leaf.shape[0] != batch:
                raise UnsupportedError(
                    f"masked(): {label} runs per sample, so its padded inputs must be laid out (N, C, *spatial) "
                    f"with one batch. Received shape {tuple(leaf.shape)} with spatial dims at {entry.axes}."
                )
        elif leaf.dim() and leaf.shape[0] == batch:
            raise UnsupportedError(
                f"masked(): {label} runs per sample, but it also receives an ordinary tensor of shape "
                f"{tuple(leaf.shape)} whose first dimension may be the batch; pass only padded tensors and "
                "constants to a module run per sample."
            )
    groups: dict[tuple, list[int]] = {}
    for n in range(batch):
        groups.setdefault(tuple(ctx.entries[leaves[i]].sizes[n] for i in padded), []).append(n)
    in_canvas = tuple(first.shape[2:])
    results, order, out_spec = [], [], None
    for key, members in groups.items():
        rows = slice(members[0], members[0] + 1) if len(members) == 1 else members
        crop = list(leaves)
        for i, size in zip(padded, key):
            crop[i] = leaves[i][(rows, slice(None), *(slice(0, s) for s in size))]
        crop_args, crop_kwargs = pytree.tree_unflatten(crop, spec)
        try:
            out = forward(*crop_args, **crop_kwargs)
        except Exception as error:
            raise UnsupportedError(
                f"masked(): {label}, run per sample on each sample's own extent {key[0]}, raises "
                f"{type(error).__name__}: {error}"
            ) from error
        out_leaves, this_spec = pytree.tree_flatten(out)
        if out_spec is not None and this_spec != out_spec:
            raise UnsupportedError(f"masked(): {label}, run per sample, returns differently structured outputs.")
        out_spec = this_spec
        results.append((key[0], out_leaves, len(members)))
        order += members
    inverse = None if order == sorted(order) else torch.tensor(order, device=first.device).argsort()
    combined = [_combine(ctx, label, first.dim(), in_canvas, [(k, r[j], m) for k, r, m in results], inverse)
                for j in range(len(results[0][1]))]
    return pytree.tree_unflatten(combined, out_spec)


def _combine(ctx: MaskedContext, label: str, in_dim: int, in_canvas: tuple[int, ...], parts: list, inverse):
    """One output of the groups as one batch: spatial outputs on a canvas with per-sample extents (the input's canvas
    along every axis where each group keeps its input's extent), other tensors stacked, other values equal."""
    values = [value for _, value, _ in parts]
    if not isinstance(values[0], Tensor):
        if any(v is not values[0] and v != values[0] for v in values[1:]):
            raise UnsupportedError(f"masked(): {label}, run per sample, returns values that differ per group.")
        return values[0]
    if any(not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != count for _, v, count in parts):
        raise UnsupportedError(f"masked(): {label}, run per sample, returns a tensor without a batch dimension.")
    if values[0].dim() == in_dim and in_dim >= 3:
        n = in_dim - 2
        extents = [tuple(v.shape[2:]) for v in values]
        canvas = tuple(in_canvas[a] if all(e[a] == k[a] for (k, _, _), e in zip(parts, extents))
                       else max(e[a] for e in extents) for a in range(n))
        if any(v.shape[1] != values[0].shape[1] for v in values):
            raise ShapeError(f"masked(): {label}, run per sample, returns different channel counts per group.")
        padded = []
        for v, e in zip(values, extents):
            pads = []
            for o, c in zip(reversed(e), reversed(canvas)):
                pads += [0, c - o]
            padded.append(F.pad(v, pads) if any(pads) else v)
        out = torch.cat(padded) if len(padded) > 1 else padded[0]
        if inverse is not None:
            out = out.index_select(0, inverse)
        sizes = tuple(e for e, (_, _, count) in zip(extents, parts) for _ in range(count))
        if inverse is not None:
            sizes = tuple(sizes[i] for i in inverse.tolist())
        return ctx.track(out, sizes, True)
    if any(v.shape[1:] != values[0].shape[1:] for v in values):
        raise UnsupportedError(
            f"masked(): {label}, run per sample, returns tensors of shapes {[tuple(v.shape) for v in values]} that "
            "depend on each sample's size but are not laid out (N, C, *spatial) like its input."
        )
    out = torch.cat(values) if len(values) > 1 else values[0]
    return out.index_select(0, inverse) if inverse is not None else out


RULES[run_per_sample] = _per_sample_rule
