"""``cnnkit demo``: train a mask-aware segmentation network on the built-in data set and write the report.

:func:`train_demo` generates a training and a held-out split of :class:`~cnnkit.demo.SyntheticLandCover`
(seeds ``2·seed`` and ``2·seed + 1``) and hands them to :func:`cnnkit.train.pipeline.train_segmentation`,
the same pipeline ``cnnkit train`` runs on a user's folder: class weights, rare-class crops, bucketed
masked training, held-out IoU against a majority-class baseline, and the HTML report.
"""

from __future__ import annotations

import os

from cnnkit._checks import check_int
from cnnkit.demo.dataset import CLASS_NAMES, SyntheticLandCover

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_HELDOUT", "DEFAULT_TRAIN", "train_demo"]

DEFAULT_EPOCHS = 30
DEFAULT_TRAIN = 160
DEFAULT_HELDOUT = 32


def train_demo(
    out: str | os.PathLike = "cnnkit-demo",
    *,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    device: str = "cpu",
    n_train: int = DEFAULT_TRAIN,
    n_heldout: int = DEFAULT_HELDOUT,
    progress: bool = True,
    log=print,
    **kwargs,
):
    """Train the demo network on the built-in data set, evaluate it, and write the report into ``out``.

    Args:
        out: Run folder (created). It must be empty or new; pass ``overwrite=True`` to replace an earlier
            run there (only the files cnnkit wrote) or ``resume=True`` to continue it (see
            :func:`~cnnkit.train.pipeline.train_segmentation`).
        epochs: Training epochs (>= 1).
        seed: Seed of the data, the initial weights and the batch order.
        device: ``"cpu"`` or a CUDA device such as ``"cuda"`` / ``"cuda:0"``.
        n_train, n_heldout: Number of training and held-out scenes.
        progress: Show Lightning's progress bar.
        log: Called with each line of text to print.
        kwargs: Further options of :func:`~cnnkit.train.pipeline.train_segmentation` (``width``,
            ``batch_size``, ``lr``, ``crop_size``, ``overwrite``, ``resume`` …).

    Returns:
        A :class:`~cnnkit.train.pipeline.SegmentationRun`.
    """
    from cnnkit.train.pipeline import train_segmentation

    check_int(n_train, "n_train", 2)
    check_int(n_heldout, "n_heldout")
    train = SyntheticLandCover(n_train, seed=2 * seed)
    heldout = SyntheticLandCover(n_heldout, seed=2 * seed + 1)
    log(f"built-in data: seeded synthetic land cover, {train.bands} bands + a validity band (0 under clouds)")
    return train_segmentation(
        train, heldout, len(CLASS_NAMES), out, class_names=CLASS_NAMES, epochs=epochs, seed=seed, device=device,
        title="cnnkit demo: TinySegNet on synthetic land cover with clouds", progress=progress, log=log, **kwargs,
    )
