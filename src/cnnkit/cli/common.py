"""What every ``cnnkit`` command shares: the typer app, help without type columns for flags, the console, the
one way to fail (``error: …``, exit code 2), and torch-side imports with the cycle collector paused."""

from __future__ import annotations

import gc
import importlib
import os

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from cnnkit.errors import CnnkitError, ShapeError

# torch (and everything that imports it) is imported inside the commands that need it, so that `cnnkit --help`
# and `cnnkit --version` answer at once.

__all__ = [
    "OVERWRITE",
    "RESUME",
    "THREADS",
    "TRAINING",
    "VERBOSE",
    "Command",
    "Group",
    "app",
    "console_for_output",
    "csv_list",
    "fail",
    "import_heavy",
    "log_lines",
    "parse_rgb_bands",
    "threads_line",
]


class _NoFlagTypes:
    """Help without a type column for on/off flags: typer shows ``<bool>`` beside ``--overwrite`` or ``--help``,
    which take no value (an empty metavar hides it; flags never use a metavar otherwise)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:  # typer's options (its own vendored click's), duck-typed
            if getattr(param, "is_flag", False) and not param.metavar:
                param.metavar = ""
        return params


class Command(_NoFlagTypes, TyperCommand):
    pass


class Group(_NoFlagTypes, TyperGroup):
    pass


app = typer.Typer(
    help="Convolutional networks on real-world data: shapes explained, exact masks, a look inside.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=Group,
)


def console_for_output() -> Console:
    """The terminal's width; 120 columns when the output is a file or a pipe (a log) and COLUMNS is not set."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        return Console(width=120)
    return console


def log_lines(console: Console) -> bool:
    """Whether ``console`` writes a log, whose long lines are kept whole (``soft_wrap``): the rule of
    :mod:`cnnkit.app.console`, which imports no torch."""
    from cnnkit.app.console import wraps_lines

    return not wraps_lines(console)


def fail(error: Exception) -> None:
    """Print ``error: …`` on one logical line (the terminal wraps it, not cnnkit) and exit with code 2."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {error}", markup=True, highlight=False)
    raise typer.Exit(code=2)



OVERWRITE = ("--out holds an earlier cnnkit run: remove its checkpoints, logs and report (only files cnnkit wrote; "
              "anything else is kept) and train afresh.")
RESUME = "--out holds an earlier cnnkit run: continue its training from checkpoints/last.ckpt."
THREADS = ("CPU threads (default: the cores this process may use, less those busy with other work; one thread per "
            "core on a shared machine makes torch wait for preempted threads).")
VERBOSE = "Show Lightning's own messages and warnings too."


FREEZE = False
"""Set by :func:`main`: only the ``cnnkit`` process freezes its objects. A command run inside another process
(typer's ``CliRunner`` in the tests) leaves that process's collector as it found it (a pytest process that had
frozen every object of 1,500 tests crashed at exit)."""


def import_heavy(*modules: str) -> None:
    """Import torch-side libraries with Python's cycle collector paused; in the ``cnnkit`` process (:data:`FREEZE`)
    exempt them from later collections too.

    torch, Lightning, torchmetrics (and torchvision, sympy, scipy, which they pull in) create millions of objects
    that live until the process exits. Left alone, the collector walks all of them again and again while they
    are imported, and once more at exit: for ``import lightning.pytorch`` on the 2-core benchmark host that was
    9.4 s to import and 2.4 s to exit, against 6.9 s and 0.5 s this way. (``gc.freeze`` moves what exists now into
    a generation the collector does not visit; objects made later are collected as usual. The price: cyclic
    garbage left by those imports is kept, 12,557 objects and about 7 MB for torch and Lightning here.)
    """
    gc.disable()
    try:
        for module in modules:
            importlib.import_module(module)
    finally:
        if FREEZE:
            gc.freeze()
        gc.enable()


TRAINING = ("torch", "lightning.pytorch")


def threads_line(requested: int | None) -> str:
    from cnnkit.app import choose_threads

    return choose_threads(requested)[1]



def csv_list(text: str | None, name: str, cast=str):
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")]
    try:
        return [cast(t) for t in items if t]
    except ValueError:
        message = f"{name} must be a comma-separated list of {cast.__name__}s. Received {name}={text!r}."
        raise ShapeError(message) from None


def parse_rgb_bands(text: str | None) -> tuple[int, int, int] | None:
    """``--rgb-bands 2,1,0`` → ``(2, 1, 0)``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise CnnkitError(f"--rgb-bands must be three band indices counted from 0, e.g. 2,1,0. Received {text!r}.")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


