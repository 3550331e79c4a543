"""Global batches of similarly sized samples, shared among the processes of a distributed run.

``batch_size`` is the *global* batch: every step, the W processes of a run together see one batch of
``batch_size`` samples, and each process gets its share of it. The batches are the same whatever W is, so
training on W processes gives the weights of one process (up to float rounding), given a loss normalised by
the whole global batch (:class:`~cnnkit.train.SegmentationTask` does that) and batch norm synchronised over all
processes (:func:`cnnkit.masked` with ``sync_batchnorm=True``, which the task turns on when W > 1).

How :class:`DistributedBucketSampler` makes the batches of an epoch, on every process alike:

1. :class:`~cnnkit.masking.BucketBatchSampler` groups the samples into batches of similar size, seeded by
   ``seed`` and the epoch (every process computes the same batches; nothing is communicated).
2. The one short batch (``N mod batch_size`` samples, when that is not 0 and ``drop_last=False``) is kept if it
   holds at least half of ``batch_size``. A shorter one is merged with the full batch whose canvas grows least,
   and the merged samples are cut, in size order, into two batches of nearly equal length. Every global batch
   then holds between ``ceil(batch_size / 2)`` and ``batch_size`` samples (or all N when N < batch_size), and
   none is dropped. This rule does not depend on W.
3. Each global batch is sorted by sample area (volume) and cut into W contiguous shares whose lengths differ by
   at most one; process r takes share r. Samples of similar size thus also share a process's canvas.

Every process takes one step per global batch, so all take the same number of steps. A global batch with
fewer samples than processes would leave a process without a sample; that is refused with a
:class:`~cnnkit.ShapeError` (before training, by :func:`~cnnkit.train.fit`) rather than run unequally:
``batch_size >= 2·W − 1`` always suffices.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from cnnkit._checks import check_bool, check_int, is_int
from cnnkit.errors import ShapeError
from cnnkit.masking import BucketBatchSampler
from cnnkit.train.distributed import global_rank, world_size

__all__ = ["DistributedBucketSampler"]


class DistributedBucketSampler(Sampler[list[int]]):
    """Batch sampler for DDP: the same bucketed global batches on every process, each process its share.

    Use it as a ``DataLoader``'s ``batch_sampler`` (with :func:`~cnnkit.collate_padded`), in every process of
    the run, with the same arguments. :func:`~cnnkit.train.fit` sees it and keeps Lightning from putting its own
    ``DistributedSampler`` in its place (``use_distributed_sampler=False``). See the module documentation for
    how the global batches are made and shared.

    Args:
        sizes: Each sample's spatial size, as for :class:`~cnnkit.masking.BucketBatchSampler` (a data set's
            ``sizes``, :func:`~cnnkit.masking.spatial_sizes`, or an (N, D) integer array).
        batch_size: Samples per *global* batch, over all processes together (>= 1).
        shuffle: New batches and a new batch order every epoch; ``False`` for evaluation (the same batches,
            in size order, every epoch).
        drop_last: Leave out ``N mod batch_size`` samples, chosen at random, instead of keeping a short batch.
        seed: The seed of the batches (epoch ``e`` uses the seed and ``e``); the same on every process.
        num_replicas: Number of processes W. Default: the world size of ``torch.distributed`` when a process
            group is initialised (read when iterating), else 1.
        rank: This process's rank in ``[0, W)``. Default: read from ``torch.distributed`` like ``num_replicas``.
        megabatch: Chunk length in batches, as for :class:`~cnnkit.masking.BucketBatchSampler`.

    Attributes:
        sampler: The sampler itself: Lightning calls ``batch_sampler.sampler.set_epoch(epoch)`` at the start of
            every epoch, which is how a resumed run gets the batches of the epoch it resumes.

    Examples:
        >>> sizes = [(8, 8), (30, 30), (9, 8), (31, 29), (16, 16), (15, 17), (8, 9)]
        >>> one = DistributedBucketSampler(sizes, batch_size=4, shuffle=False)
        >>> one.global_batches()
        [[0, 6, 2, 5], [4, 1, 3]]
        >>> [DistributedBucketSampler(sizes, 4, shuffle=False, num_replicas=2, rank=r).shares() for r in (0, 1)]
        [[[0, 2], [4, 3]], [[6, 5], [1]]]
        >>> len(one)
        2
        >>> DistributedBucketSampler(sizes, 2, shuffle=False, num_replicas=3).check_world_size(3)
        Traceback (most recent call last):
        ...
        cnnkit.errors.ShapeError: Every process needs at least one sample of every global batch, but ...
    """

    def __init__(
        self,
        sizes,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        *,
        num_replicas: int | None = None,
        rank: int | None = None,
        megabatch: int = 256,
    ) -> None:
        if not is_int(seed):
            raise ShapeError(f"seed must be an integer (the same on every process). Received seed={seed!r}.")
        shuffle = check_bool(shuffle, "shuffle")
        drop_last = check_bool(drop_last, "drop_last")
        self.buckets = BucketBatchSampler(
            sizes, batch_size, shuffle=shuffle, drop_last=drop_last,
            generator=torch.Generator().manual_seed(int(seed)), megabatch=megabatch,
        )
        self.sizes = self.buckets.sizes
        self.batch_size = self.buckets.batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.epoch = 0
        if num_replicas is not None:
            num_replicas = check_int(num_replicas, "num_replicas")
        if rank is not None and (not is_int(rank) or rank < 0 or (num_replicas is not None and rank >= num_replicas)):
            raise ShapeError(
                f"rank must be an integer in [0, num_replicas) = [0, {num_replicas}). Received rank={rank!r}."
            )
        self.num_replicas = num_replicas
        self.rank = rank
        self._volume = self.sizes.prod(axis=1)

    @property
    def sampler(self) -> DistributedBucketSampler:
        return self

    def set_epoch(self, epoch: int) -> None:
        """Use the batches of ``epoch`` from now on (Lightning calls this at the start of every epoch)."""
        self.buckets.set_epoch(epoch)
        self.epoch = int(epoch)

    def _world(self) -> tuple[int, int]:
        replicas = self.num_replicas if self.num_replicas is not None else world_size()
        rank = self.rank if self.rank is not None else global_rank()
        if not 0 <= rank < replicas:
            raise ShapeError(
                f"rank must be in [0, num_replicas) = [0, {replicas}). Received rank={rank} (from "
                f"{'the argument' if self.rank is not None else 'torch.distributed'})."
            )
        return replicas, rank

    # -- the batches -------------------------------------------------------------------------------------

    def batch_lengths(self) -> list[int]:
        """The lengths of the global batches of an epoch, in increasing order (the same every epoch).

        Examples:
            >>> DistributedBucketSampler([(4, 4)] * 9, batch_size=4).batch_lengths()   # 4, 4, 1 → 2, 3, 4
            [2, 3, 4]
            >>> DistributedBucketSampler([(4, 4)] * 10, batch_size=4).batch_lengths()  # 2 of 4 is kept
            [2, 4, 4]
        """
        n, size = len(self.sizes), self.batch_size
        if n <= size:
            return [n] if not self.drop_last or n == size else []
        full, short = divmod(n, size)
        if short == 0 or self.drop_last:
            return [size] * full
        if 2 * short >= size:
            return [short] + [size] * full
        merged = size + short
        return [merged // 2, merged - merged // 2] + [size] * (full - 1)

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """The global batches of ``epoch`` (default: the current one), the same on every process."""
        batches = self.buckets.batches(self.epoch if epoch is None else epoch)
        short = [i for i, b in enumerate(batches) if len(b) < self.batch_size]
        if len(short) == 1 and len(batches) > 1 and 2 * len(batches[short[0]]) < self.batch_size:
            s = short[0]
            rest = self.sizes[batches[s]]
            canvases = [np.maximum(self.sizes[b].max(axis=0), rest.max(axis=0)).prod() for b in batches]
            growth = [math.inf if i == s else canvases[i] - self.sizes[b].max(axis=0).prod()
                      for i, b in enumerate(batches)]
            partner = int(np.argmin(growth))
            merged = self._by_volume(batches[partner] + batches[s])
            half = len(merged) // 2
            batches[partner], batches[s] = merged[:half], merged[half:]
        return batches

    def _by_volume(self, batch: list[int]) -> list[int]:
        return sorted(batch, key=lambda i: (int(self._volume[i]), i))

    def shares(self, epoch: int | None = None) -> list[list[int]]:
        """This process's share of every global batch of ``epoch`` (default: the current one). One process
        takes each global batch as it is (no sorting: the float sums, and so the weights, of a one-process run stay
        those of :class:`~cnnkit.masking.BucketBatchSampler`'s batches)."""
        replicas, rank = self._world()
        self.check_world_size(replicas)
        if replicas == 1:
            return self.global_batches(epoch)
        out = []
        for batch in self.global_batches(epoch):
            share = np.array_split(np.asarray(self._by_volume(batch), dtype=np.int64), replicas)[rank]
            out.append(share.tolist())
        return out

    def check_world_size(self, num_replicas: int) -> None:
        """Refuse ``num_replicas`` processes if a global batch would leave one of them without a sample."""
        num_replicas = check_int(num_replicas, "num_replicas")
        lengths = self.batch_lengths()
        if lengths and lengths[0] < num_replicas:
            raise ShapeError(
                "Every process needs at least one sample of every global batch, but batch_size="
                f"{self.batch_size} over {len(self.sizes)} samples gives a global batch of {lengths[0]} on "
                f"{num_replicas} processes. Use batch_size >= {2 * num_replicas - 1} (2 × processes − 1), or "
                "fewer processes."
            )

    def __len__(self) -> int:
        return len(self.batch_lengths())

    def __iter__(self) -> Iterator[list[int]]:
        shares = self.shares()
        if self.shuffle:  # outside Lightning, each pass is a new epoch (Lightning sets the epoch itself)
            self.set_epoch(self.epoch + 1)
        yield from shares

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sizes=<{len(self.sizes)} × {self.sizes.shape[1]}-D>, "
            f"batch_size={self.batch_size}, shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed})"
        )
