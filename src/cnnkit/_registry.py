"""The one registry mechanism: values registered for classes, or for names.

:class:`TypeRegistry` maps classes to values and finds the value for an object (or a class) by walking its
method resolution order, so a subclass inherits its nearest registered base class's entry. It is the table
behind :func:`cnnkit.register_explainer`, :func:`cnnkit.init.register_initializer` and
:func:`cnnkit.keras.register_layout`. :class:`NameRegistry` maps names to values (builders of networks chosen
by name, as a run manifest stores them) and reads like a ``dict``.

Examples:
    >>> describe = TypeRegistry[str]("description")
    >>> describe.register(int, value="a whole number")
    >>> describe.find(True), describe.find(int), describe.find(2.5)   # bool is a subclass of int
    ('a whole number', 'a whole number', None)
    >>> 3 in describe, "3" in describe
    (True, False)
    >>> describe.require("3")
    Traceback (most recent call last):
    ...
    cnnkit.errors.UnsupportedError: No description is known for str. Known: int.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from cnnkit.errors import ArgumentTypeError, UnsupportedError

__all__ = ["NameRegistry", "TypeRegistry"]

V = TypeVar("V")


class TypeRegistry(Generic[V]):
    """Values registered for classes, found through ``type(obj).__mro__`` (nearest registered class wins).

    Args:
        what: What a value is, for error messages (``"Keras weight layout"``).

    Examples:
        >>> from torch import nn
        >>> layers = TypeRegistry[str]("kind")
        >>> @layers.registering(nn.Conv1d, nn.Conv2d)
        ... def conv(): ...
        >>> layers.find(nn.Conv2d(1, 1, 1)) is conv, layers.find(nn.Linear) is None
        (True, True)
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._table: dict[type, V] = {}

    def register(self, *types: type, value: V) -> None:
        """Register ``value`` for each of ``types`` and their subclasses; a later registration replaces one."""
        for t in self._classes(types):
            self._table[t] = value

    def registering(self, *types: type) -> Callable[[V], V]:
        """:meth:`register` as a decorator: registers the decorated value and returns it unchanged."""
        self._classes(types)

        def decorator(value: V) -> V:
            self.register(*types, value=value)
            return value

        return decorator

    def _classes(self, types: tuple) -> tuple[type, ...]:
        if not types or not all(isinstance(t, type) for t in types):
            raise ArgumentTypeError(
                f"Registration in the {self.what} registry needs one or more classes. Received types={types!r}."
            )
        return types

    def find(self, key: object) -> V | None:
        """The value of ``key``'s class (``key`` itself if it is a class) or its nearest registered base class."""
        for cls in (key if isinstance(key, type) else type(key)).__mro__:
            if cls in self._table:
                return self._table[cls]
        return None

    def require(self, key: object) -> V:
        """Like :meth:`find`, but an :class:`~cnnkit.errors.UnsupportedError` naming the known classes if none."""
        value = self.find(key)
        if value is None:
            name = (key if isinstance(key, type) else type(key)).__name__
            raise UnsupportedError(f"No {self.what} is known for {name}. Known: {', '.join(self.known())}.")
        return value

    def __contains__(self, key: object) -> bool:
        return self.find(key) is not None

    def known(self) -> list[str]:
        """The registered classes' names, sorted."""
        return sorted(t.__name__ for t in self._table)


class NameRegistry(Mapping[str, V]):
    """Values registered under names; read like a ``dict`` (``name in r``, ``r[name]``, ``sorted(r)``).

    Args:
        what: What a value is, for error messages (``"network"``).

    Examples:
        >>> builders = NameRegistry[type]("network")
        >>> @builders.registering("Identity")
        ... class Identity: ...
        >>> sorted(builders), builders["Identity"] is Identity
        (['Identity'], True)
        >>> builders.require("Unet")
        Traceback (most recent call last):
        ...
        cnnkit.errors.UnsupportedError: Unknown network 'Unet'. Expected one of ('Identity',).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._table: dict[str, V] = {}

    def register(self, name: str, value: V) -> None:
        """Register ``value`` under ``name``; a later registration replaces one."""
        if not isinstance(name, str) or not name:
            raise ArgumentTypeError(
                f"Registration in the {self.what} registry needs a non-empty string name. Received name={name!r}."
            )
        self._table[name] = value

    def registering(self, name: str) -> Callable[[V], V]:
        """:meth:`register` as a decorator: registers the decorated value and returns it unchanged."""

        def decorator(value: V) -> V:
            self.register(name, value)
            return value

        return decorator

    def require(self, name: str) -> V:
        """``self[name]``, or an :class:`~cnnkit.errors.UnsupportedError` listing the known names."""
        if name not in self._table:
            raise UnsupportedError(f"Unknown {self.what} {name!r}. Expected one of {tuple(sorted(self._table))!r}.")
        return self._table[name]

    def __getitem__(self, name: str) -> V:
        return self._table[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)
