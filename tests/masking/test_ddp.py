"""Masked batch norm across processes: a 2-process gloo run equals one process on the union of batches."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cnnkit.masking import masked, pad_batch


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    sizes = [(5, 9), (8, 3), (7, 7), (4, 6)]
    return [torch.randn(2, h, w, generator=g) for h, w in sizes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = _model().train()
        images = _images()[rank * 2:(rank + 1) * 2]
        out = masked(model, sync_batchnorm=True)(pad_batch(images))
        (out.data ** 2).sum().backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        torch.save({"outputs": [t.detach() for t in out.unpad()], "grads": grads,
                    "running_mean": model[1].running_mean, "running_var": model[1].running_var},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # nobody leaves while the other still talks
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_sync_equals_single_process_on_the_union(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    model = _model().train()
    images = _images()
    out = masked(model)(pad_batch(images))  # one process, all four samples
    (out.data ** 2).sum().backward()

    got = ranks[0]["outputs"] + ranks[1]["outputs"]
    for a, b in zip(got, out.unpad()):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], model[1].running_mean)
        torch.testing.assert_close(r["running_var"], model[1].running_var)
    # Each process's loss covers its own samples; the statistics are shared, so the per-process weight
    # gradients add up to the single-process gradient of the whole loss.
    for name, p in model.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name] + ranks[1]["grads"][name], p.grad, atol=1e-4, rtol=1e-4)
