"""The exceptions cnnkit raises.

Every error that comes from bad user input is a :class:`CnnkitError`. Shape problems are also
``ValueError`` so that code written against plain PyTorch (which raises ``ValueError`` or
``RuntimeError``) keeps catching them.
"""

from __future__ import annotations

__all__ = ["CnnkitError", "ShapeError", "UnsupportedError"]


class CnnkitError(Exception):
    """Base class of every error cnnkit raises on purpose."""


class ShapeError(CnnkitError, ValueError):
    """An argument or a tensor has a shape, size or value that the rule at hand does not allow."""


class UnsupportedError(CnnkitError, NotImplementedError):
    """A module, op or file entry that cnnkit does not handle (it never guesses).

    A ``NotImplementedError`` rather than a ``TypeError``: PyTorch turns a ``TypeError`` raised inside a
    binary operator into ``NotImplemented``, which would hide the message.
    """
