"""Batches of similarly sized samples, so that padding them to one canvas wastes few pixels.

A batch padded by :func:`cnnkit.masking.pad_batch` is as large as the elementwise maximum of its samples'
sizes; with sizes spread over a decade, random batches are mostly padding (73 % for 2000 2-D sizes drawn
log-uniformly from 32–256 with 8 samples a batch). :class:`BucketBatchSampler` groups samples of similar
size instead (9.1 % on the same sizes, see ``benchmarks/bench_bucketing.py``), and
:func:`padding_fraction` measures the share for any list of batches.

How the grouping works, per epoch:

1. The indices are shuffled (``shuffle=True``) and cut into chunks ("megabatches") of
   ``megabatch × batch_size`` samples; only samples of one chunk can share a batch, so a smaller
   ``megabatch`` gives more varied batches from epoch to epoch and a larger one less padding.
2. Each chunk is split like a k-d tree on the logarithm of the sizes: the dimension whose sizes span
   the largest ratio is cut at a multiple of ``batch_size`` near its median, until every part is one
   batch. In one dimension this is simply sorting by size.
3. A local search swaps samples between neighbouring batches while a swap shrinks the sum of the
   two canvases (a few vectorised rounds).
4. The batch order is shuffled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from numbers import Integral

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from cnnkit._checks import is_int
from cnnkit._random import EpochSeeded
from cnnkit.errors import ShapeError

__all__ = ["BucketBatchSampler", "padding_fraction"]

_NEIGHBOURS = 8  # batches on each side (in k-d order) a batch may swap samples with
_ROUNDS = 30  # upper bound on local-search rounds per chunk


def _as_sizes(sizes, name: str = "sizes") -> np.ndarray:
    """Spatial sizes as an (N, D) int64 array of positive integers; one clear error otherwise."""
    if isinstance(sizes, Tensor):
        sizes = sizes.detach().cpu().numpy()
    if isinstance(sizes, np.ndarray):
        array = sizes
    else:
        if not isinstance(sizes, Iterable) or isinstance(sizes, (str, bytes)):
            raise ShapeError(
                f"{name} must be a sequence of spatial sizes (ints or tuples of ints), one per sample. "
                f"Received {name}={sizes!r}."
            )
        rows = [
            tuple(s.tolist()) if isinstance(s, (np.ndarray, Tensor)) else tuple(s) if isinstance(s, Sequence) else s
            for s in sizes
        ]
        if rows and all(is_int(r) for r in rows):
            rows = [(r,) for r in rows]
        lengths = {len(r) if isinstance(r, tuple) else None for r in rows}
        if len(lengths) > 1 or None in lengths:
            bad = next((i, r) for i, r in enumerate(rows) if not isinstance(r, tuple) or len(r) != len(rows[0]))
            raise ShapeError(
                f"{name} must hold one int or one tuple of the same length per sample. "
                f"Received {name}[0]={rows[0]!r} and {name}[{bad[0]}]={bad[1]!r}."
            )
        if not all(isinstance(v, (Integral, np.integer)) and not isinstance(v, bool) for r in rows for v in r):
            raise ShapeError(f"{name} must contain integers only. Received {name}={list(sizes)[:4]!r}...")
        array = np.asarray(rows, dtype=np.int64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ShapeError(
            f"{name} must have shape (N, D) with N >= 1 samples and D >= 1 dimensions. "
            f"Received shape {tuple(array.shape)}."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise ShapeError(f"{name} must contain integers. Received dtype {array.dtype}.")
    if (array < 1).any():
        row = int(np.argwhere(array < 1)[0, 0])
        raise ShapeError(f"{name} must be positive. Received {name}[{row}]={tuple(array[row].tolist())}.")
    return array.astype(np.int64)


def spatial_sizes(dataset) -> list[tuple[int, ...]]:
    """Each sample's spatial size, for :class:`BucketBatchSampler`: the data set's ``sizes`` if it has them,
    else the shape of every item's label (one pass over the data).

    Examples:
        >>> spatial_sizes([(torch.zeros(3, 4, 5), torch.zeros(4, 5)), (torch.zeros(3, 2, 2), torch.zeros(2, 2))])
        [(4, 5), (2, 2)]
    """
    sizes = getattr(dataset, "sizes", None)
    if sizes is None:
        sizes = [tuple(torch.as_tensor(label).shape) for _, label in dataset]
    return [tuple(int(v) for v in size) for size in sizes]


def padding_fraction(batches: Iterable[Sequence[int]], sizes) -> float:
    """Share of padded positions when each batch is padded to the elementwise maximum of its sizes.

    ``1 − Σ valid positions / Σ (batch length × canvas volume)`` over all batches; for one batch this is
    :meth:`PaddedBatch.padding_fraction`.

    Args:
        batches: Lists of sample indices, e.g. ``list(BucketBatchSampler(...))``.
        sizes: Each sample's spatial size: a sequence of ints or tuples, or an (N, D) tensor or array.

    Examples:
        >>> padding_fraction([[0, 1]], [(2, 4), (4, 2)])  # canvas 4×4: 16 of 32 positions are padding
        0.5
        >>> round(padding_fraction([[0, 1], [2]], [(2, 4), (4, 2), (4, 4)]), 3)  # 16 of 48
        0.333
    """
    table = _as_sizes(sizes)
    valid = 0
    total = 0
    count = 0
    if not isinstance(batches, Iterable):
        raise ShapeError(f"batches must be an iterable of lists of sample indices. Received {type(batches).__name__}.")
    for b, batch in enumerate(batches):
        items = list(batch) if isinstance(batch, Iterable) else None
        if items is None or not all(isinstance(i, (Integral, np.integer)) and not isinstance(i, bool) for i in items):
            raise ShapeError(f"batches must hold lists of integer sample indices. Received batches[{b}]={batch!r}.")
        index = np.asarray(items, dtype=np.int64)
        if index.size == 0:
            raise ShapeError(f"batches must not contain an empty batch. Received an empty batches[{b}].")
        if index.min() < 0 or index.max() >= len(table):
            raise ShapeError(
                f"batches must index into sizes (0 ≤ index < {len(table)}). Received batches[{b}]={list(batch)!r}."
            )
        rows = table[index]
        valid += int(rows.prod(axis=1).sum())
        total += len(index) * int(rows.max(axis=0).prod())
        count += 1
    if count == 0:
        raise ShapeError("batches must contain at least one batch. Received none.")
    return 1.0 - valid / total


def _kd_groups(order: np.ndarray, logs: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split ``order`` (sample ids) into batches like a k-d tree on ``logs`` (log sizes), level by level.

    Each part is cut at ``⌊⌈count / batch_size⌉ / 2⌋ · batch_size`` along the dimension with the widest
    log range, so every batch is full except at most one (the remainder). Ties keep their order in
    ``order``, which is how a shuffled ``order`` varies the grouping.
    """
    n = len(order)
    starts = np.zeros(1, dtype=np.int64)
    while True:
        counts = np.diff(np.append(starts, n))
        split = counts > batch_size
        if not split.any():
            break
        segment = np.repeat(np.arange(len(starts)), counts)
        values = logs[order]
        spread = np.maximum.reduceat(values, starts, axis=0) - np.minimum.reduceat(values, starts, axis=0)
        dim = spread.argmax(axis=1)
        key = np.where(split[segment], values[np.arange(n), dim[segment]], 0.0)
        order = order[np.lexsort((key, segment))]
        left = (-(-counts // batch_size) // 2) * batch_size
        starts = np.sort(np.concatenate([starts, starts[split] + left[split]]))
    return np.split(order, starts[1:])


def _swap_search(groups: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Swap samples between nearby batches (rows of ``groups``) while a swap lowers Σ canvas volume.

    Each round evaluates, for every pair of batches at most ``_NEIGHBOURS`` apart, every swap of one
    sample of each (using the largest size without that sample, from the two largest), and applies the
    best improving swaps of disjoint pairs.
    """
    count, width = groups.shape
    if count < 2 or width < 2:  # one-sample batches: a swap changes nothing
        return groups
    groups = groups.copy()
    first = np.concatenate([np.arange(count - j) for j in range(1, min(_NEIGHBOURS, count - 1) + 1)])
    second = np.concatenate([np.arange(j, count) for j in range(1, min(_NEIGHBOURS, count - 1) + 1)])
    for _ in range(_ROUNDS):
        values = table[groups].astype(np.float64)  # (count, width, D)
        top = np.sort(values, axis=1)
        largest, runner_up = top[:, -1:, :], top[:, -2:-1, :]
        without = np.where(values == largest, runner_up, largest)  # max of the batch without each sample
        volume = largest[:, 0, :].prod(axis=1)
        a_without, b_with = without[first][:, :, None, :], values[second][:, None, :, :]
        b_without, a_with = without[second][:, None, :, :], values[first][:, :, None, :]
        new = np.maximum(a_without, b_with).prod(axis=-1) + np.maximum(b_without, a_with).prod(axis=-1)
        delta = (new - (volume[first] + volume[second])[:, None, None]).reshape(len(first), -1)
        best = delta.argmin(axis=1)
        gain = delta[np.arange(len(first)), best]
        used = np.zeros(count, dtype=bool)
        swaps = 0
        for p in np.argsort(gain, kind="stable"):
            if gain[p] >= -0.5:  # volumes are integers: below this, nothing improves
                break
            a, b = first[p], second[p]
            if used[a] or used[b]:
                continue
            used[a] = used[b] = True
            i, j = divmod(int(best[p]), width)
            groups[a, i], groups[b, j] = groups[b, j], groups[a, i]
            swaps += 1
        if swaps == 0:
            break
    return groups


class BucketBatchSampler(EpochSeeded, Sampler[list[int]]):
    """Yield batches of indices whose samples have similar spatial sizes, for little padding.

    Use it as a ``DataLoader``'s ``batch_sampler`` together with :func:`cnnkit.masking.collate_padded`.
    Every index appears exactly once per epoch; with ``shuffle=True`` each pass over the sampler is a
    new epoch (new chunks, new batch order), reproducible from ``generator``'s state at construction.
    Under DDP, give every process a generator with the same seed and call :meth:`set_epoch` each epoch.

    Args:
        sizes: Each sample's spatial size, e.g. ``[img.shape[1:] for img in images]``, a dataset's
            ``sizes`` attribute, or an (N, D) integer tensor or array. Ints are 1-D sizes.
        batch_size: Samples per batch (every batch has this many, except one when ``drop_last=False``
            and ``batch_size`` does not divide N).
        shuffle: Shuffle which samples meet in a chunk and the batch order. ``False`` gives the same
            batches in size order every epoch (for evaluation).
        drop_last: Leave out ``N mod batch_size`` samples (chosen at random; the last indices when
            ``shuffle=False``) instead of yielding one short batch.
        generator: ``torch.Generator`` the epoch seed is drawn from once, at construction (default: the
            global torch RNG).
        megabatch: Chunk length in batches (keyword only, default 256). Samples of different chunks never
            share a batch: larger is tighter, smaller is more random.

    Examples:
        >>> sizes = [(30, 40), (120, 90), (32, 41), (118, 95), (60, 60), (64, 58)]
        >>> sampler = BucketBatchSampler(sizes, batch_size=2, shuffle=False)
        >>> list(sampler)
        [[0, 2], [4, 5], [3, 1]]
        >>> len(sampler), round(padding_fraction(sampler, sizes), 3)
        (3, 0.038)
    """

    def __init__(
        self,
        sizes,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        *,
        megabatch: int = 256,
    ) -> None:
        self.sizes = _as_sizes(sizes)
        if not is_int(batch_size) or batch_size < 1:
            raise ShapeError(f"batch_size must be a positive integer. Received batch_size={batch_size!r}.")
        if not is_int(megabatch) or megabatch < 1:
            raise ShapeError(f"megabatch must be a positive integer. Received megabatch={megabatch!r}.")
        if not isinstance(shuffle, bool) or not isinstance(drop_last, bool):
            raise ShapeError(
                f"shuffle and drop_last must be booleans. Received shuffle={shuffle!r}, drop_last={drop_last!r}."
            )
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.megabatch = int(megabatch)
        self._draw_seed(generator)

    def __len__(self) -> int:
        n = len(self.sizes)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The batches of ``epoch`` (default: the current one) without advancing the epoch."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.sizes)
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=g).numpy() if self.shuffle else np.arange(n)
        if self.drop_last:
            order = order[: n - n % self.batch_size]
        logs = np.log(self.sizes.astype(np.float64))
        chunk = self.megabatch * self.batch_size
        full: list[np.ndarray] = []
        short: list[np.ndarray] = []
        for start in range(0, len(order), chunk):
            groups = _kd_groups(order[start : start + chunk], logs, self.batch_size)
            whole = [g_ for g_ in groups if len(g_) == self.batch_size]
            short += [g_ for g_ in groups if 0 < len(g_) < self.batch_size]
            if whole:
                stacked = np.stack(whole)
                if self.sizes.shape[1] > 1:  # sorting is already optimal in 1-D
                    stacked = _swap_search(stacked, self.sizes)
                full += list(stacked)
        out = [b.tolist() for b in full + short]
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=g).tolist()]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches()
        if self.shuffle:
            self.epoch += 1
        yield from batches

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sizes=<{len(self.sizes)} × {self.sizes.shape[1]}-D>, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
            f"megabatch={self.megabatch})"
        )
