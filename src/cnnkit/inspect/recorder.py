"""``Recorder``: capture activations, output gradients and weight gradients of chosen layers.

A weight gradient is ``∂loss/∂w`` for every weight ``w`` of a layer — a tensor with the weight's own
shape, computed by backpropagation and used by the optimiser to update ``w`` (``w ← w − lr·∂loss/∂w``).
It is what ``conv.weight.grad`` holds after ``loss.backward()``; the Recorder keeps one copy per backward
pass so that several steps can be compared, and :func:`cnnkit.render.filter_grid` draws it like a filter.

Hooks exist only inside the ``with`` block: forward hooks on the chosen layers, tensor hooks on their
outputs (gradient w.r.t. the output; they see the value before any later in-place op) and on their
parameters (gradient w.r.t. the weights). All of them are removed on exit — also when the model raises
inside the block — and a mode set with ``mode=`` is restored module by module. Everything stored is
detached and cloned, so later in-place changes (``ReLU(inplace=True)``, optimiser steps) do not alter it.
Outside the block the model runs exactly as before, at no cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from cnnkit._checks import check_choice
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.inspect._layers import LayerSpec, resolve_layers

__all__ = ["Recorder"]


def _detached(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class Recorder:
    """Context manager that records what chosen layers compute and the gradients flowing through them.

    Args:
        model: The network.
        layers: Layer names (exact dotted names from ``model.named_modules()``), module types (every
            ``nn.Conv2d``), modules, or a list mixing them.
        activations: Record each layer's output on every call.
        output_grads: Record ``∂loss/∂output`` of each call (needs a backward pass inside the block;
            layers must return a single tensor).
        weight_grads: Record ``∂loss/∂param`` of each layer's own parameters on every backward pass
            (every chosen layer must have trainable parameters).
        mode: ``"eval"`` or ``"train"`` to set the model's mode inside the block (restored on exit);
            ``None`` (default) leaves it alone.

    Attributes:
        layers: The chosen ``{name: module}``.
        activations: ``{name: [output of call 0, call 1, …]}``.
        output_grads: ``{name: [∂loss/∂output of call 0, …]}``, aligned with ``activations``; an entry is
            ``None`` until a backward pass reaches it (or if the call ran without gradients).
        weight_grads: ``{name: {param name: [gradient of backward pass 0, …]}}``.

    Examples:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        >>> x = torch.randn(5, 1, 6, 6)
        >>> with Recorder(net, ["0", nn.Linear], output_grads=True, weight_grads=True) as rec:
        ...     net(x).sum().backward()
        >>> rec.activation("0").shape, rec.output_grad("3").shape
        (torch.Size([5, 2, 4, 4]), torch.Size([5, 3]))
        >>> torch.equal(rec.weight_grad("0"), net[0].weight.grad)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSpec | Sequence[LayerSpec],
        *,
        activations: bool = True,
        output_grads: bool = False,
        weight_grads: bool = False,
        mode: str | None = None,
    ):
        self.model = model
        self.layers = resolve_layers(model, layers)
        if not (activations or output_grads or weight_grads):
            raise ShapeError(
                "Recorder must record something: set activations, output_grads or weight_grads to True. "
                "Received all three False."
            )
        if mode is not None:
            check_choice(mode, ("eval", "train"), "mode")
        self.mode = mode
        self.record_activations = bool(activations)
        self.record_output_grads = bool(output_grads)
        self.record_weight_grads = bool(weight_grads)
        self._params: dict[str, dict[str, nn.Parameter]] = {}
        if weight_grads:
            for name, module in self.layers.items():
                own = dict(module.named_parameters(recurse=False))
                if not own:
                    raise ShapeError(
                        f"weight_grads needs layers with weights, but layer {name!r} ({type(module).__name__}) has "
                        "no parameters of its own. Choose layers such as Conv2d or Linear, or set weight_grads=False."
                    )
                trainable = {k: p for k, p in own.items() if p.requires_grad}
                if not trainable:
                    raise ShapeError(
                        f"weight_grads needs trainable weights, but every parameter of layer {name!r} "
                        f"({type(module).__name__}) has requires_grad=False."
                    )
                self._params[name] = trainable
        self.activations: dict[str, list[Any]] = {}
        self.output_grads: dict[str, list[Tensor | None]] = {}
        self.weight_grads: dict[str, dict[str, list[Tensor]]] = {}
        self.clear()
        self._handles: list[RemovableHandle] = []
        self._modes: dict[nn.Module, bool] | None = None
        self._active = False

    def __repr__(self) -> str:
        return (f"Recorder(layers={list(self.layers)}, activations={self.record_activations}, "
                f"output_grads={self.record_output_grads}, weight_grads={self.record_weight_grads}, "
                f"mode={self.mode!r})")

    # -- recording -----------------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget everything recorded so far (hooks, if any, stay)."""
        self.activations = {n: [] for n in self.layers} if self.record_activations else {}
        self.output_grads = {n: [] for n in self.layers} if self.record_output_grads else {}
        self.weight_grads = {n: {p: [] for p in ps} for n, ps in self._params.items()}

    def _on_forward(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if self.record_activations:
            self.activations[name].append(_detached(output))
        if self.record_output_grads:
            if not isinstance(output, Tensor):
                raise UnsupportedError(
                    f"output_grads needs layers that return one tensor; layer {name!r} ({type(module).__name__}) "
                    f"returned {type(output).__name__}. Record activations only, or choose a sub-layer."
                )
            grads = self.output_grads[name]
            grads.append(None)
            if output.requires_grad:
                self._handles.append(output.register_hook(partial(self._on_output_grad, name, len(grads) - 1)))

    def _on_output_grad(self, name: str, call: int, grad: Tensor) -> None:
        self.output_grads[name][call] = grad.detach().clone()

    def _on_weight_grad(self, name: str, param: str, grad: Tensor) -> None:
        self.weight_grads[name][param].append(grad.detach().clone())

    def __enter__(self) -> Recorder:
        if self._active:
            raise CnnkitError("This Recorder is already recording; a Recorder can be entered once at a time.")
        self._active = True
        try:
            if self.mode is not None:
                self._modes = {m: m.training for m in self.model.modules()}
                self.model.train(self.mode == "train")
            if self.record_activations or self.record_output_grads:
                for name, module in self.layers.items():
                    self._handles.append(module.register_forward_hook(partial(self._on_forward, name)))
            for name, params in self._params.items():
                for pname, param in params.items():
                    self._handles.append(param.register_hook(partial(self._on_weight_grad, name, pname)))
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        self._close()
        return False

    def _close(self) -> None:
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            if self._modes is not None:
                for module, training in self._modes.items():
                    module.train(training)
                self._modes = None
            self._active = False

    # -- reading -------------------------------------------------------------------------------------

    def _check_name(self, name: str, table: dict, what: str) -> None:
        if what not in ("activations", "output_grads", "weight_grads"):  # pragma: no cover - internal
            raise ValueError(what)
        flag = {"activations": self.record_activations, "output_grads": self.record_output_grads,
                "weight_grads": self.record_weight_grads}[what]
        if not flag:
            raise CnnkitError(f"This Recorder does not record {what}; create it with {what}=True.")
        if name not in table:
            raise ShapeError(f"Unknown layer {name!r}; this Recorder records {list(self.layers)}.")

    @staticmethod
    def _pick(items: list, call: int, name: str, what: str) -> Any:
        if not items:
            raise CnnkitError(f"Nothing recorded for {what} of layer {name!r} yet (run the model inside the block).")
        if not -len(items) <= call < len(items):
            raise ShapeError(
                f"call must index the {len(items)} recorded {what} of layer {name!r}. Received call={call}."
            )
        return items[call]

    def activation(self, name: str, call: int = -1) -> Any:
        """The output of layer ``name`` on call ``call`` (default: the last)."""
        self._check_name(name, self.activations, "activations")
        return self._pick(self.activations[name], call, name, "activations")

    def output_grad(self, name: str, call: int = -1) -> Tensor:
        """``∂loss/∂output`` of layer ``name`` for call ``call`` (default: the last call)."""
        self._check_name(name, self.output_grads, "output_grads")
        grad = self._pick(self.output_grads[name], call, name, "output_grads")
        if grad is None:
            raise CnnkitError(
                f"No gradient reached the output of layer {name!r} on call {call}: call backward() inside the "
                "block, on a result that depends on this call (and not under torch.no_grad())."
            )
        return grad

    def weight_grad(self, name: str, param: str = "weight", step: int = -1) -> Tensor:
        """``∂loss/∂param`` of layer ``name`` from backward pass ``step`` (default: the last)."""
        self._check_name(name, self.weight_grads, "weight_grads")
        grads = self.weight_grads[name]
        if param not in grads:
            raise ShapeError(f"Layer {name!r} has no trainable parameter {param!r}; it has {list(grads)}.")
        return self._pick(grads[param], step, name, f"weight_grads[{param!r}]")
