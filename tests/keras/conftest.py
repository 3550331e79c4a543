"""The comparison both Keras fixture suites make: a loaded model against the outputs Keras computed.

Each fixture ``.npz`` holds sample inputs ``x0, x1, …`` (channels-last, as Keras takes them) and the
outputs Keras computed from them, ``y0, y1, …``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch


def _sample(npz: Path) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    data = np.load(npz, allow_pickle=False)
    xs = [torch.from_numpy(data[f"x{i}"]) for i in range(sum(k.startswith("x") for k in data.files))]
    ys = [data[f"y{i}"] for i in range(sum(k.startswith("y") for k in data.files))]
    return xs, ys


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _channels_first(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(-1, 1) if t.dim() >= 3 and t.is_floating_point() else t


class KerasOutputs:
    """``check_channels_last`` / ``check_channels_first``: run the model on the stored inputs, compare."""

    @staticmethod
    def check_channels_last(model, report, npz: Path) -> None:
        """A model loaded with ``channels_last_input=True`` gives Keras's outputs, and the report its shapes."""
        xs, ys = _sample(npz)
        with torch.no_grad():
            outs = _as_tuple(model(*xs))
        assert len(outs) == len(ys)
        for out, y in zip(outs, ys):
            assert tuple(out.shape) == y.shape
            np.testing.assert_allclose(out.numpy(), y, atol=1e-4, rtol=0)
        assert report.output_shapes == tuple(tuple(y.shape[1:]) for y in ys)

    @staticmethod
    def check_channels_first(model, npz: Path) -> None:
        """A model loaded for NCHW gives Keras's outputs moved to channels-first."""
        xs, ys = _sample(npz)
        with torch.no_grad():
            outs = _as_tuple(model(*[_channels_first(x) for x in xs]))
        assert len(outs) == len(ys)
        for out, y in zip(outs, ys):
            np.testing.assert_allclose(out.numpy(), _channels_first(torch.from_numpy(y)).numpy(), atol=1e-4, rtol=0)


@pytest.fixture
def keras_outputs() -> KerasOutputs:
    return KerasOutputs()


# --- loading untrusted files in child processes (time and memory limits) -----------------------------

CHILD = Path(__file__).with_name("_load_child.py")
MEMORY_LIMIT = 3 * 2**29  # RLIMIT_AS of each child: 1.5 GiB above what it maps after its imports
FILE_SECONDS = 10.0  # a file that takes longer is a hang
START_SECONDS = 180.0  # importing torch in the child, on a loaded 2-core machine


def _run_batch(paths: list[str], file_seconds: float) -> tuple[list[dict], list[str]]:
    """Load ``paths`` in one child; returns (records, paths not reached because the child hung or died)."""
    import json
    import selectors
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, str(CHILD), str(MEMORY_LIMIT)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdin.write(json.dumps(paths))
    proc.stdin.close()
    records, current = [], None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_SECONDS
    try:
        while True:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                proc.kill()
                proc.wait()
                records.append({"path": current or paths[0], "outcome": "hang", "error": "", "message":
                                f"no answer within {file_seconds} s", "seconds": file_seconds, "peak_rss_mb": 0})
                break
            line = proc.stdout.readline()
            if not line:
                code = proc.wait()
                if current is not None:
                    records.append({"path": current, "outcome": "crash", "error": f"exit code {code}",
                                    "message": "", "seconds": 0, "peak_rss_mb": 0})
                break
            message = json.loads(line)
            if "start" in message:
                current = message["start"]
                deadline = time.monotonic() + file_seconds
            else:
                records.append(message)
                current = None
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = {r["path"] for r in records}
    return records, [p for p in paths if p not in done]


def load_in_children(paths, *, batch: int = 100, parallel: int = 2, file_seconds: float = FILE_SECONDS) -> list[dict]:
    """Load every file in child processes, ``batch`` files per child; one record per file.

    A file that hangs (more than ``file_seconds``) or kills its child (a segfault) is named by the child's
    "start" line; the rest of its batch is loaded by a fresh child.
    """
    from concurrent.futures import ThreadPoolExecutor

    def run(chunk: list[str]) -> list[dict]:
        out = []
        while chunk:
            records, chunk = _run_batch(chunk, file_seconds)
            out += records
        return out

    paths = [str(p) for p in paths]
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return [r for records in pool.map(run, chunks) for r in records]


@pytest.fixture
def in_children():
    """``load_in_children(paths)``: outcome, time and peak memory of loading each file in a child process."""
    return load_in_children
