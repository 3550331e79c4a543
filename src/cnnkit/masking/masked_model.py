"""``masked(model)``: run an ordinary CNN on a padded batch and get, for every sample, what it alone gives.

Mechanism
---------
:class:`MaskedModel` runs the unmodified model under a :class:`~torch.overrides.TorchFunctionMode`. The
mode knows, for every tensor derived from the padded input, each sample's valid extent (``sizes``,
computed with :mod:`cnnkit.shapes`). Every torch function called during the forward pass goes through
the mode, which applies one of a few rules:

* **point-wise ops** (activations, dropout, eval-mode batch norm, ``+``/``×`` of two padded tensors or with
  per-channel constants, channel ``cat``, channel softmax): run as they are; the extent is unchanged.
  Values outside the extent may become non-zero ("dirty"); that is harmless until a window op reads them.
* **window ops** (``conv*d``, ``conv_transpose*d``, ``avg_pool*d``, ``F.pad`` with zeros): their input is
  first zeroed outside the extent, which is exactly the zero padding each sample would see alone; the
  output extent follows the shape arithmetic of :mod:`cnnkit.shapes`.
* **max pooling** fills ``−inf`` outside the extent (PyTorch pads max pooling with ``−inf``).
* **bilinear/bicubic/linear upsampling** (``align_corners=False``, ``scale_factor``) first copies each
  sample's edge outward, which is what PyTorch's index clamping at the sample's own border does.
* **statistics** (training-mode batch norm — optionally reduced over a process group —, group and
  instance norm, global average/max pooling, ``mean``/``sum``/``amax`` over the spatial dimensions) use
  valid positions only.
* **anything else** that touches a padded tensor (``flatten``, ``view``, ``Linear`` over a spatial axis,
  ``align_corners=True``, adaptive pooling to a size other than 1, …) raises
  :class:`~cnnkit.errors.UnsupportedError` naming the op: it would mix padding into valid positions.

Ops on tensors that do not derive from the padded input (weights, constants) are not touched. Once every
sample's extent fills the canvas (e.g. after global pooling to 1×1) the tensor is an ordinary tensor.
The output is zeroed outside the extents, so gradients reach only valid positions: weight gradients
equal the sum of per-sample gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from cnnkit._tensors import tensors_in
from cnnkit.errors import ShapeError, UnsupportedError
from cnnkit.masking.batch import PaddedBatch, extent_mask
from cnnkit.masking.norm import masked_batch_norm, masked_group_norm
from cnnkit.shapes import conv_output_size, conv_transpose_output_size, padding_amounts, pool_output_size

__all__ = ["MaskedModel", "masked"]

Sizes = tuple[tuple[int, ...], ...]


@dataclass
class _Entry:
    sizes: Sizes  # per-sample spatial extent
    clean: bool  # zero outside the extent?


def _name(func) -> str:
    name = getattr(func, "__name__", repr(func))
    if name == "__get__" and hasattr(func, "__self__"):
        return f"Tensor.{getattr(func.__self__, '__name__', '?')}"
    qual = getattr(func, "__qualname__", name)
    return f"Tensor.{name}" if qual.startswith(("TensorBase.", "Tensor.")) else name


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _funcs(*names: str, namespaces=(torch, Tensor, F)) -> set:
    found = set()
    for name in names:
        for ns in namespaces:
            f = getattr(ns, name, None)
            if f is not None:
                found.add(f)
    return found


# f(0) == 0: zeros outside the extent stay zeros.
_ZERO_PRESERVING = _funcs(
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "gelu", "silu",
    "mish", "tanh", "tanh_", "hardtanh", "hardtanh_", "hardswish", "softsign", "tanhshrink", "neg",
    "__neg__", "abs", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "threshold", "prelu", "square", "sign",
)
_POINTWISE = _ZERO_PRESERVING | _funcs(
    "sigmoid", "sigmoid_", "hardsigmoid", "softplus", "exp", "log_sigmoid", "clamp", "clip", "clamp_",
    "rrelu", "logsigmoid", "cos", "sin", "sqrt", "rsqrt", "reciprocal", "log", "pow", "__pow__",
)
# Not finite (or not differentiable) at 0 or for negatives: the padded operand's padding is set to 1 first.
# Zeros or garbage there would give inf/NaN outside the extent, and in backward 0 · inf = NaN gradients that a
# later convolution's weight gradient sums over every position, valid or not.
_SINGULAR = _funcs("sqrt", "rsqrt", "reciprocal", "log", "pow", "__pow__")
_SAME = _funcs(
    "contiguous", "clone", "detach", "detach_", "to", "float", "double", "half", "bfloat16", "type_as", "cpu",
    "cuda", "requires_grad_", "type", "__deepcopy__",
)
_ADD = _funcs("add", "__add__", "__radd__", "add_", "__iadd__", "sub", "__sub__", "__rsub__", "sub_", "__isub__")
_MUL = _funcs("mul", "__mul__", "__rmul__", "mul_", "__imul__")
_DIV = _funcs("div", "__truediv__", "div_", "__itruediv__", "__rtruediv__")
_CONV = _funcs("conv1d", "conv2d", "conv3d", namespaces=(torch, F))
_CONV_T = _funcs("conv_transpose1d", "conv_transpose2d", "conv_transpose3d", namespaces=(torch, F))
_MAX_POOL = _funcs("max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
                   "max_pool3d_with_indices", namespaces=(torch, F))
_AVG_POOL = _funcs("avg_pool1d", "avg_pool2d", "avg_pool3d", namespaces=(torch, F, torch._C._nn))
_ADAPTIVE_AVG = _funcs("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", namespaces=(torch, F))
_ADAPTIVE_MAX = _funcs("adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
                       "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
                       "adaptive_max_pool3d_with_indices", namespaces=(torch, F))
_SOFTMAX = _funcs("softmax", "log_softmax", "softmin", namespaces=(torch, Tensor, F))
_REDUCE = _funcs("mean", "sum", "amax", "amin", "nanmean", namespaces=(torch, Tensor))
_CAT = _funcs("cat", "concat", "concatenate", namespaces=(torch,))


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


class _MaskedMode(TorchFunctionMode):
    def __init__(self, process_group=None):
        super().__init__()
        self.entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.masks: dict[tuple, Tensor] = {}
        self.cleaned: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.process_group = process_group

    # -- bookkeeping --------------------------------------------------------------------------------
    def register(self, t: Tensor, sizes: Sizes, clean: bool) -> Tensor:
        canvas = tuple(t.shape[2:])
        if all(size == canvas for size in sizes):
            self.entries.pop(t, None)  # every sample fills the canvas: an ordinary tensor now
            return t
        self.entries[t] = _Entry(sizes, clean)
        return t

    def mask(self, sizes: Sizes, canvas: Sequence[int], device) -> Tensor:
        """The (N, 1, *canvas) bool extent mask (made once per forward pass and extent)."""
        key = (sizes, tuple(canvas), str(device))
        if key not in self.masks:
            self.masks[key] = extent_mask(torch.tensor(sizes, device=device), canvas)
        return self.masks[key]

    def mask_of(self, t: Tensor) -> Tensor:
        return self.mask(self.entries[t].sizes, t.shape[2:], t.device)

    def clean(self, t: Tensor) -> Tensor:
        entry = self.entries[t]
        if entry.clean:
            return t
        cached = self.cleaned.get(t)
        if cached is not None and cached[0] == t._version:
            return cached[1]
        # One pass forward and backward; unlike a multiplication it also clears -inf left by max pooling.
        out = torch.where(self.mask(entry.sizes, t.shape[2:], t.device), t, 0)
        self.register(out, entry.sizes, clean=True)
        self.cleaned[t] = (t._version, out)
        return out

    def ones_outside(self, t: Tensor) -> Tensor:
        """``t`` with 1 outside each sample's extent: a safe operand for division, log, sqrt, pow."""
        entry = self.entries[t]
        out = torch.where(self.mask(entry.sizes, t.shape[2:], t.device), t, 1)
        return self.register(out, entry.sizes, clean=False)

    def clean_value(self, value):
        if isinstance(value, Tensor) and value in self.entries:
            return self.clean(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self.clean_value(v) for v in value)
        return value

    # -- dispatch -----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entries = self.entries
        padded = [t for t in tensors_in(args) + tensors_in(kwargs) if t in entries] if entries else []
        if not padded:
            return func(*args, **kwargs)
        handler = _DISPATCH.get(func)
        if handler is not None:
            return handler(self, func, args, kwargs, padded)
        if func in _SAME:
            out = func(*args, **kwargs)
            if isinstance(out, Tensor) and out is not padded[0]:
                entry = self.entries[padded[0]]
                self.register(out, entry.sizes, entry.clean)
            return out
        out = func(*args, **kwargs) if _name(func) in _METADATA else None
        if out is not None and not tensors_in(out):
            return out
        if _name(func) in ("Tensor.data", "Tensor.__getitem__"):
            return self._getitem(func, args, kwargs, padded)
        raise UnsupportedError(
            f"masked(): {_name(func)} is not supported on a padded batch: it could mix padding into valid "
            "positions (see cnnkit.masking.masked_model for the supported ops). Received a tensor of shape "
            f"{tuple(padded[0].shape)} with per-sample extents {self.entries[padded[0]].sizes}."
        )

    def _getitem(self, func, args, kwargs, padded):
        source = padded[0]
        entry = self.entries[source]
        if _name(func) == "Tensor.data":
            out = func(*args, **kwargs)
            return self.register(out, entry.sizes, entry.clean)
        key = args[1] if len(args) > 1 else None
        key = key if isinstance(key, tuple) else (key,)
        spatial_untouched = len(key) <= 2 and all(
            k is Ellipsis or (isinstance(k, slice) and k == slice(None)) for k in key[:1]
        ) and (len(key) < 2 or isinstance(key[1], (slice, int, list, Tensor)))
        if not spatial_untouched or Ellipsis in key[1:]:
            raise UnsupportedError(
                f"masked(): indexing a padded tensor with {key!r} is not supported; only channel selection "
                "x[:, channels] is."
            )
        out = func(*args, **kwargs)
        if out.dim() != source.dim():
            raise UnsupportedError(f"masked(): indexing with {key!r} removed the channel dimension.")
        return self.register(out, entry.sizes, entry.clean)


_METADATA = {"Tensor.size", "Tensor.dim", "Tensor.shape", "Tensor.dtype", "Tensor.device", "Tensor.ndim",
             "Tensor.requires_grad", "Tensor.is_cuda", "Tensor.numel", "Tensor.__len__", "Tensor.layout",
             "Tensor.is_floating_point", "Tensor.grad_fn", "Tensor.grad", "Tensor.element_size",
             "Tensor.is_contiguous", "Tensor.stride", "Tensor.__format__", "Tensor.__repr__", "Tensor.data_ptr",
             "Tensor.names", "Tensor.is_sparse", "Tensor.is_quantized", "Tensor.is_meta", "Tensor.is_nested",
             "Tensor._version", "Tensor.__hash__", "Tensor.storage_offset", "Tensor.is_leaf", "Tensor.get_device",
             "size", "dim", "numel", "is_floating_point", "is_complex"}


# -- handlers -----------------------------------------------------------------------------------------


def _pointwise(mode: _MaskedMode, func, args, kwargs, padded):
    if func in _SINGULAR and isinstance(args[0], Tensor) and args[0] in mode.entries:  # the base for pow
        args = (mode.ones_outside(args[0]), *args[1:])
    out = func(*args, **kwargs)
    entry = mode.entries[padded[0]]
    clean = entry.clean and func in _ZERO_PRESERVING
    return mode.register(out, entry.sizes, clean)


def _check_operands(mode: _MaskedMode, func, args, kwargs, padded) -> _Entry:
    sizes = {mode.entries[t].sizes for t in padded}
    if len(sizes) != 1:
        raise ShapeError(f"masked(): {_name(func)} combines padded tensors with different extents: {sorted(sizes)}.")
    canvas = tuple(padded[0].shape[2:])
    for t in tensors_in(args) + tensors_in(kwargs):
        if t in mode.entries:
            if tuple(t.shape[2:]) != canvas:
                raise ShapeError(f"masked(): {_name(func)} combines padded tensors of canvas {canvas} and "
                                 f"{tuple(t.shape[2:])}.")
        elif any(s != 1 for s in t.shape[max(t.dim() - len(canvas), 0):]):
            raise UnsupportedError(
                f"masked(): {_name(func)} combines a padded tensor with an ordinary tensor of shape "
                f"{tuple(t.shape)} that varies over the spatial dimensions; its values at the padded positions "
                "would not be what each sample sees alone."
            )
    return mode.entries[padded[0]]


def _binary(mode: _MaskedMode, func, args, kwargs, padded):
    entry = _check_operands(mode, func, args, kwargs, padded)
    operands = list(args[:2])
    divisor = 0 if func is Tensor.__rtruediv__ else 1  # x.__rtruediv__(y) is y / x
    if func in _DIV:  # a padded divisor gets 1 outside the extents (see _SINGULAR)
        if divisor < len(args) and isinstance(args[divisor], Tensor) and args[divisor] in mode.entries:
            args = tuple(mode.ones_outside(a) if i == divisor else a for i, a in enumerate(args))
        elif isinstance(kwargs.get("other"), Tensor) and kwargs["other"] in mode.entries:
            kwargs = {**kwargs, "other": mode.ones_outside(kwargs["other"])}
    out = func(*args, **kwargs)
    all_padded = all(isinstance(a, Tensor) and a in mode.entries for a in operands)
    all_clean = all(mode.entries[t].clean for t in padded)
    if func in _MUL:
        clean = any(mode.entries[t].clean for t in padded)
    elif func in _DIV:
        clean = divisor == 1 and operands[0] in mode.entries and mode.entries[operands[0]].clean and not (
            len(operands) > 1 and isinstance(operands[1], Tensor) and operands[1] in mode.entries)
    else:
        clean = all_padded and all_clean
    return mode.register(out, entry.sizes, clean)


def _conv(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    if x not in mode.entries or len(padded) != 1:
        raise UnsupportedError(f"masked(): {_name(func)} with a padded weight or bias is not supported.")
    weight = _arg(args, kwargs, 1, "weight")
    n = weight.dim() - 2
    stride = _arg(args, kwargs, 3, "stride", 1)
    padding = _arg(args, kwargs, 4, "padding", 0)
    dilation = _arg(args, kwargs, 5, "dilation", 1)
    k = tuple(weight.shape[2:])
    stride, dilation, padding = _tuple(stride, n), _tuple(dilation, n), _pad_arg(padding, n)
    in_sizes = mode.entries[x].sizes
    sizes = _window_sizes(conv_output_size, in_sizes, k, stride, padding, dilation)
    before = [tuple(lo for lo, _ in padding_amounts(size, k, stride, padding, dilation)) for size in in_sizes] if (
        isinstance(padding, str)) else [padding] * len(in_sizes)
    source = mode.clean(x) if _reads_outside(in_sizes, sizes, k, stride, dilation, before) else x
    out = func(source, *args[1:], **kwargs)
    return mode.register(out, sizes, clean=False)


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


def _tuple(value, n):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _pad_arg(padding, n):
    return padding if isinstance(padding, str) else _tuple(padding, n)


def _conv_transpose(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    if x not in mode.entries or len(padded) != 1:
        raise UnsupportedError(f"masked(): {_name(func)} with a padded weight or bias is not supported.")
    weight = _arg(args, kwargs, 1, "weight")
    n = weight.dim() - 2
    stride = _tuple(_arg(args, kwargs, 3, "stride", 1), n)
    padding = _tuple(_arg(args, kwargs, 4, "padding", 0), n)
    output_padding = _tuple(_arg(args, kwargs, 5, "output_padding", 0), n)
    dilation = _tuple(_arg(args, kwargs, 7, "dilation", 1), n)
    out = func(mode.clean(x), *args[1:], **kwargs)
    sizes = _window_sizes(conv_transpose_output_size, mode.entries[x].sizes, tuple(weight.shape[2:]), stride,
                          padding, output_padding, dilation)
    return mode.register(out, sizes, clean=False)


def _pool_geometry(args, kwargs, n: int):
    """``(kernel_size, stride, padding)`` tuples of a ``*_pool*d`` call; ``stride`` defaults to the kernel."""
    kernel = _tuple(_arg(args, kwargs, 1, "kernel_size"), n)
    stride = _arg(args, kwargs, 2, "stride", None)
    stride = kernel if stride is None or stride == [] or stride == () else _tuple(stride, n)
    return kernel, stride, _tuple(_arg(args, kwargs, 3, "padding", 0), n)


def _max_pool(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    kernel, stride, padding = _pool_geometry(args, kwargs, x.dim() - 2)
    dilation = _tuple(_arg(args, kwargs, 4, "dilation", 1), x.dim() - 2)
    ceil_mode = _arg(args, kwargs, 5, "ceil_mode", False)
    in_sizes = mode.entries[x].sizes
    sizes = _window_sizes(pool_output_size, in_sizes, kernel, stride, padding, dilation, ceil_mode)
    reads_outside = _reads_outside(in_sizes, sizes, kernel, stride, dilation, [padding] * len(in_sizes))
    filled = torch.where(mode.mask_of(x), x, -math.inf) if reads_outside else x
    out = func(filled, *args[1:], **kwargs)
    if isinstance(out, tuple):  # (values, indices)
        return (mode.register(out[0], sizes, clean=False), *out[1:])
    return mode.register(out, sizes, clean=False)


def _avg_pool(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    n = x.dim() - 2
    kernel, stride, padding = _pool_geometry(args, kwargs, n)
    ceil_mode = _arg(args, kwargs, 4, "ceil_mode", False)
    count_include_pad = _arg(args, kwargs, 5, "count_include_pad", True)
    divisor_override = _arg(args, kwargs, 6, "divisor_override", None)
    in_sizes = mode.entries[x].sizes
    sizes = _window_sizes(pool_output_size, in_sizes, kernel, stride, padding, 1, ceil_mode)
    ones = (1,) * n
    if not _reads_outside(in_sizes, sizes, kernel, stride, ones, [padding] * len(in_sizes)):
        return mode.register(func(*args, **kwargs), sizes, clean=False)  # every window inside its sample
    clean = mode.clean(x)
    if count_include_pad or divisor_override is not None:
        if ceil_mode and divisor_override is None:
            raise UnsupportedError(
                f"masked(): {_name(func)} with ceil_mode=True and count_include_pad=True is not supported: the "
                "divisor of the last window depends on each sample's size."
            )
        out = func(clean, *args[1:], **kwargs)
        return mode.register(out, sizes, clean=False)
    # count_include_pad=False: average over the positions each sample really has.
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    if n == 1:
        total = pool(clean, kernel, stride, padding, ceil_mode, True) * math.prod(kernel)
        count = pool(mode.mask_of(x).to(x.dtype), kernel, stride, padding, ceil_mode, True) * math.prod(kernel)
    else:
        total = pool(clean, kernel, stride, padding, ceil_mode, True, 1)
        count = pool(mode.mask_of(x).to(x.dtype), kernel, stride, padding, ceil_mode, True, 1)
    out = total / count.clamp_min(1)
    return mode.register(out, sizes, clean=False)


def _adaptive(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    n = x.dim() - 2
    target = _tuple(_arg(args, kwargs, 1, "output_size"), n)
    if any(t != 1 for t in target):
        raise UnsupportedError(
            f"masked(): {_name(func)} to output_size={target} is not supported on a padded batch (its bins "
            "depend on each sample's size); output_size=1 (global pooling) is."
        )
    dims = tuple(range(2, x.dim()))
    mask = mode.mask_of(x)
    if func in _ADAPTIVE_AVG:
        out = mode.clean(x).sum(dims, keepdim=True) / mask.sum(dims, keepdim=True).to(x.dtype)
        return out
    values = torch.where(mask, x, -math.inf)
    flat = values.flatten(2)
    best, index = flat.max(dim=2)
    out = best.view(*best.shape, *([1] * n))
    if "indices" in getattr(func, "__name__", "") or _arg(args, kwargs, 2, "return_indices", False):
        return out, index.view(*index.shape, *([1] * n))
    return out


def _reduce(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    if x not in mode.entries:
        raise UnsupportedError(f"masked(): {_name(func)} with a padded tensor as a secondary argument.")
    nd = x.dim()
    dim = _arg(args, kwargs, 1, "dim", None)
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    dims = tuple(range(nd)) if dim is None else tuple(d % nd for d in ((dim,) if isinstance(dim, int) else dim))
    spatial = set(range(2, nd))
    name = getattr(func, "__name__", "")
    entry = mode.entries[x]
    if not spatial & set(dims):  # over channels (or batch) only: the extent stays
        out = func(*args, **kwargs)
        return mode.register(out, entry.sizes, entry.clean and name in ("sum", "mean", "amax", "amin"))
    if not spatial <= set(dims) or 0 in dims:
        raise UnsupportedError(
            f"masked(): {_name(func)} over dims {dims} reduces some spatial dimensions of a padded tensor but not "
            "all (or the batch dimension); reduce over all spatial dimensions."
        )
    mask = mode.mask_of(x)
    if name in ("amax", "amin"):
        fill = -math.inf if name == "amax" else math.inf
        return func(torch.where(mask, x, fill), *args[1:], **kwargs)
    total = mode.clean(x).sum(dims, keepdim=keepdim)
    if name == "sum":
        return total
    count = mask.expand_as(x).sum(dims, keepdim=keepdim).to(x.dtype)
    return total / count


def _batch_norm(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    running_mean = _arg(args, kwargs, 1, "running_mean")
    running_var = _arg(args, kwargs, 2, "running_var")
    weight = _arg(args, kwargs, 3, "weight")
    bias = _arg(args, kwargs, 4, "bias")
    training = _arg(args, kwargs, 5, "training", False)
    momentum = _arg(args, kwargs, 6, "momentum", 0.1)
    eps = _arg(args, kwargs, 7, "eps", 1e-5)
    entry = mode.entries[x]
    if not training:
        return mode.register(func(*args, **kwargs), entry.sizes, clean=False)
    out = masked_batch_norm(x, mode.mask_of(x), running_mean, running_var, weight, bias, momentum, eps,
                            mode.process_group)
    return mode.register(out, entry.sizes, clean=False)


def _group_norm(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    entry = mode.entries[x]
    num_groups = _arg(args, kwargs, 1, "num_groups")
    out = masked_group_norm(x, mode.mask_of(x), num_groups, _arg(args, kwargs, 2, "weight"),
                            _arg(args, kwargs, 3, "bias"), _arg(args, kwargs, 4, "eps", 1e-5))
    return mode.register(out, entry.sizes, clean=False)


def _instance_norm(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    entry = mode.entries[x]
    running_mean = _arg(args, kwargs, 1, "running_mean")
    use_input_stats = _arg(args, kwargs, 5, "use_input_stats", True)
    if not use_input_stats:
        return mode.register(func(*args, **kwargs), entry.sizes, clean=False)
    if running_mean is not None:
        raise UnsupportedError("masked(): instance_norm with track_running_stats=True in training is not supported.")
    out = masked_group_norm(x, mode.mask_of(x), x.shape[1], _arg(args, kwargs, 3, "weight"),
                            _arg(args, kwargs, 4, "bias"), _arg(args, kwargs, 7, "eps", 1e-5))
    return mode.register(out, entry.sizes, clean=False)


def _softmax(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None or dim % x.dim() != 1:
        raise UnsupportedError(f"masked(): {_name(func)} over dim={dim} of a padded tensor; only dim=1 (channels).")
    return _pointwise(mode, func, args, kwargs, padded)


def _cat(mode: _MaskedMode, func, args, kwargs, padded):
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    dim = _arg(args, kwargs, 1, "dim", 0)
    nd = tensors[0].dim()
    dim %= nd
    if any(t not in mode.entries for t in tensors):
        raise UnsupportedError(f"masked(): {_name(func)} of padded and ordinary tensors is not supported.")
    if dim == 1:
        entry = _check_operands(mode, func, (tensors,), {}, padded)
        out = func(*args, **kwargs)
        return mode.register(out, entry.sizes, all(mode.entries[t].clean for t in tensors))
    if dim == 0:
        out = func(*args, **kwargs)
        sizes = tuple(s for t in tensors for s in mode.entries[t].sizes)
        return mode.register(out, sizes, all(mode.entries[t].clean for t in tensors))
    raise UnsupportedError(f"masked(): {_name(func)} along spatial dim={dim} is not supported on padded tensors.")


def _pad(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    pads = tuple(_arg(args, kwargs, 1, "pad"))
    pad_mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    if pad_mode != "constant" or (value not in (None, 0, 0.0)) or any(p < 0 for p in pads):
        raise UnsupportedError(
            f"masked(): F.pad with mode={pad_mode!r}, value={value!r}, pad={pads} is not supported; zero padding "
            "(mode='constant', value=0, non-negative amounts) is."
        )
    n = x.dim() - 2
    if len(pads) // 2 > n:
        raise UnsupportedError("masked(): F.pad of the channel or batch dimension is not supported.")
    out = func(mode.clean(x), *args[1:], **kwargs)
    extra = [0] * n
    for i in range(len(pads) // 2):
        extra[n - 1 - i] = pads[2 * i] + pads[2 * i + 1]
    sizes = tuple(tuple(s + e for s, e in zip(size, extra)) for size in mode.entries[x].sizes)
    return mode.register(out, sizes, clean=True)


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


def _interpolate(mode: _MaskedMode, func, args, kwargs, padded):
    x = args[0]
    n = x.dim() - 2
    size = _arg(args, kwargs, 1, "size")
    scale = _arg(args, kwargs, 2, "scale_factor")
    interp_mode = _arg(args, kwargs, 3, "mode", "nearest")
    align = _arg(args, kwargs, 4, "align_corners")
    recompute = _arg(args, kwargs, 5, "recompute_scale_factor")
    antialias = _arg(args, kwargs, 6, "antialias", False)
    if size is not None or scale is None or recompute or antialias or align:
        raise UnsupportedError(
            f"masked(): interpolate(size={size}, scale_factor={scale}, align_corners={align}, "
            f"recompute_scale_factor={recompute}, antialias={antialias}) is not supported on a padded batch; "
            "use scale_factor with align_corners=False (the sampling grid then does not depend on each "
            "sample's size)."
        )
    scales = _tuple(scale, n)
    entry = mode.entries[x]
    if interp_mode in ("nearest", "nearest-exact"):
        source = x
    elif interp_mode in ("linear", "bilinear", "bicubic", "trilinear"):
        source = _replicate_edges(x, entry.sizes)
    else:
        raise UnsupportedError(f"masked(): interpolate mode={interp_mode!r} is not supported on a padded batch.")
    out = func(source, *args[1:], **kwargs)
    sizes = tuple(tuple(math.floor(s * f) for s, f in zip(size_, scales)) for size_ in entry.sizes)
    if any(s < 1 for size_ in sizes for s in size_):
        raise ShapeError(f"masked(): interpolate(scale_factor={scale}) leaves a sample empty: extents {sizes}.")
    return mode.register(out, sizes, clean=False)


def _like(mode: _MaskedMode, func, args, kwargs, padded):
    """``zeros_like`` & co.: a tensor of the same extents (zeros are zero outside too, so it is clean)."""
    out = func(*args, **kwargs)
    zeros = getattr(func, "__name__", "") == "zeros_like" or (
        getattr(func, "__name__", "") == "full_like" and _arg(args, kwargs, 1, "fill_value") == 0)
    return mode.register(out, mode.entries[padded[0]].sizes, clean=zeros)


def _new(mode: _MaskedMode, func, args, kwargs, padded):
    """``x.new_zeros(shape)`` & co. only borrow dtype and device: the result is an ordinary tensor."""
    return func(*args, **kwargs)


_HANDLERS: list[tuple[set, Callable]] = [
    (_funcs("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
            namespaces=(torch,)), _like),
    (_funcs("new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", namespaces=(Tensor,)), _new),
    (_POINTWISE, _pointwise),
    (_ADD | _MUL | _DIV, _binary),
    (_CONV, _conv),
    (_CONV_T, _conv_transpose),
    (_MAX_POOL, _max_pool),
    (_AVG_POOL, _avg_pool),
    (_ADAPTIVE_AVG | _ADAPTIVE_MAX, _adaptive),
    (_REDUCE, _reduce),
    (_funcs("batch_norm", namespaces=(torch, F)), _batch_norm),
    (_funcs("group_norm", namespaces=(torch, F)), _group_norm),
    (_funcs("instance_norm", namespaces=(torch, F)), _instance_norm),
    (_SOFTMAX, _softmax),
    (_CAT, _cat),
    ({F.pad}, _pad),
    ({F.interpolate}, _interpolate),
]

_DISPATCH: dict[Callable, Callable] = {func: handler for funcs, handler in _HANDLERS for func in funcs}
if len(_DISPATCH) != sum(len(funcs) for funcs, _ in _HANDLERS):  # pragma: no cover - a programming error
    raise RuntimeError("masked(): a function is listed under two handlers")


class MaskedModel(nn.Module):
    """Runs ``model`` on a :class:`~cnnkit.masking.PaddedBatch` exactly as on each sample alone.

    Created by :func:`masked`; the wrapped model is ``self.model`` (same parameters, no copy).
    """

    def __init__(self, model: nn.Module, sync_batchnorm: bool = False, process_group=None):
        super().__init__()
        self.model = model
        self.sync_batchnorm = sync_batchnorm
        self.process_group = process_group

    def _group(self):
        if not self.sync_batchnorm:
            return None
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        return self.process_group or dist.group.WORLD

    def forward(self, batch: PaddedBatch | tuple[Tensor, Tensor], *args, **kwargs):
        """Run the model; a padded output comes back as a :class:`PaddedBatch` with per-sample ``sizes``."""
        if isinstance(batch, tuple) and len(batch) == 2:
            batch = PaddedBatch(*batch)
        if not isinstance(batch, PaddedBatch):
            raise TypeError(
                "masked(model) takes a PaddedBatch (see cnnkit.pad_batch) or a (data, sizes) tuple. "
                f"Received {type(batch).__name__}."
            )
        canvas = torch.tensor(batch.canvas, device=batch.sizes.device)
        if (batch.sizes < 1).any() or (batch.sizes > canvas).any():
            raise ShapeError(
                f"every sample's size must be between 1 and the canvas {batch.canvas}. "
                f"Received sizes={batch.sizes.tolist()}."
            )
        mode = _MaskedMode(self._group())
        sizes = tuple(tuple(s) for s in batch.sizes.tolist())
        x = torch.where(mode.mask(sizes, batch.canvas, batch.data.device), batch.data, 0)
        mode.register(x, sizes, clean=True)
        with mode:
            out = self.model(x, *args, **kwargs)
        return _finish(mode, out)

    def extra_repr(self) -> str:
        return f"sync_batchnorm={self.sync_batchnorm}" if self.sync_batchnorm else ""


def _finish(mode: _MaskedMode, out):
    if isinstance(out, Tensor):
        if out in mode.entries:
            entry = mode.entries[out]
            data = mode.clean(out)
            return PaddedBatch(data, torch.tensor(entry.sizes, dtype=torch.long, device=data.device))
        return out
    if isinstance(out, (tuple, list)):
        return type(out)(_finish(mode, o) for o in out)
    if isinstance(out, dict):
        return {k: _finish(mode, v) for k, v in out.items()}
    return out


def masked(model: nn.Module, *, sync_batchnorm: bool = False, process_group=None) -> MaskedModel:
    """Wrap ``model`` so that it runs on padded batches as if on each sample alone.

    Args:
        model: An ordinary, unmodified ``nn.Module`` (see the module documentation for the ops covered;
            any other op on a padded tensor raises :class:`~cnnkit.errors.UnsupportedError`).
        sync_batchnorm: In training mode, reduce batch-norm statistics over all processes of
            ``torch.distributed`` (valid positions only) — a SyncBatchNorm for padded batches. Use plain
            ``nn.BatchNorm*d`` layers in the model.
        process_group: The group to reduce over (default: the world).

    Returns:
        A :class:`MaskedModel` sharing ``model``'s parameters. Called on a :class:`PaddedBatch` it returns
        a :class:`PaddedBatch` for spatial outputs (``sizes`` = each sample's output extent) and an
        ordinary tensor for outputs without padding (e.g. after global pooling).

    Examples:
        >>> from cnnkit.masking import pad_batch
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU())
        >>> images = [torch.randn(1, 5, 7), torch.randn(1, 8, 4)]
        >>> out = masked(net)(pad_batch(images))
        >>> out.sizes.tolist()
        [[3, 4], [4, 2]]
        >>> torch.allclose(out.unpad()[0], net(images[0][None])[0], atol=1e-6)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module. Received {type(model).__name__}.")
    return MaskedModel(model, sync_batchnorm=sync_batchnorm, process_group=process_group)
