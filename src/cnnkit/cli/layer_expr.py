"""Parse a layer written as Python call syntax — ``"Conv2d(3, 32, 5, stride=2)"`` — without ``eval``.

Only calls of known ``nn.Module`` classes (those of ``torch.nn`` and ``cnnkit.nn``) with literal
arguments (numbers, strings, tuples, lists, ``True``/``False``/``None``) are accepted; a call may take
other such calls as arguments (``"Sequential(Conv2d(1, 8, 3), ReLU())"``). Nothing else is run:
names, attributes other than an ``nn.``/``torch.nn.`` prefix, subscripts, lambdas and operators are
refused.
"""

from __future__ import annotations

import ast
import inspect

import torch
from torch import nn

from cnnkit.errors import CnnkitError, ShapeError

__all__ = ["known_layers", "parse_input_shape", "parse_layer"]


def known_layers() -> dict[str, type[nn.Module]]:
    """Module classes that a layer expression may name."""
    import cnnkit.nn as cnn

    found: dict[str, type[nn.Module]] = {}
    for namespace in (nn, cnn):
        for name in dir(namespace):
            obj = getattr(namespace, name)
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and not name.startswith("_"):
                found[name] = obj
    return found


def _callee(node: ast.expr, text: str) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise CnnkitError(f"Cannot parse layer {text!r}: expected a layer name such as Conv2d(...).")
    parts.append(node.id)
    dotted = ".".join(reversed(parts))
    for prefix in ("torch.nn.", "nn.", "cnnkit.nn.", "cnnkit."):
        if dotted.startswith(prefix):
            dotted = dotted[len(prefix):]
            break
    if "." in dotted:
        raise CnnkitError(f"Cannot parse layer {text!r}: {dotted!r} is not a layer name.")
    return dotted


def _value(node: ast.expr, text: str, layers: dict[str, type[nn.Module]]):
    if isinstance(node, ast.Call):
        return _build(node, text, layers)
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise CnnkitError(
            f"Cannot parse layer {text!r}: arguments must be numbers, strings, tuples, booleans, None or "
            f"other layers; received {ast.unparse(node)!r}."
        ) from None


def _build(node: ast.Call, text: str, layers: dict[str, type[nn.Module]]) -> nn.Module:
    name = _callee(node.func, text)
    if name not in layers:
        close = [k for k in layers if k.lower() == name.lower()]
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise CnnkitError(f"Unknown layer {name!r} in {text!r}.{hint} Layers of torch.nn and cnnkit.nn are "
                          "allowed.")
    args = [_value(a, text, layers) for a in node.args]
    if any(k.arg is None for k in node.keywords):
        raise CnnkitError(f"Cannot parse layer {text!r}: **kwargs is not allowed.")
    kwargs = {k.arg: _value(k.value, text, layers) for k in node.keywords}
    try:
        return layers[name](*args, **kwargs)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        raise CnnkitError(f"{name}{ast.unparse(node)[len(ast.unparse(node.func)):]} failed: {error}") from error


def parse_layer(text: str, *, device: torch.device | str | None = None) -> nn.Module:
    """Build the layer that ``text`` describes, without evaluating code.

    Args:
        text: A layer as Python call syntax, e.g. ``"Conv2d(3, 32, 5)"``.
        device: Where the layer's parameters are created. ``"meta"`` gives their shapes without memory
            (``cnnkit explain`` uses it, so ``"Linear(60000, 60000)"`` costs nothing); default: torch's.

    Examples:
        >>> parse_layer("Conv2d(3, 32, 5)")
        Conv2d(3, 32, kernel_size=(5, 5), stride=(1, 1))
        >>> parse_layer("nn.Sequential(nn.Linear(4, 2), nn.ReLU())")
        Sequential(
          (0): Linear(in_features=4, out_features=2, bias=True)
          (1): ReLU()
        )
        >>> parse_layer("__import__('os').system('echo hi')")
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: Cannot parse layer "__import__('os').system('echo hi')": ...
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        raise CnnkitError(f"Cannot parse layer {text!r}: {error.msg}.") from None
    if not isinstance(tree.body, ast.Call):
        raise CnnkitError(f"Cannot parse layer {text!r}: expected a call such as Conv2d(3, 32, 5).")
    if device is None:
        return _build(tree.body, text, known_layers())
    with torch.device(device):
        return _build(tree.body, text, known_layers())


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3x32x32"`` (or ``"3,32,32"``) → ``(3, 32, 32)``.

    Examples:
        >>> parse_input_shape("3x224x224")
        (3, 224, 224)
    """
    parts = [p for p in text.replace("×", "x").replace(",", "x").lower().split("x") if p.strip()]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ShapeError(f"--input must look like 3x32x32 (positive integers, no batch dimension). "
                         f"Received --input={text!r}.")
    return shape
