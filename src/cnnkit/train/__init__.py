"""Training that scales: Lightning tasks, a ``fit`` helper with checkpoints and resume, introspection callbacks,
the global batch of a distributed run (:mod:`cnnkit.train.sampling`, :mod:`cnnkit.train.distributed`), and the
run folder's layout (:mod:`cnnkit.train.rundir`). The data → trained network → report pipeline of
``cnnkit demo`` and ``cnnkit train`` is an application: :mod:`cnnkit.app`.

Needs ``lightning>=2.2,<3``, imported on first use of a name below (reading a run folder with
:mod:`cnnkit.train.rundir`, as ``cnnkit predict`` does, does not load it). See ``docs/train.md``.
"""

from __future__ import annotations

from cnnkit._lazy import lazy_names

_NAMES = {
    "EpochLine": "cnnkit.train.callbacks",
    "FilterEvolutionCallback": "cnnkit.train.callbacks",
    "FreezeEncoder": "cnnkit.train.callbacks",
    "encoder_of": "cnnkit.train.callbacks",
    "AtomicCheckpointIO": "cnnkit.train.fit",
    "DistributedBucketSampler": "cnnkit.train.sampling",
    "PRECISIONS": "cnnkit.train.distributed",
    "all_reduce_sum": "cnnkit.train.distributed",
    "broadcast_object": "cnnkit.train.distributed",
    "check_devices": "cnnkit.train.distributed",
    "global_rank": "cnnkit.train.distributed",
    "world_size": "cnnkit.train.distributed",
    "fit": "cnnkit.train.fit",
    "last_checkpoint": "cnnkit.train.rundir",
    "LOSSES": "cnnkit.train.task",
    "OPTIMIZERS": "cnnkit.train.task",
    "SCHEDULERS": "cnnkit.train.task",
    "ClassificationTask": "cnnkit.train.task",
    "SegmentationTask": "cnnkit.train.task",
    "SeriesSegmentationTask": "cnnkit.train.series_task",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_names(__name__, _NAMES, globals())
