"""The rules :func:`cnnkit.masked` applies, one per torch function, and :func:`register_masked_op` to add more.

A rule is called as ``rule(ctx, func, args, kwargs)`` (``ctx`` a :class:`~cnnkit.masking.state.MaskedContext`) for a
call of ``func`` with a padded tensor among its arguments, and returns what ``func`` would, recording padded
results with ``ctx.track``. :data:`BUILT_IN` lists the built-in rules with the sentence the documentation of
:mod:`cnnkit.masking.masked_model` shows for each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from cnnkit import _ops
from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.masking.norm import masked_batch_norm, masked_group_norm
from cnnkit.masking.state import (
    ALWAYS,
    BATCH_ANYWHERE,
    RULES,
    Entry,
    MaskedContext,
    Sizes,
    argument,
    bind,
    canonical_axes,
    op_name,
    replace_input,
)
from cnnkit.shapes import conv_output_size, conv_transpose_output_size, padding_amounts, pool_output_size

__all__ = ["BUILT_IN", "RULES_TEXT", "register_masked_op"]


def _tuple(value, n):
    return tuple(value) if isinstance(value, (tuple, list, torch.Size)) else (value,) * n


def _require_canonical(ctx: MaskedContext, func, t: Tensor) -> None:
    if ctx.entries[t].axes != canonical_axes(t.dim()):
        raise UnsupportedError(
            f"masked(): {op_name(func)} needs a padded tensor laid out (N, C, *spatial); this one has its spatial "
            f"dimensions at {ctx.entries[t].axes} of shape {tuple(t.shape)}. Permute it back first."
        )


# -- rules -----------------------------------------------------------------------------------------------


def _pointwise(ctx: MaskedContext, func, args, kwargs):
    x = args[0] if args else bind(func, args, kwargs)["input"]
    if not ctx.is_padded(x):
        raise UnsupportedError(f"masked(): {op_name(func)} with a padded tensor as a secondary argument.")
    entry = ctx.entries[x]
    clean = ctx.is_clean(x) and func in _ops.ZERO_PRESERVING
    finite = func in _ops.FINITE_PRESERVING and ctx.is_finite(x)
    if func in _RELU and finite and not clean and len(args) == 1 and (
            not kwargs or kwargs.keys() == {"inplace"}):  # relu(x), F.relu(x, inplace=…)
        out = ctx.relu_zeroed(x, inplace=bool(kwargs.get("inplace")))
        if out is not None:  # zero outside the extents already: a following conv needs no zeroed copy
            return ctx.track(out, entry.sizes, True, entry.axes, entry.batch, finite=True, nonneg=True)
        out = func(*args, **kwargs)
    elif func in _ops.SINGULAR_AT_ZERO:
        filled = ctx.fill_outside(x, 1)
        out = func(filled, *args[1:], **{k: v for k, v in kwargs.items() if k != "input"})
        if func in _INPLACE:  # the op ran on the filled copy: write it through to x
            out = x.copy_(filled)
    else:
        out = func(*args, **kwargs)
    return ctx.track(out, entry.sizes, clean, entry.axes, entry.batch, finite=finite, nonneg=func in _RELU)


def _check_operands(ctx: MaskedContext, func, operands, out_dim: int) -> Entry:
    """One extent and layout for every padded operand; ordinary operands constant over the spatial dims."""
    padded = [t for t in operands if ctx.is_padded(t)]
    first = ctx.entries[padded[0]]
    shift = out_dim - padded[0].dim()
    for t in padded[1:]:
        entry = ctx.entries[t]
        if entry.sizes != first.sizes:
            raise ShapeError(f"masked(): {op_name(func)} combines padded tensors with different extents: "
                             f"{first.sizes} and {entry.sizes}.")
        if out_dim - t.dim() != shift or (entry.axes, entry.batch) != (first.axes, first.batch) or (
                ctx.canvas(t) != ctx.canvas(padded[0])):
            raise ShapeError(f"masked(): {op_name(func)} combines padded tensors of shapes {tuple(padded[0].shape)} "
                             f"and {tuple(t.shape)} whose spatial dimensions do not line up.")
    for t in operands:
        if isinstance(t, Tensor) and not ctx.is_padded(t):
            for a in first.axes:
                position = a + shift - (out_dim - t.dim())  # right-aligned broadcasting
                if 0 <= position < t.dim() and t.shape[position] != 1:
                    raise UnsupportedError(
                        f"masked(): {op_name(func)} combines a padded tensor with an ordinary tensor of shape "
                        f"{tuple(t.shape)} that varies over the spatial dimensions; its values at the padded "
                        "positions would not be what each sample sees alone."
                    )
    if shift:
        raise UnsupportedError(f"masked(): {op_name(func)} broadcasts a padded tensor to more dimensions.")
    return first


def _binary(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    a_, o_ = b.get("input"), b.get("other")
    operands = [a_, o_]
    out_dim = max(t.dim() for t in operands if isinstance(t, Tensor))
    entry = _check_operands(ctx, func, operands, out_dim)
    divisor_is_first = func is Tensor.__rtruediv__  # x.__rtruediv__(y) is y / x
    if func in _ops.DIV:
        divisor = a_ if divisor_is_first else o_
        if ctx.is_padded(divisor):
            safe = ctx.fill_outside(divisor, 1)
            if divisor_is_first:
                args = (safe, *args[1:])
            elif len(args) > 1:
                args = (args[0], safe, *args[2:])
            else:
                kwargs = {**kwargs, "other": safe}
    clean_before = {id(t): ctx.is_clean(t) for t in operands if ctx.is_padded(t)}
    finite = func not in _ops.DIV and all(
        ctx.is_finite(t) if isinstance(t, Tensor) else isinstance(t, (int, float)) and math.isfinite(t)
        for t in operands if t is not None)
    out = func(*args, **kwargs)
    if func in _ops.MUL:
        clean = any(clean_before.values())
    elif func in _ops.DIV:
        clean = not divisor_is_first and clean_before.get(id(a_), False) and not ctx.is_padded(o_)
    else:
        clean = all(ctx.is_padded(t) for t in operands) and all(clean_before.values())
    return ctx.track(out, entry.sizes, clean, entry.axes, entry.batch, finite=finite)


def _copy(ctx: MaskedContext, func, args, kwargs):
    out = func(*args, **kwargs)
    source = ctx.padded[0]
    if isinstance(out, Tensor) and out is not source and out.dim() == source.dim():
        entry = ctx.entries[source]
        ctx.track(out, entry.sizes, ctx.is_clean(source), entry.axes, entry.batch,
                  finite=out.dtype == source.dtype and ctx.is_finite(source))
    return out


def _window_sizes(fn: Callable, sizes: Sizes, *args) -> Sizes:
    memo: dict[tuple[int, ...], tuple[int, ...]] = {}
    out = []
    for index, size in enumerate(sizes):
        if size not in memo:
            try:
                result = fn(size, *args)
            except ShapeError as error:
                raise ShapeError(
                    f"masked(): sample {index} (extent {size} at this layer) is too small for it: {error}"
                ) from None
            memo[size] = tuple(result) if isinstance(result, tuple) else (result,)
        out.append(memo[size])
    return tuple(out)


def _reads_outside(in_sizes: Sizes, out_sizes: Sizes, kernel, stride, dilation, before) -> bool:
    """Whether any valid output's window reaches past its sample's extent (into padding or garbage).

    The last valid output of a dimension starts at ``(out − 1)·s − pad_before`` and spans ``d·(k − 1) + 1``
    inputs; if that stays inside the sample (``padding=0``, or a stride that does not reach the edge), the
    values outside the extent are never read and need not be zeroed.
    """
    for size, out, pad in zip(in_sizes, out_sizes, before):
        for i, o, k, s, d, p in zip(size, out, kernel, stride, dilation, pad):
            if (o - 1) * s - p + d * (k - 1) >= i:
                return True
    return False


def _conv_plan(ctx: MaskedContext, func, in_sizes: Sizes, weight: Tensor, stride, padding, dilation):
    """``(output extents, whether any valid output reads past its sample's extent)``, cached per call geometry (the
    arguments as given: nn.ConvNd passes the same tuples every call)."""
    try:
        key = (func, in_sizes, weight.shape, stride, padding, dilation)
        plan = ctx.cache.get(key)
    except TypeError:  # a list among the arguments
        key, plan = None, None
    if plan is None:
        n = weight.dim() - 2
        k, stride, dilation = tuple(weight.shape[2:]), _tuple(stride, n), _tuple(dilation, n)
        padding = padding if isinstance(padding, str) else _tuple(padding, n)
        sizes = _window_sizes(conv_output_size, in_sizes, k, stride, padding, dilation)
        before = [tuple(lo for lo, _ in padding_amounts(size, k, stride, padding, dilation)) for size in in_sizes] if (
            isinstance(padding, str)) else [padding] * len(in_sizes)
        plan = (sizes, _reads_outside(in_sizes, sizes, k, stride, dilation, before))
        if key is not None:
            ctx.cache[key] = plan
    return plan


def _windowed_input(ctx: MaskedContext, func, args, kwargs):
    """The bound arguments, padded input, weight and spatial rank of a convolution (padded input only)."""
    b = bind(func, args, kwargs)
    x, weight = b["input"], b["weight"]
    if not ctx.is_padded(x) or len(ctx.padded) != 1:
        raise UnsupportedError(f"masked(): {op_name(func)} with a padded weight or bias is not supported.")
    _require_canonical(ctx, func, x)
    return b, x, weight, weight.dim() - 2


def _conv(ctx: MaskedContext, func, args, kwargs):
    if len(args) == 7 and not kwargs and len(ctx.padded) == 1 and args[0] is ctx.padded[0]:
        # nn.ConvNd's own call, (input, weight, bias, stride, padding, dilation, groups): no binding needed
        x, weight, _, stride, padding, dilation, _ = args
        _require_canonical(ctx, func, x)
    else:
        b, x, weight, _ = _windowed_input(ctx, func, args, kwargs)
        stride, padding, dilation = b.get("stride", 1), b.get("padding", 0), b.get("dilation", 1)
    sizes, reads = _conv_plan(ctx, func, ctx.entries[x].sizes, weight, stride, padding, dilation)
    if reads:
        x = ctx.zeros_outside(x)
        args, kwargs = replace_input(args, kwargs, x)
    return ctx.track(func(*args, **kwargs), sizes, finite=ctx.is_finite(x))


def _conv_transpose(ctx: MaskedContext, func, args, kwargs):
    b, x, weight, n = _windowed_input(ctx, func, args, kwargs)
    geometry = (tuple(weight.shape[2:]), _tuple(b.get("stride", 1), n), _tuple(b.get("padding", 0), n),
                _tuple(b.get("output_padding", 0), n), _tuple(b.get("dilation", 1), n))
    sizes = _window_sizes(conv_transpose_output_size, ctx.entries[x].sizes, *geometry)
    out = func(ctx.zeros_outside(x), *args[1:], **kwargs)
    return ctx.track(out, sizes)


def _pool_geometry(b: dict, n: int):
    """``(kernel_size, stride, padding)`` tuples of a ``*_pool*d`` call; ``stride`` defaults to the kernel."""
    kernel = _tuple(b["kernel_size"], n)
    stride = b.get("stride")
    stride = kernel if stride is None or stride == [] or stride == () else _tuple(stride, n)
    return kernel, stride, _tuple(b.get("padding", 0), n)


def _max_pool(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    _require_canonical(ctx, func, x)
    n = x.dim() - 2
    kernel, stride, padding = _pool_geometry(b, n)
    dilation = _tuple(b.get("dilation", 1), n)
    ceil_mode = b.get("ceil_mode", False)
    in_sizes = ctx.entries[x].sizes
    key = (func, in_sizes, kernel, stride, padding, dilation, ceil_mode)
    plan = ctx.cache.get(key)
    if plan is None:
        sizes = _window_sizes(pool_output_size, in_sizes, kernel, stride, padding, dilation, ceil_mode)
        plan = (sizes, _reads_outside(in_sizes, sizes, kernel, stride, dilation, [padding] * len(in_sizes)),
                _window_ends_inside(in_sizes, sizes, stride, padding))
        ctx.cache[key] = plan
    sizes, reads, ends_inside = plan
    # A ReLU's zero-padded result needs no fill: a window's valid entries are >= 0, so the zeros it reads beside
    # them never win, and which entry holds the maximum is the same (ties go to the first, the valid one). The
    # result is then >= 0 as well, and zero outside the extents when no window past them reaches a valid entry.
    nonneg = ctx.is_clean(x) and ctx.is_nonnegative(x)
    if reads and not nonneg:  # PyTorch pads max pooling with -inf (here: any value below every valid entry)
        x = ctx.fill_outside(x, -math.inf)
        args, kwargs = replace_input(args, kwargs, x)
    out = func(*args, **kwargs)
    finite = ctx.is_finite(x)
    clean = nonneg and ends_inside
    if isinstance(out, tuple):  # (values, indices)
        return (ctx.track(out[0], sizes, clean, finite=finite, nonneg=nonneg), *out[1:])
    return ctx.track(out, sizes, clean, finite=finite, nonneg=nonneg)


def _window_ends_inside(in_sizes: Sizes, out_sizes: Sizes, stride, padding) -> bool:
    """Whether no output position past a sample's output extent has a window that reaches a valid input (so a
    window op on a zero-padded input leaves zeros there). Its first window starts at ``out·stride − pad``."""
    for size, out in zip(in_sizes, out_sizes):
        for i, o, s, p in zip(size, out, stride, padding):
            if o * s - p < i:
                return False
    return True


def _avg_pool(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    _require_canonical(ctx, func, x)
    n = x.dim() - 2
    kernel, stride, padding = _pool_geometry(b, n)
    ceil_mode = b.get("ceil_mode", False)
    count_include_pad = b.get("count_include_pad", True)
    divisor_override = b.get("divisor_override")
    in_sizes = ctx.entries[x].sizes
    sizes = _window_sizes(pool_output_size, in_sizes, kernel, stride, padding, 1, ceil_mode)
    ones = (1,) * n
    if not _reads_outside(in_sizes, sizes, kernel, stride, ones, [padding] * len(in_sizes)):
        return ctx.track(func(*args, **kwargs), sizes)  # every window inside its sample
    clean = ctx.zeros_outside(x)
    if count_include_pad or divisor_override is not None:
        if ceil_mode and divisor_override is None:
            raise UnsupportedError(
                f"masked(): {op_name(func)} with ceil_mode=True and count_include_pad=True is not supported: the "
                "divisor of the last window depends on each sample's size. Use ceil_mode=False."
            )
        out = func(clean, *args[1:], **{k: v for k, v in kwargs.items() if k != "input"})
        return ctx.track(out, sizes)
    # count_include_pad=False: average over the positions each sample really has.
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    valid = ctx._layout(x, x.dtype)
    if n == 1:
        total = pool(clean, kernel, stride, padding, ceil_mode, True)
        count = pool(valid, kernel, stride, padding, ceil_mode, True)
    else:
        total = pool(clean, kernel, stride, padding, ceil_mode, True, 1)
        count = pool(valid, kernel, stride, padding, ceil_mode, True, 1)
    return ctx.track(total / torch.where(count > 0, count, 1), sizes)


_RETURNS_INDICES = _ops.functions(
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", namespaces=(torch,)
) | _ops.functions("adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
                   "adaptive_max_pool3d_with_indices", namespaces=(F,))
_ADAPTIVE_AVG = _ops.functions("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
                               namespaces=(torch, F, torch._C._nn))


def _adaptive(ctx: MaskedContext, func, args, kwargs):
    """Adaptive pooling as each sample alone pools: its ``output_size`` bins over its own extent.

    Global pooling (every target 1) reduces over the valid positions of the batch at once; any other target runs
    once per group of samples of one extent, on that group's valid crop (every output position is then valid;
    a ``None`` target keeps the sample's own extent).
    """
    b = bind(func, args, kwargs)
    x = b["input"]
    _require_canonical(ctx, func, x)
    n = x.dim() - 2
    target = _tuple(b["output_size"], n)
    indices = func in _RETURNS_INDICES or bool(b.get("return_indices", False))
    if not indices and all(t == 1 for t in target):
        dims = tuple(range(2, x.dim()))
        mask = ctx.mask(x)
        if func in _ADAPTIVE_AVG:
            return ctx.zeros_outside(x).sum(dims, keepdim=True) / mask.sum(dims, keepdim=True).to(x.dtype)
        return torch.where(mask, x, -math.inf).amax(dims, keepdim=True)
    in_sizes = ctx.entries[x].sizes
    sizes = tuple(tuple(s if t is None else int(t) for s, t in zip(size, target)) for size in in_sizes)
    canvas = tuple(max(size[i] for size in sizes) for i in range(n))
    rest_args, rest_kwargs = args[1:], {k: v for k, v in kwargs.items() if k not in ("input", "self")}
    out = _per_extent(x, in_sizes, sizes, canvas, lambda part, _: func(part, *rest_args, **rest_kwargs))
    if isinstance(out, tuple):  # (values, indices): indices into each sample's own extent, as alone
        return (ctx.track(out[0], sizes), *out[1:])
    return ctx.track(out, sizes)


def _dims(dim, nd: int) -> tuple[int, ...]:
    if dim is None:
        return tuple(range(nd))
    return tuple(sorted(d % nd for d in ((dim,) if isinstance(dim, int) else dim)))


def _after_removing(axes: tuple[int, ...], removed: Sequence[int]) -> tuple[int, ...]:
    return tuple(a - sum(1 for r in removed if r < a) for a in axes)


def _reduce(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    if not ctx.is_padded(x):
        raise UnsupportedError(f"masked(): {op_name(func)} with a padded tensor as a secondary argument.")
    entry = ctx.entries[x]
    nd = x.dim()
    dim = b.get("dim")
    keepdim = b.get("keepdim", False)
    dims = _dims(dim, nd)
    spatial = set(entry.axes)
    name = func.__name__
    if name in ("max", "min") and dim is None:
        raise UnsupportedError(f"masked(): {op_name(func)} over a whole padded tensor; reduce over some dims.")
    if not spatial & set(dims):  # over channels (or other non-spatial dims) only: the extent stays
        if entry.batch in dims:
            raise UnsupportedError(f"masked(): {op_name(func)} over the batch dimension of a padded tensor.")
        out = func(*args, **kwargs)
        axes = entry.axes if keepdim else _after_removing(entry.axes, dims)
        batch = entry.batch if keepdim else _after_removing((entry.batch,), dims)[0]
        clean = ctx.is_clean(x) and name in ("sum", "mean", "amax", "amin", "max", "min", "nansum", "nanmean")
        if isinstance(out, tuple):  # (values, indices)
            return type(out)((ctx.track(out[0], entry.sizes, clean, axes, batch), out[1]))
        return ctx.track(out, entry.sizes, clean, axes, batch)
    if not spatial <= set(dims) or entry.batch in dims:
        raise UnsupportedError(
            f"masked(): {op_name(func)} over dims {dims} reduces some spatial dimensions of a padded tensor but not "
            "all (or the batch dimension); reduce over all spatial dimensions."
        )
    mask = ctx.mask(x)
    if name in ("amax", "amin", "max", "min"):
        fill = -math.inf if name in ("amax", "max") else math.inf
        return func(torch.where(mask, x, fill), *args[1:], **{k: v for k, v in kwargs.items() if k != "input"})
    total = ctx.zeros_outside(x).sum(dims, keepdim=keepdim)
    if name in ("sum", "nansum"):
        return total
    count = mask.expand_as(x).sum(dims, keepdim=keepdim).to(x.dtype)
    return total / count


def _batch_norm(ctx: MaskedContext, func, args, kwargs):
    # torch.batch_norm and F.batch_norm order their arguments differently: read by name
    x = argument(func, args, kwargs, "input")
    if len(ctx.padded) != 1 or x is not ctx.padded[0]:
        raise UnsupportedError(f"masked(): {op_name(func)} with a padded weight or statistic.")
    _require_canonical(ctx, func, x)
    entry = ctx.entries[x]
    if not argument(func, args, kwargs, "training"):
        return ctx.track(func(*args, **kwargs), entry.sizes, finite=ctx.is_finite(x))
    b = bind(func, args, kwargs)
    out = masked_batch_norm(x, ctx.mask(x), b.get("running_mean"), b.get("running_var"), b.get("weight"),
                            b.get("bias"), b.get("momentum", 0.1) if b.get("momentum") is not None else 0.1,
                            b.get("eps", 1e-5), ctx.process_group)
    return ctx.track(out, entry.sizes)


def _group_norm(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    _require_canonical(ctx, func, x)
    out = masked_group_norm(x, ctx.mask(x), b["num_groups"], b.get("weight"), b.get("bias"), b.get("eps", 1e-5))
    return ctx.track(out, ctx.entries[x].sizes)


def _instance_norm(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    _require_canonical(ctx, func, x)
    entry = ctx.entries[x]
    if not b.get("use_input_stats", True):
        return ctx.track(func(*args, **kwargs), entry.sizes)
    if b.get("running_mean") is not None:
        raise UnsupportedError("masked(): instance_norm with track_running_stats=True in training is not supported.")
    out = masked_group_norm(x, ctx.mask(x), x.shape[1], b.get("weight"), b.get("bias"), b.get("eps", 1e-5))
    return ctx.track(out, entry.sizes)


def _layer_norm(ctx: MaskedContext, func, args, kwargs):
    """Layer norm over trailing non-spatial dims (ConvNeXt's channels-last blocks) is per position."""
    b = bind(func, args, kwargs)
    x = b["input"]
    entry = ctx.entries[x]
    shape = _tuple(b["normalized_shape"], 1)
    if any(a >= x.dim() - len(shape) for a in entry.axes) or len(ctx.padded) != 1:
        raise UnsupportedError(
            f"masked(): {op_name(func)} with normalized_shape={tuple(shape)} normalises over spatial dimensions of "
            f"a padded tensor of shape {tuple(x.shape)} (spatial dims {entry.axes}); normalise over channels "
            "only (channels last, or GroupNorm)."
        )
    return ctx.track(func(*args, **kwargs), entry.sizes, False, entry.axes)


def _linear(ctx: MaskedContext, func, args, kwargs):
    """``F.linear`` over a non-spatial last dimension (channels last) is per position."""
    b = bind(func, args, kwargs)
    x = b["input"]
    entry = ctx.entries.get(x) if isinstance(x, Tensor) else None
    if entry is None or x.dim() - 1 in entry.axes or len(ctx.padded) != 1:
        raise UnsupportedError(
            f"masked(): {op_name(func)} over the last dimension of a padded tensor of shape "
            f"{tuple(ctx.padded[0].shape)}, which is spatial (spatial dims {ctx.entries[ctx.padded[0]].axes}): it "
            "would mix positions. Pool globally first, or permute the channels last."
        )
    clean = ctx.is_clean(x) and b.get("bias") is None
    return ctx.track(func(*args, **kwargs), entry.sizes, clean, entry.axes)


def _softmax(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    entry = ctx.entries[x]
    dim = b.get("dim")
    if dim is None or dim % x.dim() in entry.axes or dim % x.dim() == 0:
        raise UnsupportedError(f"masked(): {op_name(func)} over dim={dim} of a padded tensor; only over channels "
                               f"(not the spatial dims {entry.axes} or the batch).")
    return ctx.track(func(*args, **kwargs), entry.sizes, False, entry.axes)


def _stack(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    tensors = list(b["input"])
    nd = tensors[0].dim() + 1
    dim = b.get("dim", 0) % nd
    if any(not ctx.is_padded(t) for t in tensors):
        raise UnsupportedError(f"masked(): {op_name(func)} of padded and ordinary tensors is not supported.")
    entry = _check_operands(ctx, func, tensors, tensors[0].dim())
    axes = tuple(a + (a >= dim) for a in entry.axes)
    out = func(*args, **kwargs)
    return ctx.track(out, entry.sizes, all(ctx.is_clean(t) for t in tensors), axes, entry.batch + (entry.batch >= dim))


def _cat(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    tensors = list(b["input"])
    dim = b.get("dim", 0) % tensors[0].dim()
    if any(not ctx.is_padded(t) for t in tensors):
        raise UnsupportedError(
            f"masked(): {op_name(func)} of padded and ordinary tensors (shapes {[tuple(t.shape) for t in tensors]}) "
            "is not supported: the ordinary tensor's values outside each sample's extent are unknown."
        )
    entry = ctx.entries[tensors[0]]
    if dim == 0:
        if any(ctx.entries[t].axes != entry.axes for t in tensors):
            raise UnsupportedError(f"masked(): {op_name(func)} of padded tensors with different layouts.")
        sizes = tuple(s for t in tensors for s in ctx.entries[t].sizes)
        return ctx.track(func(*args, **kwargs), sizes, all(ctx.is_clean(t) for t in tensors), entry.axes,
                         finite=all(ctx.is_finite(t) for t in tensors))
    if dim in entry.axes:
        raise UnsupportedError(f"masked(): {op_name(func)} along spatial dim={dim} is not supported on padded tensors.")
    _check_operands(ctx, func, tensors, tensors[0].dim())
    return ctx.track(func(*args, **kwargs), entry.sizes, all(ctx.is_clean(t) for t in tensors), entry.axes,
                     finite=all(ctx.is_finite(t) for t in tensors))


def _pad(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    _require_canonical(ctx, func, x)
    pads = tuple(b["pad"])
    pad_mode = b.get("mode", "constant")
    value = b.get("value")
    if pad_mode != "constant" or (value not in (None, 0, 0.0)) or any(p < 0 for p in pads):
        raise UnsupportedError(
            f"masked(): F.pad with mode={pad_mode!r}, value={value!r}, pad={pads} is not supported; zero padding "
            "(mode='constant', value=0, non-negative amounts) is."
        )
    n = x.dim() - 2
    if len(pads) // 2 > n:
        raise UnsupportedError("masked(): F.pad of the channel or batch dimension is not supported.")
    out = func(ctx.zeros_outside(x), *args[1:], **{k: v for k, v in kwargs.items() if k != "input"})
    extra = [0] * n
    for i in range(len(pads) // 2):
        extra[n - 1 - i] = pads[2 * i] + pads[2 * i + 1]
    sizes = tuple(tuple(s + e for s, e in zip(size, extra)) for size in ctx.entries[x].sizes)
    return ctx.track(out, sizes, True)


def _replicate_edges(x: Tensor, sizes: Sizes) -> Tensor:
    """Copy each sample's last valid row/column outward to the canvas edge (per spatial dimension)."""
    n = x.dim() - 2
    limits = torch.tensor(sizes, device=x.device) - 1  # (N, n)
    for axis in range(n):
        extent = x.shape[2 + axis]
        positions = torch.arange(extent, device=x.device)
        index = torch.minimum(positions.view(1, -1), limits[:, axis : axis + 1])  # (N, extent)
        view = [x.shape[0]] + [1] * (n + 1)
        view[2 + axis] = extent
        x = x.gather(2 + axis, index.view(view).expand_as(x))
    return x


_LINEAR_MODES = ("linear", "bilinear", "bicubic", "trilinear")


def _target_extents(ctx: MaskedContext, in_sizes: Sizes, canvas: tuple[int, ...], target: tuple[int, ...]):
    """Each sample's output extent for ``interpolate(size=target)``: the extents of a padded tensor whose canvas is
    ``target`` (e.g. the skip connection), or ``in · target / canvas`` where that is an integer for every sample."""
    candidates = ctx.extents_of_canvas(target)
    if len(candidates) > 1:  # prefer the ones in the same proportion as the canvases
        proportional = [c for c in candidates if all(
            o * c_ == s * t for size, out in zip(in_sizes, c) for s, o, c_, t in zip(size, out, canvas, target))]
        candidates = proportional or candidates
    if len(candidates) == 1:
        return candidates[0]
    if not candidates and all(t % c == 0 for t, c in zip(target, canvas)):
        return tuple(tuple(s * (t // c) for s, t, c in zip(size, target, canvas)) for size in in_sizes)
    return None


def _interpolate(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    size, scale = b.get("size"), b.get("scale_factor")
    mode, align = b.get("mode", "nearest"), b.get("align_corners")
    recompute, antialias = b.get("recompute_scale_factor"), b.get("antialias", False)
    if not ctx.is_padded(x):
        # An ordinary per-sample tensor (e.g. a global summary, or a map every sample fills) resized to the canvas
        # of a padded tensor: each sample alone resizes it to its own extent there.
        if size is None or x.dim() < 3:
            return func(*args, **kwargs)
        target = _tuple(size, x.dim() - 2)
        candidates = [c for c in ctx.extents_of_canvas(target) if any(size != target for size in c)]
        if len(candidates) != 1 or len(candidates[0]) != x.shape[0]:
            return func(*args, **kwargs)  # not tied to a padded canvas: an ordinary op
        full = (tuple(x.shape[2:]),) * x.shape[0]
        out = _per_extent(x, full, candidates[0], target, lambda part, to: F.interpolate(
            part, size=to, mode=mode, align_corners=align, antialias=antialias))
        return ctx.track(out, candidates[0])
    _require_canonical(ctx, func, x)
    n = x.dim() - 2
    entry = ctx.entries[x]
    canvas = tuple(x.shape[2:])
    if mode not in ("nearest", "nearest-exact", "area", *_LINEAR_MODES):
        raise UnsupportedError(f"masked(): interpolate mode={mode!r} is not supported on a padded batch.")
    if size is None and scale is not None and not recompute and not antialias and not align and mode != "area":
        # The sampling grid depends on the scale only: every sample reads what it reads alone.
        scales = _tuple(scale, n)
        sizes = tuple(tuple(math.floor(s * f) for s, f in zip(size_, scales)) for size_ in entry.sizes)
        if any(s < 1 for size_ in sizes for s in size_):
            raise ShapeError(f"masked(): interpolate(scale_factor={scale}) leaves a sample empty: extents {sizes}.")
        source = _replicate_edges(x, entry.sizes) if mode in _LINEAR_MODES else x
        out = func(source, *args[1:], **{k: v for k, v in kwargs.items() if k != "input"})
        return ctx.track(out, sizes, ctx.is_clean(x) and _nearest_keeps_zero(mode, scales), finite=ctx.is_finite(x))
    # Per-sample targets: from size= (the canvas of another padded tensor, or a multiple of this one) or from a
    # recomputed scale factor.
    if size is not None:
        target = _tuple(size, n)
        sizes = _target_extents(ctx, entry.sizes, canvas, target)
        if sizes is None:
            raise UnsupportedError(
                f"masked(): interpolate(size={target}) of a padded tensor with canvas {canvas}: the per-sample "
                f"target is not defined ({len(ctx.extents_of_canvas(target))} padded tensors of canvas {target} "
                "seen, and it is not an integer multiple of the canvas). Pass size from a padded tensor "
                "(e.g. skip.shape[-2:]) or use scale_factor."
            )
    else:
        scales = _tuple(scale, n)
        sizes = tuple(tuple(math.floor(s * f) for s, f in zip(size_, scales)) for size_ in entry.sizes)
    if any(s < 1 for size_ in sizes for s in size_):
        raise ShapeError(f"masked(): interpolate leaves a sample empty: extents {sizes}.")
    out_canvas = tuple(max(s[i] for s in sizes) for i in range(n))
    if size is not None:
        out_canvas = _tuple(size, n)
    same_grid = not align and not antialias and mode != "area" and all(
        o * c == s * t for size_, out_ in zip(entry.sizes, sizes)
        for s, o, c, t in zip(size_, out_, canvas, out_canvas))
    finite = ctx.is_finite(x)  # interpolation only weighs and copies values
    if same_grid and size is not None:
        source = _replicate_edges(x, entry.sizes) if mode in _LINEAR_MODES else x
        out = F.interpolate(source, size=out_canvas, mode=mode, align_corners=align)
        clean = ctx.is_clean(x) and _nearest_keeps_zero(mode, [t / c for t, c in zip(out_canvas, canvas)])
        return ctx.track(out, sizes, clean, finite=finite)
    # The grid depends on each sample's own size (align_corners=True, antialias, area, a recomputed scale):
    # run each group of samples of one extent on its own extent and place the results on one canvas (zero-padded).
    return ctx.track(_per_extent(x, entry.sizes, sizes, out_canvas, lambda part, target: F.interpolate(
        part, size=target, mode=mode, align_corners=align, antialias=antialias)), sizes, True, finite=finite)


def _nearest_keeps_zero(mode: str, ratios) -> bool:
    """Whether nearest upsampling by these output/input ratios leaves zeros past every sample's extent when its input
    has them: an integer power of two (an exact reciprocal, so position ``o ≥ r·i`` reads ``floor(o / r) ≥ i``)."""
    if mode not in ("nearest", "nearest-exact"):
        return False
    for r in ratios:
        r = float(r)
        if r < 1 or not r.is_integer() or int(r) & (int(r) - 1):
            return False
    return True


def _per_extent(x: Tensor, in_sizes: Sizes, out_sizes: Sizes, out_canvas: tuple[int, ...], fn):
    """``fn(x[group, :, :extent], target)`` for each group of samples with one (input, output) extent, placed on one
    zero-padded canvas in the samples' order; a tuple if ``fn`` returns one (e.g. values and indices)."""
    groups: dict[tuple, list[int]] = {}
    for index, key in enumerate(zip(in_sizes, out_sizes)):
        groups.setdefault(key, []).append(index)
    results: list = []
    order: list[int] = []
    for (size, target), members in groups.items():
        rows = slice(members[0], members[0] + 1) if len(members) == 1 else members
        result = fn(x[(rows, slice(None), *(slice(0, s) for s in size))], target)
        pads = []
        for o, c in zip(reversed(target), reversed(out_canvas)):
            pads += [0, c - o]
        results.append(tuple(F.pad(r, pads) for r in result) if isinstance(result, tuple) else F.pad(result, pads))
        order += members
    if len(groups) == 1:
        return results[0]
    inverse = torch.tensor(order, device=x.device).argsort()

    def combine(parts):
        return torch.cat(parts).index_select(0, inverse)

    if isinstance(results[0], tuple):
        return tuple(combine([r[i] for r in results]) for i in range(len(results[0])))
    return combine(results)


def _like(ctx: MaskedContext, func, args, kwargs):
    """``zeros_like`` & co.: a tensor of the same extents (zeros are zero outside too, so it is clean)."""
    out = func(*args, **kwargs)
    b = bind(func, args, kwargs)
    zeros = func is torch.zeros_like or (func is torch.full_like and b.get("fill_value") == 0)
    source = ctx.padded[0]
    entry = ctx.entries[source]
    return ctx.track(out, entry.sizes, zeros, entry.axes)


def _ordinary(ctx: MaskedContext, func, args, kwargs):
    """``x.new_zeros(shape)`` & co. only borrow dtype and device: the result is an ordinary tensor."""
    return func(*args, **kwargs)


def _data(ctx: MaskedContext, func, args, kwargs):
    """``x.data`` shares storage but not the version counter: both sides are marked as never known clean."""
    source = ctx.padded[0]
    out = func(*args, **kwargs)
    entry = ctx.entries[source]
    entry.aliased = True
    ctx.cleaned.pop(source, None)
    ctx.track(out, entry.sizes, False, entry.axes)
    ctx.entries[out].aliased = True
    return out


def _permute(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    nd = x.dim()
    entry = ctx.entries[x]
    if func in _PERMUTE:
        dims = b.get("dims", b.get("dim"))
        dims = tuple(dims) if isinstance(dims, (tuple, list, torch.Size)) else (dims, *b.get("*", ()))
        order = [d % nd for d in dims]
    elif func in _MOVEDIM:
        order = _movedim_order(nd, b["source"], b["destination"])
    else:  # transpose / swapaxes / swapdims
        d0, d1 = (b.get(k) for k in ("dim0", "dim1")) if "dim0" in b else (b.get("axis0"), b.get("axis1"))
        order = list(range(nd))
        order[d0 % nd], order[d1 % nd] = order[d1 % nd], order[d0 % nd]
    axes = tuple(order.index(a) for a in entry.axes)
    if order[0] != 0 or list(axes) != sorted(axes):
        raise UnsupportedError(
            f"masked(): {op_name(func)} with order {tuple(order)} moves the batch dimension or reorders the spatial "
            f"dimensions {entry.axes} of a padded tensor of shape {tuple(x.shape)}; only moving channels (e.g. to "
            "channels last and back) is supported."
        )
    return ctx.track(func(*args, **kwargs), entry.sizes, ctx.is_clean(x), axes)


def _movedim_order(nd: int, source, destination) -> list[int]:
    src = [s % nd for s in _tuple(source, 1)]
    dst = [d % nd for d in _tuple(destination, 1)]
    order = [None] * nd
    for s, d in zip(src, dst):
        order[d] = s
    rest = iter(i for i in range(nd) if i not in src)
    return [o if o is not None else next(rest) for o in order]


def _map_axes(in_shape, out_shape, axes) -> tuple[int, ...] | None:
    """Where the batch and spatial dims of ``in_shape`` are in ``out_shape`` after a reshape, if each is kept whole."""
    prefix_out = [1]
    for s in out_shape:
        prefix_out.append(prefix_out[-1] * s)
    result = []
    for d in (0, *axes):
        size = in_shape[d]
        if size == 1 and d != 0:
            return None
        before = math.prod(in_shape[:d])
        found = [e for e in range(len(out_shape)) if prefix_out[e] == before and out_shape[e] == size]
        if not found:
            return None
        result.append(found[0])
    if result[0] != 0:
        return None
    return tuple(result[1:])


def _reshape(ctx: MaskedContext, func, args, kwargs):
    x = ctx.padded[0]
    entry = ctx.entries[x]
    out = func(*args, **kwargs)
    axes = _map_axes(tuple(x.shape), tuple(out.shape), entry.axes) if isinstance(out, Tensor) else None
    if axes is None:
        raise UnsupportedError(
            f"masked(): {op_name(func)} from shape {tuple(x.shape)} to {tuple(getattr(out, 'shape', ()))} merges or "
            f"splits the batch or spatial dimensions {entry.axes} of a padded tensor; only non-spatial dimensions "
            "(channels, groups) may be merged or split. Pool globally first, or flatten after the padded part."
        )
    return ctx.track(out, entry.sizes, ctx.is_clean(x), axes)


def _split(ctx: MaskedContext, func, args, kwargs):
    b = bind(func, args, kwargs)
    x = b["input"]
    entry = ctx.entries[x]
    dim = b.get("dim", 0) % x.dim()
    if dim in entry.axes or dim == 0:
        raise UnsupportedError(f"masked(): {op_name(func)} along dim={dim} of a padded tensor; only along channels.")
    clean = ctx.is_clean(x)
    out = func(*args, **kwargs)
    axes = _after_removing(entry.axes, [dim]) if func in _UNBIND else entry.axes
    return type(out)(ctx.track(t, entry.sizes, clean, axes) for t in out)


def _getitem(ctx: MaskedContext, func, args, kwargs):
    x, key = args[0], args[1]
    if not ctx.is_padded(x) or len(ctx.padded) != 1:
        raise UnsupportedError("masked(): indexing with a padded tensor as the index is not supported.")
    entry = ctx.entries[x]
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise UnsupportedError(f"masked(): indexing a padded tensor with {key!r}.")
    consumed = sum(0 if k is None or k is Ellipsis else 1 for k in key)
    expanded: list = []
    for k in key:
        if k is Ellipsis:
            expanded.extend([slice(None)] * (x.dim() - consumed))
        else:
            expanded.append(k)
    position, out_position, axes, advanced = 0, 0, [], 0
    full = slice(None)
    for k in expanded:
        if k is None:
            out_position += 1
            continue
        spatial = position in entry.axes
        if spatial or position == 0:
            if not (isinstance(k, slice) and k == full):
                raise UnsupportedError(
                    f"masked(): indexing a padded tensor with {key!r} selects along the batch or a spatial dimension "
                    f"({entry.axes}); only channel selection (x[:, channels]) is supported."
                )
            if spatial:
                axes.append(out_position)
            out_position += 1
        elif isinstance(k, int):
            pass  # the dimension goes
        elif isinstance(k, slice):
            out_position += 1
        else:
            advanced += 1
            out_position += 1
        position += 1
    for p in range(position, x.dim()):
        if p in entry.axes:
            axes.append(out_position)
        out_position += 1
    if advanced > 1:
        raise UnsupportedError(f"masked(): indexing a padded tensor with {key!r} (more than one index tensor).")
    out = func(*args, **kwargs)
    return ctx.track(out, entry.sizes, ctx.is_clean(x), tuple(axes))


_INPLACE = frozenset(f for f in (_ops.POINTWISE | _ops.ADD | _ops.MUL | _ops.DIV)
                     if (f.__name__.endswith("_") and not f.__name__.endswith("__"))
                     or f.__name__ in ("__iadd__", "__isub__", "__imul__", "__itruediv__"))
_RELU = _ops.functions("relu", namespaces=(torch, Tensor, F))
_PERMUTE = _ops.functions("permute", namespaces=(torch, Tensor))
_MOVEDIM = _ops.functions("movedim", "moveaxis", namespaces=(torch, Tensor))
_TRANSPOSE = _ops.functions("transpose", "swapaxes", "swapdims", namespaces=(torch, Tensor))
_UNBIND = _ops.functions("unbind", namespaces=(torch, Tensor))

BUILT_IN: list[tuple[frozenset, Callable, str | None]] = [
    (_ops.functions("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
                    namespaces=(torch,)), _like, "``zeros_like`` & co.: same extents"),
    (_ops.functions("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", namespaces=(Tensor,)),
     _ordinary, "``x.new_zeros(shape)`` & co.: ordinary tensors"),
    (_ops.POINTWISE, _pointwise,
     "**point-wise ops** (activations, dropout, ``exp``, ``clamp`` …): run as they are, the extent is unchanged; "
     "values outside the extent may become non-zero (harmless until a window op reads them). Ops not finite at "
     "0 (``sqrt``, ``log``, ``pow`` …) see 1 outside the extents"),
    (_ops.ADD | _ops.MUL | _ops.DIV, _binary,
     "**arithmetic** of padded tensors of one extent, or with tensors constant over the spatial dims "
     "(per-channel or per-sample constants: squeeze-excite, stochastic depth, layer scale); a padded divisor "
     "sees 1 outside the extents"),
    (_ops.COPIES, _copy, "**copies and conversions** (``clone``, ``to``, ``contiguous``)"),
    (_ops.functions("conv1d", "conv2d", "conv3d", namespaces=(torch, F)), _conv,
     "**convolutions**: the input is first zeroed outside the extent when a valid output's window reaches "
     "past it (exactly the zero padding each sample sees alone); output extents follow :mod:`cnnkit.shapes`"),
    (_ops.functions("conv_transpose1d", "conv_transpose2d", "conv_transpose3d", namespaces=(torch, F)),
     _conv_transpose, "**transposed convolutions**: zeroed input, extents from :mod:`cnnkit.shapes`"),
    (_ops.functions("max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
                    "max_pool3d_with_indices", namespaces=(torch, F)), _max_pool,
     "**max pooling** fills ``−inf`` outside the extent (PyTorch pads max pooling with ``−inf``)"),
    (_ops.functions("avg_pool1d", "avg_pool2d", "avg_pool3d", namespaces=(torch, F, torch._C._nn)), _avg_pool,
     "**average pooling**: zero padding, or the count of valid positions with ``count_include_pad=False``"),
    (_ADAPTIVE_AVG | _ops.functions(
        "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "adaptive_max_pool1d_with_indices",
        "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d_with_indices", namespaces=(torch, F)), _adaptive,
     "**adaptive pooling**: to 1 (global pooling) over valid positions; to other sizes (PSPNet's pyramid bins) "
     "per group of samples of one extent, each on its own extent as alone (the result fills its canvas)"),
    (_ops.functions("mean", "sum", "amax", "amin", "nanmean", "nansum", "max", "min", namespaces=(torch, Tensor)),
     _reduce, "**reductions**: over non-spatial dims keep the extent; over all spatial dims use valid positions"),
    (_ops.functions("batch_norm", namespaces=(torch, F)), _batch_norm,
     "**batch norm**: eval mode is point-wise; training mode uses the statistics of valid positions (optionally "
     "over a process group)"),
    (_ops.functions("group_norm", namespaces=(torch, F)), _group_norm, "**group norm** over valid positions"),
    (_ops.functions("instance_norm", namespaces=(torch, F)), _instance_norm,
     "**instance norm** over valid positions"),
    (_ops.functions("layer_norm", namespaces=(torch, F)), _layer_norm,
     "**layer norm** and **linear** over a non-spatial last dimension (channels last, as in ConvNeXt)"),
    (_ops.functions("linear", namespaces=(torch, F)), _linear, None),
    (_ops.functions("softmax", "log_softmax", "softmin", namespaces=(torch, Tensor, F)), _softmax,
     "**softmax** over channels"),
    (_ops.CONCAT, _cat, "**concatenation** along channels (same extents) or the batch"),
    (_ops.functions("stack", namespaces=(torch,)), _stack,
     "**stack** of padded tensors of one extent (e.g. then summed over the new dimension, as FPN's merge)"),
    (frozenset({F.pad}), _pad, "**zero padding** (``F.pad``, constant 0)"),
    (_PERMUTE | _MOVEDIM | _TRANSPOSE, _permute,
     "**permute / transpose / movedim** that keep the batch first and the spatial dims in order"),
    (_ops.functions("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as",
                    namespaces=(torch, Tensor)), _reshape,
     "**view / reshape / flatten** that only merge or split non-spatial dims (channel shuffle)"),
    (_ops.functions("chunk", "split", "unbind", "tensor_split", namespaces=(torch, Tensor)), _split,
     "**chunk / split** along channels"),
    (frozenset({Tensor.__getitem__}), _getitem, "**channel selection** ``x[:, channels]``"),
    (frozenset({Tensor.data.__get__}), _data,
     "``x.data`` (tracked; neither side is trusted to be zero outside the extents afterwards)"),
]


def _install(funcs, rule, table=RULES) -> None:
    for func in funcs:
        if func in _ops.METADATA:
            raise ValueError(f"register_masked_op: {op_name(func)} reads metadata and needs no rule.")
        table[func] = rule


for _funcs_, _rule_, _ in BUILT_IN:
    _install(_funcs_, _rule_)
ALWAYS[F.interpolate] = _interpolate
RULES[F.interpolate] = _interpolate
BATCH_ANYWHERE.update({_pointwise, _binary, _copy, _reduce, _stack})
del _funcs_, _rule_

RULES_TEXT = "\n".join(f"* {text}." for _, _, text in BUILT_IN if text) + (
    "\n* **interpolation** with ``scale_factor`` (``align_corners=False``) runs on the batch (linear modes see each "
    "sample's edge copied outward); ``size=`` the canvas of another padded tensor (a skip connection) or an "
    "integer multiple of the input's, ``align_corners=True``, ``antialias``: per-sample targets, run per extent "
    "where the grid depends on it; an ordinary per-sample grid (a 1×1 global summary, adaptive pooling's bins) "
    "resized to the canvas of a padded tensor goes to each sample's extent there."
    "\n* **anything else** that touches a padded tensor raises :class:`~cnnkit.errors.UnsupportedError` naming the "
    "op and the module: it would mix padding into valid positions (``flatten`` of spatial dims, ``Linear`` over "
    "a spatial axis, attention over positions …); inside a module, that module can run per sample instead "
    "(:mod:`cnnkit.masking.per_sample`).")


def register_masked_op(*funcs: Callable, always: bool = False):
    """Register a rule telling :func:`~cnnkit.masked` how to run ``funcs`` on padded tensors (a decorator).

    The rule is called as ``rule(ctx, func, args, kwargs)`` whenever one of ``funcs`` is called with a padded
    tensor among its arguments (``always=True``: on every call). ``ctx`` is a :class:`~cnnkit.masking.MaskedContext`:
    ``ctx.bind(func, args, kwargs)`` gives the arguments by name, ``ctx.sizes(t)`` each sample's extent,
    ``ctx.zeros_outside(t)`` / ``ctx.fill_outside(t, v)`` / ``ctx.mask(t)`` prepare inputs, and
    ``ctx.track(out, sizes, zero_outside=...)`` records the result. A rule replaces any earlier one for the
    same function. Raise :class:`~cnnkit.errors.UnsupportedError` for calls the rule cannot make exact.

    Examples:
        >>> from torch import nn
        >>> from cnnkit.masking import masked, pad_batch
        >>> @torch.overrides.wrap_torch_function(lambda x: (x,))
        ... def smooth(x):  # a custom window op: 3-tap mean along the last axis, zero padded
        ...     return (F.pad(x, (1, 1))[..., :-2] + x + F.pad(x, (1, 1))[..., 2:]) / 3
        >>> @register_masked_op(smooth)
        ... def _smooth(ctx, func, args, kwargs):
        ...     x = ctx.bind(func, args, kwargs)["input"]
        ...     return ctx.track(func(ctx.zeros_outside(x)), ctx.sizes(x))
        >>> class Net(nn.Module):
        ...     def forward(self, x):
        ...         return smooth(x)
        >>> batch = pad_batch([torch.ones(1, 4), torch.ones(1, 2)])
        >>> masked(Net())(batch).unpad()[1]
        tensor([[0.6667, 0.6667]])
    """
    if not funcs or not all(callable(f) for f in funcs):
        raise ValueError(f"register_masked_op needs one or more functions. Received {funcs!r}.")

    def decorator(rule: Callable) -> Callable:
        if not callable(rule):
            raise ValueError(f"register_masked_op: the rule must be callable. Received {rule!r}.")
        _install(funcs, rule)
        if always:
            _install(funcs, rule, ALWAYS)
        return rule

    return decorator


