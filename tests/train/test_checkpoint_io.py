"""AtomicCheckpointIO(background=True), fit's checkpoint writer: a point-in-time copy written in a thread."""

from __future__ import annotations

import threading

import pytest
import torch

from cnnkit.errors import ArgumentTypeError
from cnnkit.train.fit import AtomicCheckpointIO


def test_background_write_is_the_state_at_save_time_and_complete_after_teardown(tmp_path, monkeypatch):
    writer = AtomicCheckpointIO(background=True)
    gate, write = threading.Event(), writer._write
    monkeypatch.setattr(writer, "_write", lambda *args: (gate.wait(10), write(*args)))  # held until the changes
    weight, moments = torch.arange(6.0).view(2, 3), [torch.ones(4), {"step": torch.tensor(3)}]
    checkpoint = {"state_dict": {"w": weight}, "optimizer": moments, "epoch": 2}
    expected = {"state_dict": {"w": weight.clone()}, "optimizer": [torch.ones(4), {"step": torch.tensor(3)}],
                "epoch": 2}
    writer.save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    weight.mul_(-1)  # the training thread goes on changing its tensors in place
    moments[0].add_(5)
    moments[1]["step"].add_(1)
    gate.set()
    writer.save_checkpoint({"other": torch.zeros(1)}, tmp_path / "best.ckpt")  # waits for the first write
    assert writer.load_checkpoint(tmp_path / "last.ckpt")["epoch"] == 2
    writer.teardown()
    got = torch.load(tmp_path / "last.ckpt")
    assert torch.equal(got["state_dict"]["w"], expected["state_dict"]["w"])
    assert torch.equal(got["optimizer"][0], expected["optimizer"][0])
    assert int(got["optimizer"][1]["step"]) == 3 and got["epoch"] == 2
    assert torch.equal(torch.load(tmp_path / "best.ckpt")["other"], torch.zeros(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary file left


def test_a_failed_background_write_is_raised_and_leaves_no_file(tmp_path):
    (tmp_path / "checkpoints").write_text("a file where the folder should be")
    writer = AtomicCheckpointIO(background=True)
    writer.save_checkpoint({"w": torch.ones(2)}, tmp_path / "checkpoints" / "last.ckpt")  # returns at once
    with pytest.raises(OSError):
        writer.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    with pytest.raises(ArgumentTypeError, match=r"background must be True or False. Received background=1"):
        AtomicCheckpointIO(background=1)
