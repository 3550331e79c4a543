"""The networks a spec may name, with their parameter counts, as rows for a ``cnnkit models`` table.

Counts are taken on the meta device (nothing allocated), for the input channels and classes asked for, so they
are the numbers the user's own run would have. Rendering the rows is the command line's job.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.models.factory import count_parameters
from cnnkit.models.registry import family_of, list_architectures, smp_architectures
from cnnkit.models.spec import LIBRARIES, MAX_CHANNELS, MAX_CLASSES, ModelSpec, check_count

__all__ = ["ModelRow", "describe_models"]


@dataclass(frozen=True)
class ModelRow:
    """One network of :func:`describe_models`.

    Attributes:
        library, architecture, encoder: As in a :class:`~cnnkit.models.ModelSpec`.
        parameters: The parameter count for the asked channels and classes; ``None`` if it does not build.
        family: Its row of :data:`~cnnkit.models.FAMILY_DEFAULTS`.
        note: Why it does not build (``parameters`` is ``None``), else empty.
    """

    library: str
    architecture: str
    encoder: str | None
    parameters: int | None
    family: str
    note: str = ""


def describe_models(in_channels: int = 4, num_classes: int = 5, *, encoders: Sequence[str] | None = None,
                    libraries: Sequence[str] = LIBRARIES) -> list[ModelRow]:
    """A row per network: cnnkit's, the registered ones, and smp's architectures (imports smp for those).

    Args:
        in_channels, num_classes: The counts are for these.
        encoders: smp encoders to list each architecture with; default: each architecture's own default encoder
            in smp (``resnet34`` for most, a ViT for DPT). A pair that does not build gets a row with a note.
        libraries: Which of ``"cnnkit"``, ``"user"``, ``"smp"`` to list.

    Examples:
        >>> [(r.architecture, r.parameters, r.family) for r in describe_models(4, 5, libraries=["cnnkit"])]
        [('TinySegNet', 14821, 'cnnkit'), ('TinyResNet', 78981, 'cnnkit'), ('SeriesSegNet', 65701, 'cnnkit-series'),
         ('UTAE', 94789, 'attention-series')]
    """
    check_count(in_channels, "in_channels", MAX_CHANNELS)
    check_count(num_classes, "num_classes", MAX_CLASSES)
    unknown = [library for library in libraries if library not in LIBRARIES]
    if isinstance(libraries, str) or unknown:
        raise ShapeError(f"libraries must be a list of {LIBRARIES!r}. Received libraries={libraries!r}.")
    names = list_architectures(smp="smp" in libraries)
    specs = [ModelSpec(library, name) for library in ("cnnkit", "user") if library in libraries
             for name in names[library]]
    for name, network in (smp_architectures() if "smp" in libraries else {}).items():
        chosen = encoders if encoders is not None else [inspect.signature(network).parameters["encoder_name"].default]
        specs += [ModelSpec("smp", name, encoder) for encoder in chosen]
    rows = []
    for spec in specs:
        try:
            count, note = count_parameters(spec, in_channels=in_channels, num_classes=num_classes), ""
        except CnnkitError as error:
            count, note = None, str(error).splitlines()[0]
        rows.append(ModelRow(spec.library, spec.architecture, spec.encoder, count, family_of(spec), note))
    return rows
