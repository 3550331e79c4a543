"""Rendering of :class:`~cnnkit.explainers.summary.Summary` as a terminal table (rich) or plain text.

Collecting and rendering are kept apart: this module reads a summary through :class:`SummaryView` (the fields it
draws) and never imports :mod:`~cnnkit.explainers.summary`, which imports it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol

from rich import box
from rich.console import Console
from rich.table import Table

__all__ = ["SummaryView", "render_summary", "summary_table"]


class SummaryView(Protocol):
    """What the table draws of a :class:`~cnnkit.explainers.summary.Summary`: its title fields, its rows
    (each with ``name``, ``kind``, ``output_shape``, ``weights``, ``keras_weights``, ``num_params``,
    ``receptive_field``, ``depth``, ``note``) and its totals."""

    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    rows: Sequence[Any]
    total_params: int
    trainable_params: int


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _shapes(shapes) -> str:
    return " ".join(_shape(s) for s in shapes) if shapes else "—"


def _weights(weights: dict) -> str:
    return "\n".join(f"{k} {_shape(v)}" for k, v in weights.items()) or ""


def summary_table(s: SummaryView) -> Table:
    """A rich ``Table`` with one row per layer call or functional op, and totals in the caption."""
    table = Table(
        title=f"{s.model} on input {_shape((s.batch_size, *s.input_shape))}",
        box=box.SIMPLE_HEAD,
        caption=(
            f"Total params: {s.total_params:,}   Trainable: {s.trainable_params:,}   "
            f"Non-trainable: {s.total_params - s.trainable_params:,}"
        ),
        caption_justify="left",
    )
    table.add_column("Layer", no_wrap=True)
    table.add_column("Type")
    table.add_column("Output shape")
    table.add_column("Weights (torch)")
    table.add_column("Weights (Keras)")
    table.add_column("Params", justify="right")
    table.add_column("RF / jump", justify="right")
    for row in s.rows:
        rf = ""
        if row.receptive_field is not None:
            size, jump = row.receptive_field
            rf = "×".join(map(str, size)) + " / " + "×".join(map(str, jump))
        params = f"{row.num_params:,}" if row.num_params else ("shared" if row.note.startswith("shares") else "")
        table.add_row(
            "  " * row.depth + row.name,
            row.kind,
            _shapes(row.output_shape),
            _weights(row.weights),
            _weights(row.keras_weights),
            params,
            rf,
        )
    return table


def render_summary(s: SummaryView, width: int = 140) -> str:
    """The summary table as plain text (no colour codes), ``width`` columns wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, legacy_windows=False)
    console.print(summary_table(s))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
