"""Small ready-made networks: :class:`TinySegNet` (per-pixel classes) and :class:`TinyResNet` (one class per image).

They are what ``cnnkit demo`` and ``cnnkit train`` fit, and what the examples and tests use: small enough to
train in seconds on a CPU, and built only from layers :func:`cnnkit.masked` runs exactly on padded batches.
"""

from cnnkit.models.tiny import TinyResNet, TinySegNet

__all__ = ["TinyResNet", "TinySegNet"]
