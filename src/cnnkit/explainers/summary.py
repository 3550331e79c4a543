"""``summary(model, input_shape)``: one row per layer call and per functional op of a whole model.

Collection works by running the model once on zeros (in eval mode, without gradients) with forward
hooks on every module and a :class:`~torch.overrides.TorchFunctionMode` that notices tensor functions
(``torch.cat``, ``x.flatten(1)``, ``x + y``, ``F.relu`` …) called from a container's own ``forward``.
A *leaf* is a module with a registered explainer or without children; what happens inside a leaf is
its own business and is not listed. Hooks are removed and the train/eval mode restored in ``finally``,
also when the model raises.

Receptive fields are tracked per tensor: a window layer grows the field of its input
(:meth:`ReceptiveField.step`), point-wise layers and element-wise ops keep it, concatenation and
addition take the largest of their inputs, and anything else (flatten, linear over space, upsampling)
ends it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from cnnkit._ops import KEEPS_POSITIONS
from cnnkit._tensors import tensors_in
from cnnkit.errors import ArgumentTypeError, CnnkitError, ShapeError, UnsupportedError
from cnnkit.explainers._meta import REAL_RUN_LIMIT, check_one_input, is_meta, meta_failure, meta_twins
from cnnkit.explainers.formatting import render_summary
from cnnkit.explainers.registry import batch_hint, check_input_shape, find_explainer
from cnnkit.layouts import has_keras_layout, keras_shapes
from cnnkit.shapes import ReceptiveField

__all__ = ["LayerRow", "Summary", "summary"]

_SYMBOLS = {"__add__": "+", "__radd__": "+", "__iadd__": "+=", "__sub__": "−", "__rsub__": "−",
            "__mul__": "×", "__rmul__": "×", "__imul__": "×=", "__truediv__": "/", "__matmul__": "@",
            "__getitem__": "[…]", "__neg__": "−x"}
# Calls that return metadata or would only add noise to the table.
_SKIP = {"__get__", "__set__", "size", "dim", "numel", "__len__", "__iter__", "__format__", "__repr__",
         "__bool__", "__index__", "__int__", "__float__", "item", "tolist", "__hash__", "__eq__"}


@dataclass(frozen=True)
class LayerRow:
    """One row of a :class:`Summary`.

    Attributes:
        name: Dotted module name (``"features.0"``), or ``"<container>:<op>"`` for a functional op.
        kind: Module class name, or the op (``"torch.cat"``, ``"Tensor.flatten"``, ``"+"``).
        output_shape: Output shapes *including* the batch dimension, one per tensor returned.
        weights: Parameter name → torch shape, for parameters counted in this row.
        keras_weights: Keras weight name → shape where cnnkit knows the layout.
        num_params: Parameters first seen in this row (shared weights count once, in their first row).
        receptive_field: ``(size, jump)`` per spatial dimension where defined.
        depth: Nesting depth of the module (0 for the model's direct children).
    """

    name: str
    kind: str
    output_shape: tuple[tuple[int, ...], ...]
    weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    keras_weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_params: int = 0
    receptive_field: ReceptiveField | None = None
    depth: int = 0
    note: str = ""


@dataclass(frozen=True)
class Summary:
    """The result of :func:`summary`: rows as data, totals, and a table as ``str()``."""

    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int

    def __str__(self) -> str:
        return render_summary(self)

    def __rich__(self):
        from cnnkit.explainers.formatting import summary_table

        return summary_table(self)


def _op_name(func) -> tuple[str, str]:
    name = getattr(func, "__name__", repr(func))
    qual = getattr(func, "__qualname__", name)
    if name in _SYMBOLS:
        return name, _SYMBOLS[name]
    if qual.startswith("TensorBase.") or qual.startswith("Tensor."):
        return name, f"Tensor.{name}"
    module = getattr(func, "__module__", "") or ""
    if module.startswith("torch.nn.functional"):
        return name, f"F.{name}"
    return name, f"torch.{name}"


class _Running(NamedTuple):
    """A module whose forward has begun and not yet returned."""

    name: str
    module: nn.Module
    leaf: bool  # a leaf, or inside one
    received: tuple[tuple[int, ...], ...]  # the shapes of the tensors it was called with


class _Collector(TorchFunctionMode):
    def __init__(self, model: nn.Module, ndim: int):
        super().__init__()
        self.model = model
        self.ndim = ndim
        self.rows: list[LayerRow] = []
        self.stack: list[_Running] = []
        self.fields: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.seen: set[int] = set()
        self.names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.last_done = ""
        self.op_counts: dict[tuple[str, str], int] = {}
        self.busy = False  # True while cnnkit's own bookkeeping runs tensor code

    # -- receptive fields --------------------------------------------------------------------------
    def _field_of(self, tensors: Sequence[Tensor]) -> ReceptiveField | None:
        fields = [self.fields.get(t) for t in tensors]
        known = [f for f in fields if f is not None]
        if not known or len(known) != len(fields) or len({f.jump for f in known}) != 1:
            return None
        return ReceptiveField(tuple(max(s) for s in zip(*(f.size for f in known))), known[0].jump)

    def _set_field(self, outputs: Sequence[Tensor], rf: ReceptiveField | None) -> None:
        for t in outputs:
            if rf is not None and t.dim() == self.ndim + 2:
                self.fields[t] = rf

    # -- module hooks ------------------------------------------------------------------------------
    def is_leaf(self, module: nn.Module) -> bool:
        return find_explainer(module) is not None or next(module.children(), None) is None

    def pre_hook(self, module: nn.Module, args):
        inside_leaf = bool(self.stack) and self.stack[-1][2]
        name = self.names.get(id(module), type(module).__name__)
        received = tuple(tuple(t.shape) for t in tensors_in(args))
        self.stack.append(_Running(name, module, self.is_leaf(module) or inside_leaf, received))

    def post_hook(self, module: nn.Module, args, output):
        self.busy = True
        try:
            self._record_module(module, args, output)
        finally:
            self.busy = False

    def _record_module(self, module: nn.Module, args, output):
        name, _, leaf, _ = self.stack.pop()
        inside_leaf = bool(self.stack) and self.stack[-1][2]
        self.last_done = name
        if not leaf or inside_leaf:
            return
        inputs = tensors_in(args)
        outputs = tensors_in(output)
        rf = self._module_field(module, inputs)
        self._set_field(outputs, rf)
        own = dict(module.named_parameters())
        new = {k: p for k, p in own.items() if id(p) not in self.seen}
        self.seen.update(id(p) for p in own.values())
        keras = {}
        if has_keras_layout(module) and len(new) == len(own):
            keras = keras_shapes(module)
        note = "shares weights with an earlier row" if own and not new else ""
        self.rows.append(LayerRow(
            name=name,
            kind=type(module).__name__,
            output_shape=tuple(tuple(t.shape) for t in outputs),
            weights={k: tuple(p.shape) for k, p in new.items()},
            keras_weights=keras,
            num_params=sum(p.numel() for p in new.values()),
            receptive_field=rf,
            depth=name.count("."),
            note=note,
        ))

    def _module_field(self, module: nn.Module, inputs: list[Tensor]) -> ReceptiveField | None:
        if len(inputs) != 1:
            return None
        rf = self._field_of(inputs)
        explainer = find_explainer(module)
        if rf is None or explainer is None:
            return None
        try:
            geometry = explainer(module, tuple(inputs[0].shape[1:])).geometry
        except (CnnkitError, ValueError):
            return None
        if geometry == "pointwise":
            return rf
        if isinstance(geometry, tuple):
            return rf.step(*geometry)
        return None

    # -- functional ops ----------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.busy or not self.stack or self.stack[-1][2]:
            return out  # outside the model's forward, or inside a leaf
        name, label = _op_name(func)
        outputs = tensors_in(out)
        if name in _SKIP or not outputs:
            return out
        inputs = tensors_in(args) + tensors_in(kwargs)
        rf = self._field_of(inputs) if func in KEEPS_POSITIONS else None  # the op catalogue
        self._set_field(outputs, rf)
        owner = self.stack[-1][0] or "(model)"
        key = (owner, label)
        self.op_counts[key] = self.op_counts.get(key, 0) + 1
        count = self.op_counts[key]
        self.rows.append(LayerRow(
            name=f"{owner}:{label}" + (f"#{count}" if count > 1 else ""),
            kind=label,
            output_shape=tuple(tuple(t.shape) for t in outputs),
            receptive_field=rf,
            depth=owner.count(".") + (0 if owner == "(model)" else 1),
        ))
        return out


def summary(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Summary:
    """Per-layer output shapes, weight shapes (torch and Keras), parameters and receptive fields.

    Args:
        model: Any ``nn.Module``.
        input_shape: Shape of one sample, without the batch dimension, e.g. ``(3, 224, 224)``.
        batch_size: Batch size of the zeros run through the model (default 1).
        dtype, device: Of the zeros input; default: those of the model's first parameter.

    Returns:
        A :class:`Summary`; ``print(summary(...))`` shows the table. Its ``total_params`` equals
        ``sum(p.numel() for p in model.parameters())``, and the rows' ``num_params`` add up to it (weights
        of modules never called get a ``(not called)`` row).

    Raises:
        CnnkitError: if the forward pass fails; the message names the innermost layer that raised and the shape
            it received. A :class:`~cnnkit.errors.ShapeError` (also a ``ValueError``) when that layer's explainer
            refuses the shape, and for the wrong number of channels or features (``in_channels``,
            ``in_features``, ``num_features``, ``num_channels``) it says what to change: the input shape, for
            the model's first layer (a channels-last shape is named), or that layer or the ones before it.

    Examples:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        ...                     nn.Linear(8 * 15 * 15, 10))
        >>> s = summary(net, (3, 32, 32))
        >>> [r.output_shape[0] for r in s.rows]
        [(1, 8, 30, 30), (1, 8, 30, 30), (1, 8, 15, 15), (1, 1800), (1, 10)]
        >>> s.total_params == sum(p.numel() for p in net.parameters())
        True
        >>> s.rows[2].receptive_field.size
        (4, 4)
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module. Received {type(model).__name__}.")
    shape = check_input_shape(input_shape)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnnkitError(f"batch_size must be a positive integer. Received batch_size={batch_size!r}.")
    check_one_input(model, "summary")
    first = next(model.parameters(), None)
    dtype = dtype or (first.dtype if first is not None and first.is_floating_point() else torch.float32)
    device = device or (first.device if first is not None else "cpu")
    full = (batch_size, *shape)
    try:
        collector = _collect(model, full, dtype, device, shape)
    except _Failed as failed:
        raise _failure_message(model, shape, batch_size, failed, dtype) from failed.error
    rows = list(collector.rows)
    leftover = {n: p for n, p in model.named_parameters() if id(p) not in collector.seen}
    if leftover:
        rows.append(LayerRow(
            name="(not called)", kind="parameters",
            output_shape=(),
            weights={n: tuple(p.shape) for n, p in leftover.items()},
            num_params=sum(p.numel() for p in leftover.values()),
            note="parameters of modules that forward() did not call, or held by a container",
        ))
    params = list(model.parameters())
    return Summary(
        model=type(model).__name__,
        input_shape=shape,
        batch_size=batch_size,
        rows=tuple(rows),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
    )


class _Failed(Exception):
    """The forward pass raised: the innermost module that was running, and the last one that finished."""

    def __init__(self, error: Exception, running: _Running, last_done: str):
        super().__init__(str(error))
        self.error, self.last_done = error, last_done
        self.running, self.running_type = running.name, type(running.module).__name__
        self.module = running.module
        self.received = running.received[0] if len(running.received) == 1 else None


def _collect(model: nn.Module, full: tuple[int, ...], dtype, device, shape) -> _Collector:
    """Run ``model`` once, for shapes, on an input of shape ``full`` with the collector's hooks.

    On the meta device (no memory); a model that cannot run there (it reads values) is run on real zeros
    when its weights are real and the input holds at most ``REAL_RUN_LIMIT`` elements, with a warning.
    """
    try:
        return _collect_once(model, full, dtype, "meta", shape)
    except _Failed as failed:
        if not meta_failure(failed.error) or is_meta(model) or math.prod(full) > REAL_RUN_LIMIT:
            raise
        warnings.warn(
            f"summary: {failed.running!r} ({failed.running_type}) cannot run on the meta device "
            f"({type(failed.error).__name__}: {failed.error}); the model was run once on real zeros instead.",
            UserWarning, stacklevel=3,
        )
    return _collect_once(model, full, dtype, device, shape)


def _collect_once(model: nn.Module, full: tuple[int, ...], dtype, device, shape) -> _Collector:
    x = torch.zeros(full, dtype=dtype, device=device)
    collector = _Collector(model, ndim=len(shape) - 1)
    collector.fields[x] = ReceptiveField.identity(len(shape) - 1)
    modes = {m: m.training for m in model.modules()}
    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(collector.pre_hook))
            handles.append(module.register_forward_hook(collector.post_hook))
        model.eval()
        with torch.no_grad(), collector:
            try:
                if x.is_meta:
                    twins = meta_twins(model)
                    with torch.device("meta"):
                        torch.func.functional_call(model, twins, (x,), tie_weights=True, strict=False)
                    # the rows saw the twins: count sharing by the real tensors they stand for
                    real = dict(itertools.chain(model.named_parameters(remove_duplicate=False),
                                                model.named_buffers(remove_duplicate=False)))
                    back = {id(twin): id(real[name]) for name, twin in twins.items()}
                    collector.seen = {back.get(i, i) for i in collector.seen}
                else:
                    model(x)
            except Exception as error:
                # the innermost module whose forward had begun and not returned is the one that raised
                running = collector.stack[-1] if collector.stack else _Running("", model, False, (full,))
                raise _Failed(error, running, collector.last_done) from error
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    return collector


def _failure_message(model, shape, batch_size, failed: _Failed, dtype) -> CnnkitError:
    error = failed.error
    if isinstance(error, UnsupportedError):
        return error
    if meta_failure(error):
        why = ("its weights exist on the meta device only" if is_meta(model) else
               f"the input ({batch_size}, {', '.join(map(str, shape))}) is too large to run for real on zeros")
        return UnsupportedError(
            f"summary: layer {failed.running!r} ({failed.running_type}) cannot run on the meta device, where "
            f"summary measures shapes without memory ({type(error).__name__}: {error}), and {why}."
        )
    received = failed.received
    refusal = _refusal(failed.module, received[1:]) if received else None
    fits_without_first = refusal is None or (len(received) > 2 and _refusal(failed.module, received[2:]) is False)
    if len(shape) >= 2 and fits_without_first:
        try:
            _collect_once(model, (batch_size, *shape[1:]), dtype, "meta", shape[1:])
        except _Failed:
            pass
        else:
            hint = f"; batch_size={shape[0]} sets the batch" if shape[0] > 1 else ""
            return ShapeError("summary: " + batch_hint(model, shape, hint))
    where = f"layer {failed.running!r} ({failed.running_type})" if failed.running else \
        f"the model's own forward ({failed.running_type})"
    if refusal:
        first = not failed.last_done and received == (batch_size, *shape)
        mismatch = _channel_mismatch(failed.module, received)
        if mismatch is not None:
            return ShapeError(_channel_message(where, failed, shape, mismatch, first))
        return ShapeError(f"summary: the forward pass failed in {where}, which received a tensor of shape {received} "
                          f"(batch first): {refusal}")
    got = f", which received a tensor of shape {received}" if received else ""
    return CnnkitError(
        f"summary: the forward pass failed in {where}{got}, on input_shape={shape}; the last layer that finished "
        f"was {failed.last_done or 'none'!r}. {type(error).__name__}: {error}"
    )


def _refusal(module: nn.Module, shape: tuple[int, ...]) -> str | bool | None:
    """What ``module``'s explainer says against an input of ``shape`` (no batch): its error message, ``False``
    when it accepts the shape, ``None`` when the module has no explainer."""
    explainer = find_explainer(module)
    if explainer is None:
        return None
    try:
        explainer(module, tuple(shape))
    except (CnnkitError, ValueError) as error:
        return str(error) or type(error).__name__
    return False


# The standard attributes (torch's names) of the channel count a layer is built for; the axis of its input,
# batch first, that must hold that count; and what the entries along that axis are called.
_CHANNEL_ATTRIBUTES = (("in_channels", 1, "channels"), ("num_features", 1, "channels"),
                       ("num_channels", 1, "channels"), ("in_features", -1, "features"))


@dataclass(frozen=True)
class _Mismatch:
    attribute: str
    expected: int
    received: int
    axis: int
    unit: str


def _channel_mismatch(module: nn.Module, received: tuple[int, ...]) -> _Mismatch | None:
    """The channel count ``module`` was built for and the one it received, where that count alone is wrong:
    its explainer refuses ``received`` and accepts it once the count is the expected one."""
    for attribute, axis, unit in _CHANNEL_ATTRIBUTES:
        expected = getattr(module, attribute, None)
        if not isinstance(expected, int) or len(received) < 2 or received[axis] == expected:
            continue
        fixed = list(received)
        fixed[axis] = expected
        if _refusal(module, tuple(fixed[1:])) is False:
            return _Mismatch(attribute, expected, received[axis], axis, unit)
    return None


def _count(n: int, unit: str) -> str:
    return f"{n} {unit if n != 1 else unit.removesuffix('s')}"


def _cli_shape(shape: Sequence[int]) -> str:
    return f"input_shape={tuple(shape)} (on the command line --input {'x'.join(map(str, shape))})"


def _channel_message(where: str, failed: _Failed, shape: tuple[int, ...], m: _Mismatch, first: bool) -> str:
    """``where`` has ``m.attribute=m.expected`` and received another count; what to change, for the model's first
    layer (the input) or a later one (this layer or the ones before it)."""
    text = (f"summary: the forward pass failed in {where}, which has {m.attribute}={m.expected} but received "
            f"{_count(m.received, m.unit)}: a tensor of shape {failed.received}, batch first.")
    if not first:
        return (f"{text} The layers before it give {_count(m.received, m.unit)} (the last layer that finished was "
                f"{failed.last_done!r}): build {failed.running!r} with {m.attribute}={m.received}, or make those "
                f"layers give {_count(m.expected, m.unit)}.")
    index = 0 if m.axis == 1 else len(shape) - 1
    if m.axis == 1 and len(shape) >= 2 and shape[-1] == m.expected:
        return (f"{text} It is the model's first layer, and input_shape={shape} looks channels-last: cnnkit, "
                f"like torch, puts the channels first. Try {_cli_shape((shape[-1], *shape[:-1]))}.")
    fixed = list(shape)
    fixed[index] = m.expected
    return (f"{text} It is the model's first layer, so the input has {_count(m.received, m.unit)} where the "
            f"model wants {m.expected}: give {_cli_shape(fixed)}, or build the model for "
            f"{_count(m.received, m.unit)} ({m.attribute}={m.received} in {failed.running!r}).")
