"""What a masked forward pass knows about each tensor, and how it hands each torch call to a rule.

:class:`MaskedContext` is the :class:`~torch.overrides.TorchFunctionMode` behind :func:`cnnkit.masked`. For every
tensor derived from the padded input it keeps a record (:class:`Entry`): each sample's extent, where the spatial
and batch dimensions are, and whether the tensor is zero outside the extents ("clean", as of its version counter).
Every torch function called under the mode is looked up in the rule tables (filled by
:mod:`cnnkit.masking.rules`) by function object and run by its rule.

Speed matters here (one lookup per torch call of the model): records sit in a plain dict keyed by ``id`` with a
weak reference that proves the tensor is still the one recorded, masks are built once per forward pass, and on
the CPU a mask is applied as a multiplication (``torch.where``'s CPU kernel is several times slower), falling
back to ``torch.where`` whenever the product could differ from it (a non-finite value anywhere in the tensor).
"""

from __future__ import annotations

import inspect
import math
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from cnnkit import _ops
from cnnkit.errors import CnnkitError, UnsupportedError

__all__ = ["Entry", "MaskedContext", "bind", "masked_dispatch"]

Sizes = tuple[tuple[int, ...], ...]


@dataclass(slots=True)
class Entry:
    """The record of one padded tensor."""

    sizes: Sizes  # per-sample extent along each spatial axis
    clean: bool  # zero outside the extent (as of `version`)?
    version: int  # the tensor's version counter when `clean` was recorded
    axes: tuple[int, ...]  # positions of the spatial dimensions (2, 3, … for (N, C, *spatial))
    aliased: bool = False  # shares storage with a tensor whose version counter it does not share (`.data`)
    batch: int = 0  # position of the batch dimension (1 after torch.stack(..., dim=0))
    ref: weakref.ref | None = None  # the tensor recorded (its id may be reused once it is gone)
    finite: bool = False  # every value (padding included) known finite: derived by finite-preserving ops from a
    # tensor whose finiteness was checked
    nonneg: bool = False  # every value (padding included) known >= 0 (a ReLU's result), as of `version`


# -- the rule tables (filled by cnnkit.masking.rules) -------------------------------------------------------

RULES: dict[Callable, Callable] = {}  # function -> rule, for calls with a padded argument
ALWAYS: dict[Callable, Callable] = {}  # rules that also see calls without a padded argument
BATCH_ANYWHERE: set[Callable] = set()  # rules that handle a batch dimension not at 0


# -- binding by signature --------------------------------------------------------------------------------

_OVERRIDES: dict | None = None
_PARAMS: dict[Callable, tuple[tuple[str, ...], dict, dict]] = {}  # function -> (names, defaults, name -> index)


def _signature(func) -> tuple[tuple[str, ...], dict, dict]:
    """Parameter names, defaults and positions of ``func`` as torch publishes them (``torch.overrides``); the
    first parameter is called ``input``. Computed once per function."""
    found = _PARAMS.get(func)
    if found is not None:
        return found
    global _OVERRIDES
    if _OVERRIDES is None:
        _OVERRIDES = torch.overrides.get_testing_overrides()
    target = _OVERRIDES.get(func, func)
    names: list[str] = []
    defaults: dict = {}
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        parameters = ()
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            break
        names.append(p.name)
        if p.default is not p.empty:
            defaults[p.name] = p.default
    if names:
        names[0] = "input"
    found = (tuple(names), defaults, {name: i for i, name in enumerate(names)})
    _PARAMS[func] = found
    return found


def bind(func, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by parameter name (defaults filled in); the first parameter is always ``input``.

    Extra positional arguments (``x.view(2, -1)``, ``x.permute(0, 2, 3, 1)``) are under ``"*"``.
    """
    names, defaults, _ = _signature(func)
    bound = dict(defaults) if defaults else {}
    bound.update(zip(names, args))
    if len(args) > len(names):
        bound["*"] = args[len(names):]
    if kwargs:
        bound.update(kwargs)
        if "self" in kwargs:
            bound["input"] = kwargs["self"]
    return bound


def argument(func, args: tuple, kwargs: dict, name: str):
    """One argument of the call by parameter name (its default if not given), without building the whole binding."""
    _, defaults, index = _signature(func)
    i = index.get(name)
    if i is not None and i < len(args):
        return args[i]
    if kwargs:
        if name in kwargs:
            return kwargs[name]
        if name == "input" and "self" in kwargs:
            return kwargs["self"]
    return defaults.get(name)


def replace_input(args: tuple, kwargs: dict, value) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the first parameter (``input``) replaced by ``value``."""
    if args:
        return (value, *args[1:]), kwargs
    key = "self" if "self" in kwargs else "input"
    return args, {**kwargs, key: value}


def op_name(func) -> str:
    """``F.conv2d``, ``torch.cat``, ``Tensor.view``: how errors name a function."""
    name = getattr(func, "__name__", repr(func))
    if name == "__get__" and hasattr(func, "__self__"):
        return f"Tensor.{getattr(func.__self__, '__name__', '?')}"
    qual = getattr(func, "__qualname__", name)
    if qual.startswith(("TensorBase.", "Tensor.")):
        return f"Tensor.{name}"
    module = getattr(func, "__module__", "") or ""
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    return f"{module}.{name}" if module else name


_AXES = {n: tuple(range(2, n)) for n in range(2, 12)}


def canonical_axes(ndim: int) -> tuple[int, ...]:
    """The spatial dimensions of an (N, C, *spatial) tensor of ``ndim`` dimensions."""
    found = _AXES.get(ndim)
    return found if found is not None else tuple(range(2, ndim))


# -- mask application ---------------------------------------------------------------------------------------


def _sum_is_finite(t: Tensor) -> bool:
    total = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    return math.isfinite(total.item())


_TRUSTED_DTYPES = (torch.float32, torch.float64)  # overflow to inf from finite values is not a concern there


def _select(x: Tensor, weight: Tensor, outside: Tensor, value: float, report: list | None = None) -> Tensor:
    """``torch.where(weight != 0, x, value)``, for ``value`` 0 as ``x · weight`` and for −inf as ``x · weight + fill ·
    outside`` (``weight``: the 0/1 mask in x's dtype, ``outside = 1 − weight``); other values select.

    Equal to the selection wherever ``x`` is finite; a NaN or inf anywhere in ``x`` makes the product's sum
    non-finite, and then ``torch.where`` runs. ``value=-inf`` (max pooling) becomes a finite value below every
    valid entry (2·min − 1), so a window's maximum, and which entry holds it, are unchanged, and the padding of
    the result stays finite for later multiplications.
    """
    y = x * weight
    if value == 0:
        if _sum_is_finite(y):
            if report is not None:
                report.append(True)  # every value of the result is finite
            return y
        return torch.where(weight.bool(), x, 0)
    if value == -math.inf:
        low, high = (v.item() for v in torch.aminmax(y))  # a NaN anywhere makes both NaN
        fill = 2 * low - 1  # below min(0, smallest valid entry)
        if math.isfinite(fill) and fill > torch.finfo(x.dtype).min and math.isfinite(high):
            if report is not None:
                report.append(True)
            return y.add_(outside, alpha=fill)
        if math.isfinite(fill) and fill > torch.finfo(x.dtype).min and not math.isnan(high):
            return y.add_(outside, alpha=fill)
    elif report is not None and math.isfinite(value) and _sum_is_finite(y):
        report.append(True)
    # Other fills (1 before the ops singular at 0) select: y + value·outside would add +0.0 to a valid −0.0, giving
    # +0.0, and 1/x would be +inf where the sample alone gives −inf.
    return torch.where(weight.bool(), x, value)


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _inside(sizes: Sizes, canvas: tuple[int, ...], dtype) -> np.ndarray:
    """(N, 1, *canvas) array of ``dtype``: 1 inside each sample's extent, 0 outside (one 0/1 row per spatial dim,
    multiplied with broadcasting)."""
    extents = np.asarray(sizes, dtype=np.int64).reshape(len(sizes), len(canvas))
    found = None
    for axis, extent in enumerate(canvas):
        shape = [len(sizes), 1] + [1] * len(canvas)
        shape[2 + axis] = extent
        inside = (np.arange(extent) < extents[:, axis : axis + 1]).astype(dtype).reshape(shape)
        found = inside if found is None else found * inside
    return found  # (N, 1, *canvas): every axis's row has multiplied in


class _Select(torch.autograd.Function):
    """:func:`_select` with the gradient of ``torch.where`` (the gradient is selected the same way)."""

    @staticmethod
    def forward(ctx, x, weight, outside, value, report):
        ctx.weight, ctx.outside = weight, outside
        return _select(x, weight, outside, value, report)

    @staticmethod
    def backward(ctx, grad):
        return _select(grad, ctx.weight, ctx.outside, 0), None, None, None, None


# -- the context every rule works with -------------------------------------------------------------------


class _Records:
    """``tensor -> Entry`` by identity: a dict keyed by ``id`` whose entries hold a weak reference to their tensor."""

    __slots__ = ("by_id",)

    def __init__(self):
        self.by_id: dict[int, Entry] = {}

    def get(self, t, default=None):
        entry = self.by_id.get(id(t))
        return entry if entry is not None and entry.ref() is t else default

    def __contains__(self, t) -> bool:
        return self.get(t) is not None

    def __getitem__(self, t) -> Entry:
        entry = self.get(t)
        if entry is None:
            raise KeyError(f"not a padded tensor (shape {tuple(getattr(t, 'shape', ()))})")
        return entry

    def __setitem__(self, t: Tensor, entry: Entry) -> None:
        entry.ref = weakref.ref(t)
        self.by_id[id(t)] = entry

    def pop(self, t, default=None):
        entry = self.get(t)
        if entry is None:
            return default
        del self.by_id[id(t)]
        return entry

    def __bool__(self) -> bool:
        return bool(self.by_id)


class MaskedContext(TorchFunctionMode):
    """What a rule (see :func:`~cnnkit.masking.register_masked_op`) knows and may do during a masked forward pass.

    A rule is called as ``rule(ctx, func, args, kwargs)`` for every call of a registered function that has a
    padded tensor among its arguments; ``ctx.padded`` lists those tensors. It returns what ``func`` would.
    """

    def __init__(self, process_group=None, root: nn.Module | None = None, cache: dict | None = None,
                 masks: dict | None = None):
        super().__init__()
        self.entries = _Records()
        # masks by extents, canvas, layout, device and dtype (kept across calls by MaskedModel: never changed in place)
        self.masks: dict[tuple, Tensor | tuple[Tensor, Tensor]] = {} if masks is None else masks
        self.cleaned: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.canvases: dict[tuple, dict[Sizes, None]] = {}  # canvas -> the extents seen on it, in order
        self.filled: dict[tuple[Sizes, tuple[int, ...]], bool] = {}  # (extents, canvas) -> every sample fills it
        self.process_group = process_group
        self.root = root
        self.cache = {} if cache is None else cache  # decisions per (function, extents, geometry)
        self.padded: list[Tensor] = []
        self.busy = 0  # > 0 while a rule runs (calls it makes are ordinary calls)

    # -- public helpers for rules ---------------------------------------------------------------------
    def is_padded(self, t) -> bool:
        """Whether ``t`` is a tensor derived from the padded input whose extents do not all fill its canvas."""
        return isinstance(t, Tensor) and self.entries.get(t) is not None

    def record(self, t: Tensor) -> Entry:
        """The record of a padded tensor (extents, spatial axes, batch axis, clean flag)."""
        return self.entries[t]

    def sizes(self, t: Tensor) -> Sizes:
        """Each sample's extent along ``t``'s spatial dimensions."""
        return self.entries[t].sizes

    def spatial_axes(self, t: Tensor) -> tuple[int, ...]:
        """The positions of ``t``'s spatial dimensions (``(2, 3)`` for an (N, C, H, W) tensor)."""
        return self.entries[t].axes

    def canvas(self, t: Tensor) -> tuple[int, ...]:
        shape = t.shape
        return tuple(shape[a] for a in self.entries[t].axes)

    def is_clean(self, t: Tensor) -> bool:
        """Whether ``t`` is known to be zero outside the extents (and has not changed in place since)."""
        entry = self.entries[t]
        return entry.clean and entry.version == t._version and not entry.aliased

    def track(self, out: Tensor, sizes: Sizes, zero_outside: bool = False, axes: tuple[int, ...] | None = None,
              batch: int = 0, *, finite: bool = False, nonneg: bool = False) -> Tensor:
        """Record ``out`` as padded with these per-sample extents (``axes``: its spatial dims, default (2, …);
        ``batch``: its batch dim; ``finite``: every value known finite, e.g. a finite-preserving op of
        :meth:`is_finite` tensors; ``nonneg``: every value, padding included, known >= 0)."""
        shape = out.shape
        if axes is None:
            axes = canonical_axes(len(shape))
            canvas = tuple(shape[2:])
        else:
            canvas = tuple(shape[a] for a in axes)
        key = (sizes, canvas)
        full = self.filled.get(key)
        if full is None:
            full = self.filled[key] = all(size == canvas for size in sizes)
            seen = self.canvases.get(canvas)
            if seen is None:
                self.canvases[canvas] = {sizes: None}
            elif sizes not in seen:
                seen[sizes] = None
        if full:
            self.entries.pop(out)  # every sample fills the canvas: an ordinary tensor now
            return out
        self.entries.by_id[id(out)] = Entry(sizes, zero_outside, out._version, axes, False, batch, weakref.ref(out),
                                            finite, nonneg)
        return out

    def mask(self, t: Tensor) -> Tensor:
        """Bool mask of valid positions, shaped to broadcast against ``t`` (N at its batch dim, extents at its spatial
        dims)."""
        return self._layout(t, torch.bool)

    def _layout(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        """The mask in ``dtype`` (1 inside, 0 outside) shaped to broadcast against ``t``."""
        entry = self.entries[t]
        shape = t.shape
        if entry.batch == 0 and entry.axes == canonical_axes(len(shape)):
            return self._base(entry.sizes, tuple(shape[2:]), t.device, dtype)
        canvas = tuple(shape[a] for a in entry.axes)
        key = (entry.sizes, canvas, entry.axes, entry.batch, len(shape), t.device, dtype)
        found = self.masks.get(key)
        if found is None:
            base = self._base(entry.sizes, canvas, t.device, dtype)
            view = [1] * len(shape)
            view[entry.batch] = base.shape[0]
            for a, c in zip(entry.axes, canvas):
                view[a] = c
            found = self.masks[key] = base.reshape(view)
        return found

    def _mask(self, sizes: Sizes, canvas: Sequence[int], device) -> Tensor:
        """(N, 1, *canvas) bool, True inside each sample's extent."""
        return self._base(sizes, tuple(canvas), device, torch.bool)

    def _base(self, sizes: Sizes, canvas: tuple[int, ...], device, dtype: torch.dtype) -> Tensor:
        """(N, 1, *canvas) in ``dtype``, 1 inside each sample's extent: a product of one 0/1 row per spatial dim
        (a broadcast product of floats is fast; a broadcast ``&`` of bools is ~10× slower on the CPU). Built anew
        for every batch of other sizes (training), on the host with NumPy (~90 µs instead of ~150 µs of a dozen
        small torch calls for a (16, 1, 94, 93) float32 mask), then moved to ``device``."""
        key = (sizes, canvas, device, dtype)
        found = self.masks.get(key)
        if found is None:
            if dtype == torch.bool or not dtype.is_floating_point:
                found = self._base(sizes, canvas, device, torch.float32).to(dtype)
            else:  # bfloat16 has no NumPy type: made as float32 (0 and 1 convert exactly)
                host = _inside(sizes, canvas, _NUMPY_FLOATS.get(dtype, np.float32))
                found = torch.from_numpy(host).to(device=device, dtype=dtype)
            self.masks[key] = found
        return found

    def _weights(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The mask as 1/0 and as 0/1 in ``t``'s dtype (for :func:`_select`)."""
        weight = self._layout(t, t.dtype)
        key = ("outside", id(weight))
        found = self.masks.get(key)
        if found is None or found[0] is not weight:
            found = self.masks[key] = (weight, 1 - weight)
        return weight, found[1]

    def _where(self, t: Tensor, value: float, trusted: bool = False) -> tuple[Tensor, bool]:
        """``torch.where(mask, t, value)`` and whether every value of the result is known finite; on the CPU as a
        multiplication, several times faster: checked (a NaN or inf in the padding would give NaN), or, for a
        ``trusted`` tensor (known finite, float32/64) and ``value=0``, a plain product (whose gradient is the
        gradient times the mask: finite at the padding, since every padded gradient is zeroed the same way); for
        ``value=-inf`` that product plus 2·min − 1 outside (one ``min``, one ``addcmul``; the same gradient)."""
        if t.device.type != "cpu" or not t.is_floating_point():
            return torch.where(self.mask(t), t, value), False
        weight, outside = self._weights(t)
        if trusted and t.dtype in _TRUSTED_DTYPES:
            if value == 0:
                return t * weight, True
            if value == -math.inf:  # 2·min − 1 below every entry (padding included), as in _select, in one pass
                fill = 2 * min(t.detach().min().item(), 0.0) - 1
                if fill > torch.finfo(t.dtype).min:
                    return torch.addcmul(outside * fill, t, weight), True
        report: list = []
        if t.requires_grad and torch.is_grad_enabled():
            out = _Select.apply(t, weight, outside, value, report)
        else:
            out = _select(t, weight, outside, value, report)
        return out, bool(report)

    def zeros_outside(self, t: Tensor, *, check: bool = False) -> Tensor:
        """``t`` with zeros outside each sample's extent (what a sample alone sees as zero padding).

        ``check=True`` checks for NaN and inf even in a tensor known finite (and selects its gradient the same
        way): for outputs, whose gradients come from the caller's loss."""
        entry = self.entries[t]
        version = t._version
        if entry.clean and entry.version == version and not entry.aliased and not check:
            return t
        if not entry.aliased and not check:
            cached = self.cleaned.get(t)
            if cached is not None and cached[0] == version:
                return cached[1]
        # One pass forward and backward; unlike a plain multiplication it also clears NaN, inf and the low fill
        # left by max pooling.
        out, finite = self._where(t, 0, not check and self.is_finite(t))
        self.track(out, entry.sizes, True, entry.axes, entry.batch, finite=finite)
        if not entry.aliased and not check:
            self.cleaned[t] = (version, out)
        return out

    def fill_outside(self, t: Tensor, value: float) -> Tensor:
        """``t`` with ``value`` outside each sample's extent (e.g. ``-inf`` before a max, 1 before a log).

        ``-inf`` may be replaced by any value below every valid entry (on the CPU: 2·min − 1)."""
        entry = self.entries[t]
        out, finite = self._where(t, value, self.is_finite(t))
        return self.track(out, entry.sizes, value == 0, entry.axes, entry.batch, finite=finite)

    def relu_zeroed(self, t: Tensor, inplace: bool = False) -> Tensor | None:
        """``relu(t)`` with zeros outside the extents, for a tensor known finite (float32/64, CPU; else ``None``).

        ReLU's own result, zeroed outside the extents in place through ``.data``: one fresh tensor instead of two
        (ReLU's result and the zeroed copy a later window op would make; fresh memory is what a masked step pays
        most for on the CPU), and ReLU's own gradient node, whose formula reads that saved result
        (``threshold_backward(grad, result, 0)``): ``grad`` where the zeroed result is positive, so 0 outside the
        extents and ReLU's selection inside, with no gradient pass of its own. Writing through ``.data`` leaves
        the version counter alone (the saved result is meant to be the zeroed one). ``inplace``: written into
        ``t`` (``nn.ReLU(inplace=True)``), for a ``t`` that is not a view."""
        if t.device.type != "cpu" or t.dtype not in _TRUSTED_DTYPES or not self.is_finite(t):
            return None
        if inplace:
            if t._base is not None:
                return None
            out = torch.relu_(t)
        else:
            out = torch.relu(t)
        out.data.mul_(self._layout(t, t.dtype))  # relu(t) inside the extents, its sign of zero kept
        return out

    def is_nonnegative(self, t: Tensor) -> bool:
        """Whether every value of ``t`` (padding included) is known >= 0 (and ``t`` unchanged since)."""
        entry = self.entries.get(t)
        return entry is not None and entry.nonneg and entry.version == t._version and not entry.aliased

    def is_finite(self, t: Tensor) -> bool:
        """Whether every value of ``t`` (padding included) is known finite (and ``t`` unchanged since)."""
        entry = self.entries.get(t)
        return entry is not None and entry.finite and entry.version == t._version and not entry.aliased

    # kept for rules written against the first version
    clean = zeros_outside

    def bind(self, func, args, kwargs) -> dict:
        """``func``'s arguments by parameter name (see :func:`bind`)."""
        return bind(func, args, kwargs)

    def extents_of_canvas(self, canvas: tuple[int, ...]) -> list[Sizes]:
        """The per-sample extents of padded tensors seen so far whose canvas is ``canvas`` (oldest first)."""
        return list(self.canvases.get(tuple(canvas), ()))

    # -- dispatch -----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        if func in _ops.METADATA:
            return func(*args, **kwargs)
        by_id = self.entries.by_id
        padded = None
        if by_id:
            padded = _padded_in(args, by_id, None)
            if kwargs:
                padded = _padded_in(kwargs.values(), by_id, padded)
        if padded is None:
            rule = ALWAYS.get(func)
            if rule is None:
                return func(*args, **kwargs)
            self.padded = []
            return self._run(rule, func, args, kwargs)
        rule = RULES.get(func)
        self.padded = padded
        if rule is None:
            rule = refuse
        elif rule not in BATCH_ANYWHERE:
            for t in padded:
                if by_id[id(t)].batch:
                    rule = refuse_batch_moved
                    break
        return self._run(rule, func, args, kwargs)

    def _run(self, rule, func, args, kwargs):
        self.busy += 1
        try:
            return rule(self, func, args, kwargs)
        except CnnkitError as error:
            if getattr(error, "_masked_where", False):
                raise
            path, where = self._module_path()
            located = type(error)(f"{error}{where}") if where else error
            located._masked_where = True
            located._masked_module = path  # the innermost module of the model that made the call (or None)
            raise located from None
        finally:
            self.busy -= 1
            # Hold no argument past the call: a tensor kept alive until the next op cannot lend its memory to that
            # op's result, and fresh memory (page faults) is what a CPU step pays most for.
            self.padded = []

    def _module_path(self) -> tuple[str | None, str]:
        """The path of the innermost module of the model on the stack (``""``: the model itself; ``None``: none)
        and how errors name it: `` [in module 'decoder.blocks.0' (DecoderBlock)]``."""
        if self.root is None:
            return None, ""
        names = {id(m): name for name, m in self.root.named_modules()}
        frame = sys._getframe(2)
        while frame is not None:
            obj = frame.f_locals.get("self")
            if isinstance(obj, nn.Module) and id(obj) in names:
                path = names[id(obj)]
                return path, f" [in module '{path or '(the model itself)'}' ({type(obj).__name__})]"
            frame = frame.f_back
        return None, ""

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            _ACTIVE.remove(self)


def _padded_in(values, by_id: dict, padded: list | None) -> list | None:
    """``padded`` plus the recorded tensors among ``values`` (looking through lists, tuples and dicts), in order;
    ``None`` while there are none (the dispatch's scan of every call's arguments: no lists built for ints)."""
    for a in values:
        if isinstance(a, Tensor):
            entry = by_id.get(id(a))
            if entry is not None and entry.ref() is a:
                if padded is None:
                    padded = [a]
                else:
                    padded.append(a)
        elif isinstance(a, (list, tuple)):
            if a:
                padded = _padded_in(a, by_id, padded)
        elif isinstance(a, dict) and a:
            padded = _padded_in(a.values(), by_id, padded)
    return padded


_ACTIVE: list[MaskedContext] = []  # entered masked modes, innermost last


def masked_dispatch(dispatcher: Callable[..., tuple]) -> Callable[[Callable], Callable]:
    """Make a Python function (a layer's functional op) visible to :func:`~cnnkit.masked` and to nothing else.

    Like :func:`torch.overrides.wrap_torch_function`, but the call goes through ``__torch_function__`` only
    while a masked forward pass is running and not inside one of its rules; everywhere else (plain calls,
    ``summary()``'s and the tiler's modes) the function runs as it is, so those see the torch ops inside it. A
    rule for the function is then registered with :func:`~cnnkit.masking.register_masked_op`.

    Args:
        dispatcher: Called with the function's arguments; returns the ones that may be tensors.
    """

    def decorator(fn: Callable) -> Callable:
        import functools

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if _ACTIVE and not _ACTIVE[-1].busy:
                relevant = tuple(a for a in dispatcher(*args, **kwargs) if a is not None)
                return torch.overrides.handle_torch_function(wrapped, relevant, *args, **kwargs)
            return fn(*args, **kwargs)

        return wrapped

    return decorator


def refuse(ctx: MaskedContext, func, args, kwargs):
    t = ctx.padded[0]
    raise UnsupportedError(
        f"masked(): {op_name(func)} is not supported on a padded batch: it could mix padding into valid "
        "positions (see cnnkit.masking.masked_model for the supported ops; cnnkit.masking.register_masked_op "
        f"adds a rule). Received a tensor of shape {tuple(t.shape)} with per-sample extents {ctx.sizes(t)}."
    )


def refuse_batch_moved(ctx: MaskedContext, func, args, kwargs):
    t = next(t for t in ctx.padded if ctx.entries[t].batch)
    raise UnsupportedError(
        f"masked(): {op_name(func)} on a padded tensor of shape {tuple(t.shape)} whose batch dimension is at "
        f"{ctx.entries[t].batch} (after torch.stack(..., dim=0)); only point-wise ops and reductions over the "
        "stacked dimension are supported there."
    )
