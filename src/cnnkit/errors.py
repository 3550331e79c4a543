"""The exceptions cnnkit raises.

Every error that comes from bad user input is a :class:`CnnkitError`. Shape problems are also
``ValueError`` so that code written against plain PyTorch (which raises ``ValueError`` or
``RuntimeError``) keeps catching them.
"""

from __future__ import annotations

__all__ = ["ArgumentTypeError", "CnnkitError", "NativeKernelWarning", "ShapeError", "UnsupportedError"]


class CnnkitError(Exception):
    """Base class of every error cnnkit raises on purpose."""


class ShapeError(CnnkitError, ValueError):
    """An argument or a tensor has a shape, size or value that the rule at hand does not allow."""


class ArgumentTypeError(CnnkitError, TypeError):
    """An argument of the wrong kind (a list where a module is expected); also a ``TypeError``."""


class UnsupportedError(CnnkitError, NotImplementedError):
    """A module, op or file entry that cnnkit does not handle (it never guesses).

    A ``NotImplementedError`` rather than a ``TypeError``: PyTorch turns a ``TypeError`` raised inside a
    binary operator into ``NotImplemented``, which would hide the message.
    """


class NativeKernelWarning(RuntimeWarning):
    """A C kernel (see ``cnnkit._native``) could not be built or loaded; the pure-torch path is used.

    Issued once per kernel and process, with the reason (no compiler, or the compiler's output). Silence it
    with ``CNNKIT_NATIVE=0`` (which also skips the build) or ``warnings.filterwarnings("ignore",
    category=cnnkit.errors.NativeKernelWarning)``.
    """
