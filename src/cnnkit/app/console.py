"""Printed lines that fit the terminal they are printed to, and whole lines in a log.

The rule: a terminal, or a pipe whose reader set ``COLUMNS``, gets each line wrapped at its width
(:func:`wrap_line`); a file or pipe without ``COLUMNS`` is a log, and keeps its lines whole. Torch-free, so that
``cnnkit predict`` follows the same rule without loading the training stack.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable

__all__ = ["console_log", "wrap_line", "wraps_lines"]


def wraps_lines(console) -> bool:
    """Whether lines printed on the rich ``console`` are wrapped at its width (a terminal, or ``COLUMNS`` set)
    rather than kept whole (a log)."""
    return console.is_terminal or bool(os.environ.get("COLUMNS"))


_LABEL = re.compile(r"[^\s:][^:]{0,40}:\s{2,}")
"""The label of an aligned ``"label:   value"`` line (:meth:`SegmentationRun.lines`)."""
_BEFORE_NUMBER = re.compile(r"(?<=\S) (?=[-+]?\.?\d|%|nan\b)")
"""A single space between a word and the number (or ``%``) after it."""


def wrap_line(line: str, width: int) -> str:
    """``line`` broken at spaces into lines of at most ``width`` characters (a longer word is cut).

    A number stays with the word before it (``forest 0.993``, ``25.07 %``). Continuation lines start under the
    value of an aligned ``"label:   value"`` line, and two spaces further in than the line itself otherwise.

    Examples:
        >>> print(wrap_line("per-class IoU:   water 0.996, forest 0.993, cropland 0.965", 40))
        per-class IoU:   water 0.996,
                         forest 0.993,
                         cropland 0.965
    """
    if len(line) <= width:
        return line
    label = _LABEL.match(line)
    indent = label.end() if label else len(line) - len(line.lstrip(" ")) + 2
    if indent > width // 2:
        indent = 2
    glued = _BEFORE_NUMBER.sub("\0", line)  # NUL: not a space to textwrap, so no break there
    lines = textwrap.wrap(glued, width, subsequent_indent=" " * indent, break_on_hyphens=False)
    return "\n".join(lines).replace("\0", " ")


def console_log(console) -> Callable[[str], None]:
    """A ``log`` for the applications that prints each line on a rich ``console``, wrapped (:func:`wrap_line`) at
    the width of the terminal it prints to: a terminal, or a pipe whose reader set ``COLUMNS``. Lines written to a
    file or pipe without ``COLUMNS`` (a log) are kept whole, as rich's ``soft_wrap`` keeps them."""
    wrap = wraps_lines(console)

    def log(text: str) -> None:
        if not wrap:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            return
        # rich folds what wide characters (two cells each) may still push over the width
        console.print("\n".join(wrap_line(line, console.width) for line in text.split("\n")), markup=False,
                      highlight=False)

    return log
