"""DistributedBucketSampler: the same global batches on every rank, each rank its share, every sample once per
epoch, the same number of steps everywhere — properties over random sizes, batch sizes and world sizes, checked
without starting processes (``num_replicas`` / ``rank`` given)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from cnnkit.errors import ShapeError
from cnnkit.masking import BucketBatchSampler, collate_padded
from cnnkit.train import DistributedBucketSampler


@st.composite
def setups(draw):
    d = draw(st.integers(1, 2))
    n = draw(st.integers(1, 60))
    sizes = draw(st.lists(st.tuples(*[st.integers(1, 40)] * d), min_size=n, max_size=n))
    return {
        "sizes": sizes,
        "batch_size": draw(st.integers(1, 12)),
        "shuffle": draw(st.booleans()),
        "drop_last": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
        "world": draw(st.integers(1, 5)),
        "epoch": draw(st.integers(0, 3)),
    }


def _samplers(setup: dict) -> list[DistributedBucketSampler]:
    args = {k: setup[k] for k in ("batch_size", "shuffle", "drop_last", "seed")}
    return [DistributedBucketSampler(setup["sizes"], num_replicas=setup["world"], rank=r, **args)
            for r in range(setup["world"])]


@settings(max_examples=80, deadline=None)
@given(setups())
def test_shares_make_the_global_batches_and_every_sample_is_seen_once(setup):
    world, epoch, size = setup["world"], setup["epoch"], setup["batch_size"]
    ranks = _samplers(setup)
    lengths = ranks[0].batch_lengths()
    if lengths and lengths[0] < world:  # a rank would get nothing: refused, not run unequally
        with pytest.raises(ShapeError, match=f"batch_size >= {2 * world - 1}"):
            ranks[0].shares(epoch)
        return
    one = DistributedBucketSampler(setup["sizes"], num_replicas=1, rank=0,
                                   **{k: setup[k] for k in ("batch_size", "shuffle", "drop_last", "seed")})
    global_batches = one.global_batches(epoch)
    # one process: its share is the global batch (in size order)
    assert [sorted(b) for b in one.shares(epoch)] == [sorted(b) for b in global_batches]
    shares = [s.shares(epoch) for s in ranks]
    # all ranks take the same number of steps: one per global batch, as len() says
    assert {len(s) for s in shares} == {len(global_batches)} == {len(ranks[0])}
    assert sorted(len(b) for b in global_batches) == lengths
    for step, batch in enumerate(global_batches):
        parts = [s[step] for s in shares]
        assert sorted(i for p in parts for i in p) == sorted(batch)  # the union is the global batch
        assert min(len(p) for p in parts) >= 1 and max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
        assert len(batch) <= size
    seen = Counter(i for s in shares for batch in s for i in batch)
    n = len(setup["sizes"])
    if setup["drop_last"]:
        assert set(seen.values()) <= {1} and len(seen) == n - n % size
    else:
        assert seen == Counter(range(n))  # every sample exactly once, none dropped
        if n >= size:
            assert min(lengths) >= math.ceil(size / 2)  # the short batch is never tiny


@settings(max_examples=30, deadline=None)
@given(setups())
def test_iterating_gives_the_shares_of_the_epoch_lightning_sets(setup):
    setup = {**setup, "batch_size": max(setup["batch_size"], 2 * setup["world"] - 1)}
    ranks = _samplers(setup)
    for sampler in ranks:
        sampler.sampler.set_epoch(setup["epoch"])  # what Lightning calls every epoch
        assert list(sampler) == sampler.shares(setup["epoch"])


def test_epochs_differ_and_the_same_seed_gives_the_same_batches():
    g = torch.Generator().manual_seed(0)
    sizes = [tuple(s) for s in torch.randint(4, 64, (40, 2), generator=g).tolist()]
    a = DistributedBucketSampler(sizes, batch_size=6, seed=11, num_replicas=2, rank=0)
    b = DistributedBucketSampler(sizes, batch_size=6, seed=11, num_replicas=2, rank=0)
    assert a.global_batches(0) == b.global_batches(0)  # what another process computes
    assert a.global_batches(0) != a.global_batches(1)
    assert a.global_batches(0) != DistributedBucketSampler(sizes, batch_size=6, seed=12).global_batches(0)
    # outside Lightning each pass is the next epoch, like BucketBatchSampler
    assert list(a) == b.shares(0) and list(a) == b.shares(1)
    fixed = DistributedBucketSampler(sizes, batch_size=6, shuffle=False)
    assert fixed.global_batches(0) == fixed.global_batches(3)


def test_global_batches_are_bucketed_like_bucket_batch_sampler():
    g = torch.Generator().manual_seed(1)
    sizes = [tuple(s) for s in torch.randint(4, 64, (48, 2), generator=g).tolist()]
    ours = DistributedBucketSampler(sizes, batch_size=8, seed=3)
    theirs = BucketBatchSampler(sizes, 8, generator=torch.Generator().manual_seed(3))
    assert ours.global_batches(2) == theirs.batches(2)  # 48 = 6 × 8: nothing to merge, the same batches


def test_short_batch_rule():
    sizes = [(4, 4)] * 9 + [(40, 40)]
    # 10 samples, batch 4: two full batches and 2 left; 2 is half of 4, kept
    assert DistributedBucketSampler(sizes, 4).batch_lengths() == [2, 4, 4]
    # 9 samples, batch 4: 1 left is merged with a full batch and cut into 2 + 3
    s = DistributedBucketSampler(sizes[:9], 4, num_replicas=2, rank=1)
    assert s.batch_lengths() == [2, 3, 4] and sorted(len(b) for b in s.global_batches()) == [2, 3, 4]
    assert DistributedBucketSampler(sizes[:3], 4).batch_lengths() == [3]  # N < batch_size: one batch
    assert DistributedBucketSampler(sizes[:3], 4, drop_last=True).batch_lengths() == []
    assert DistributedBucketSampler(sizes, 4, drop_last=True).batch_lengths() == [4, 4]


def test_shares_split_by_size():
    sizes = [(10, 10), (2, 2), (9, 9), (3, 3)]
    shares = [DistributedBucketSampler(sizes, 4, shuffle=False, num_replicas=2, rank=r).shares()[0] for r in (0, 1)]
    assert shares == [[1, 3], [2, 0]]  # the two small samples on one rank, the two large on the other


def test_errors():
    with pytest.raises(ShapeError, match="seed must be an integer"):
        DistributedBucketSampler([(2, 2)], 1, seed=1.5)
    with pytest.raises(ShapeError, match=r"rank must be an integer in \[0, num_replicas\) = \[0, 2\)"):
        DistributedBucketSampler([(2, 2)], 1, num_replicas=2, rank=2)
    with pytest.raises(ShapeError, match="num_replicas must be an integer >= 1"):
        DistributedBucketSampler([(2, 2)], 1, num_replicas=0)
    with pytest.raises(ShapeError, match="batch_size must be a positive integer"):
        DistributedBucketSampler([(2, 2)], 0)
    with pytest.raises(ShapeError, match="shuffle must be True or False"):
        DistributedBucketSampler([(2, 2)], 1, shuffle="yes")
    with pytest.raises(ShapeError, match=r"gives a global batch of 2 on 3 processes\. Use batch_size >= 5"):
        DistributedBucketSampler([(2, 2)] * 8, 3).check_world_size(3)


def test_a_data_loader_yields_padded_shares():
    images = [torch.full((1, h, w), float(i)) for i, (h, w) in enumerate([(3, 5), (6, 2), (4, 4), (5, 5), (2, 3)])]
    data = [(x, torch.zeros(x.shape[1:], dtype=torch.long)) for x in images]
    sampler = DistributedBucketSampler([tuple(x.shape[1:]) for x in images], 4, num_replicas=2, rank=1)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate_padded)
    assert len(loader) == 2  # 5 samples, batch 4: 1 left, merged and cut into 2 + 3
    batches = list(loader)
    got = sorted(int(v) for batch, _ in batches for v in batch.data[:, 0, 0, 0])
    expected = sorted(i for share in sampler.shares(0) for i in share)
    assert got == expected and len(got) == 2  # rank 1's shares of 2 and 3 samples: 1 + 1
    assert repr(sampler) == (
        "DistributedBucketSampler(sizes=<5 × 2-D>, batch_size=4, shuffle=True, drop_last=False, seed=0)"
    )
