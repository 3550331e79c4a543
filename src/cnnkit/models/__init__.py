"""Small ready-made networks: :class:`TinySegNet` (per-pixel classes), :class:`TinyResNet` (one class per image)
and :class:`SeriesSegNet` (per-pixel classes from an image time series with clouds).

They are what ``cnnkit demo`` and ``cnnkit train`` fit, and what the examples and tests use: small enough to
train in seconds on a CPU, and exact on padded batches.

:data:`MODELS` names the builders a run folder may ask for (``cnnkit predict`` builds a run's network from
its manifest by name, never by importing code named in a file).
"""

from cnnkit.models.series import SeriesSegNet
from cnnkit.models.tiny import TinyResNet, TinySegNet

MODELS = {"TinySegNet": TinySegNet, "TinyResNet": TinyResNet, "SeriesSegNet": SeriesSegNet}
"""Builder name → class, for run manifests."""

__all__ = ["MODELS", "SeriesSegNet", "TinyResNet", "TinySegNet"]
