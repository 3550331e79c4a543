"""Argument normalisation shared by every public function (one place, one wording)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral
from typing import Any

from cnnkit.errors import ShapeError

__all__ = ["check_bool", "check_choice", "check_int", "is_int", "ntuple"]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``int``, NumPy integers, …) and not a ``bool``.

    Examples:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer (not a bool) of at least ``minimum``; else one clear error.

    Examples:
        >>> check_int(3, "epochs")
        3
        >>> check_int(0, "epochs")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: epochs must be an integer >= 1. Received epochs=0.
    """
    if not is_int(value) or value < minimum:
        raise ShapeError(f"{name} must be an integer >= {minimum}. Received {name}={value!r}.")
    return int(value)


def check_bool(value: Any, name: str) -> bool:
    """Return ``value`` if it is ``True`` or ``False``; else one clear error.

    Flags are not truth-tested: ``per_sample="no"`` would otherwise mean ``True``.

    Examples:
        >>> check_bool(False, "bias")
        False
        >>> check_bool("yes", "per_sample")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: per_sample must be True or False. Received per_sample='yes'.
    """
    if isinstance(value, bool):
        return value
    raise ShapeError(f"{name} must be True or False. Received {name}={value!r}.")


def ntuple(value: Any, n: int, name: str, *, minimum: int | None = 1) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``n`` integers, each at least ``minimum``.

    An integer is repeated ``n`` times; a sequence must have length ``n``.

    Args:
        value: An integer or a sequence of integers.
        n: The number of spatial dimensions.
        name: The argument's name, used in the error message.
        minimum: Smallest allowed value (``None`` for no bound).

    Examples:
        >>> ntuple(3, 2, "kernel_size")
        (3, 3)
        >>> ntuple((1, 0), 2, "kernel_size")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: kernel_size must be a tuple of 2 integers >= 1. Received kernel_size=(1, 0).
    """
    # Fast path for the common, valid cases (plain ints); shape arithmetic runs in hot loops.
    if type(value) is int and (minimum is None or value >= minimum):
        return (value,) * n
    if type(value) is tuple and len(value) == n and all(
        type(v) is int and (minimum is None or v >= minimum) for v in value
    ):
        return value
    bound = "" if minimum is None else f" >= {minimum}"
    rule = f"{name} must be an integer{bound} or a tuple of {n} integers{bound}"
    if is_int(value):
        items: tuple[Any, ...] = (int(value),) * n
    elif isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        items = tuple(value)
        if len(items) != n:
            raise ShapeError(f"{name} must be a tuple of {n} integers{bound}. Received {name}={value!r}.")
    else:
        raise ShapeError(f"{rule}. Received {name}={value!r}.")
    if not all(is_int(v) for v in items):
        raise ShapeError(f"{rule}. Received {name}={value!r}.")
    if minimum is not None and any(v < minimum for v in items):
        if is_int(value):
            raise ShapeError(f"{name} must be an integer{bound}. Received {name}={value!r}.")
        raise ShapeError(f"{name} must be a tuple of {n} integers{bound}. Received {name}={value!r}.")
    return tuple(int(v) for v in items)


def check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a ``ShapeError`` listing them.

    Examples:
        >>> check_choice("same", ("valid", "same"), "padding")
        'same'
        >>> check_choice("smae", ("valid", "same"), "padding")
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: Unknown padding 'smae'. Expected one of ('valid', 'same').
    """
    if value not in choices:
        raise ShapeError(f"Unknown {name} {value!r}. Expected one of {tuple(choices)!r}.")
    return value
