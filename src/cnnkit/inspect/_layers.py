"""Choosing layers of a model by dotted name, by module type, or by the module itself (one wording)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnkit.errors import ArgumentTypeError, ShapeError

__all__ = ["resolve_layers"]

LayerSpec = str | type | nn.Module


def _few(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def resolve_layers(
    model: nn.Module, layers: LayerSpec | Sequence[LayerSpec], name: str = "layers"
) -> dict[str, nn.Module]:
    """``{dotted name: module}`` for the chosen layers, in the model's ``named_modules`` order.

    A string is an exact dotted name from ``model.named_modules()`` (``""`` is the model itself), a
    class selects every submodule of that type (``nn.Conv2d``), and a module selects itself.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module. Received {type(model).__name__}.")
    specs = [layers] if isinstance(layers, (str, type, nn.Module)) else list(layers)
    if not specs:
        raise ShapeError(f"{name} must name at least one layer. Received {name}={layers!r}.")
    named = dict(model.named_modules())
    valid = [n for n in named if n]
    chosen: set[int] = set()
    for spec in specs:
        if isinstance(spec, str):
            if spec not in named:
                raise ShapeError(
                    f"Unknown layer name {spec!r} in {name}; names are the exact dotted names of "
                    f"model.named_modules(), e.g. {_few(valid)}."
                )
            chosen.add(id(named[spec]))
        elif isinstance(spec, type) and issubclass(spec, nn.Module):
            hits = [m for m in named.values() if isinstance(m, spec)]
            if not hits:
                kinds = sorted({type(m).__name__ for m in named.values()})
                raise ShapeError(
                    f"No layer of type {spec.__name__} in the model (from {name}). Types present: {', '.join(kinds)}."
                )
            chosen.update(id(m) for m in hits)
        elif isinstance(spec, nn.Module):
            if not any(m is spec for m in named.values()):
                raise ShapeError(f"The module {type(spec).__name__} given in {name} is not part of the model.")
            chosen.add(id(spec))
        else:
            raise ArgumentTypeError(
                f"{name} must hold layer names (str), module types or modules. Received {spec!r} "
                f"({type(spec).__name__})."
            )
    return {n: m for n, m in named.items() if id(m) in chosen}
