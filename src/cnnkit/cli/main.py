"""The ``cnnkit`` command line: ``demo``, ``train``, ``models``, ``predict``, ``explain``, ``summary``, ``convert``,
``keras-explain`` and ``report``, one module each under :mod:`cnnkit.cli` (registered here in the order ``--help``
lists them)."""

from __future__ import annotations

import atexit
import gc

import typer

from cnnkit import __version__
from cnnkit.cli import common
from cnnkit.cli import demo as _demo  # noqa: F401  (each module registers its commands on app)
from cnnkit.cli import inspect as _inspect  # noqa: F401
from cnnkit.cli import keras as _keras  # noqa: F401
from cnnkit.cli import predict as _predict  # noqa: F401
from cnnkit.cli import report as _report  # noqa: F401
from cnnkit.cli import train as _train  # noqa: F401
from cnnkit.cli.common import Group, app

__all__ = ["app", "main"]

_ORDER = ("demo", "train", "models", "predict", "explain", "summary", "convert", "keras-explain", "report")
"""The order ``cnnkit --help`` lists the commands in: the workflow's, not the modules' import order."""
app.registered_commands.sort(key=lambda info: _ORDER.index(info.name or info.callback.__name__.replace("_", "-")))


def _version(value: bool) -> None:
    if value:
        print(f"cnnkit {__version__}")
        raise typer.Exit()


@app.callback(cls=Group)
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print cnnkit's version and exit."),
) -> None:
    """Convolutional networks on real-world data: shapes explained, exact masks, a look inside."""




def main() -> None:
    """Entry point of the ``cnnkit`` script."""
    common.FREEZE = True
    atexit.register(gc.freeze)  # at exit, the collector's last pass need not walk every object torch made
    app()
