"""Training that scales: Lightning tasks, a ``fit`` helper with checkpoints and resume, introspection callbacks.

Needs ``lightning>=2.2,<3``. See ``docs/train.md``.
"""

from cnnkit.train.callbacks import FilterEvolutionCallback
from cnnkit.train.fit import AtomicCheckpointIO, fit, last_checkpoint
from cnnkit.train.task import LOSSES, OPTIMIZERS, ClassificationTask, SegmentationTask

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "AtomicCheckpointIO",
    "ClassificationTask",
    "FilterEvolutionCallback",
    "SegmentationTask",
    "fit",
    "last_checkpoint",
]
