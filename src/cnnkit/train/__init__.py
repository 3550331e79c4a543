"""Training that scales: Lightning tasks, a ``fit`` helper with checkpoints and resume, introspection callbacks,
and the run folder's layout (:mod:`cnnkit.train.rundir`). The data → trained network → report pipeline of
``cnnkit demo`` and ``cnnkit train`` is an application: :mod:`cnnkit.app`.

Needs ``lightning>=2.2,<3``. See ``docs/train.md``.
"""

from cnnkit.train.callbacks import FilterEvolutionCallback
from cnnkit.train.fit import AtomicCheckpointIO, fit, last_checkpoint
from cnnkit.train.task import LOSSES, OPTIMIZERS, SCHEDULERS, ClassificationTask, SegmentationTask

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "AtomicCheckpointIO",
    "ClassificationTask",
    "FilterEvolutionCallback",
    "SegmentationTask",
    "fit",
    "last_checkpoint",
]
