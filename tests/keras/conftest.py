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


# --- Keras itself as the oracle, run in a child process ------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


class KerasOracle:
    """One Keras, run as a child process: its interpreter, environment and version.

    ``"keras3"``: Keras 3 with ``KERAS_BACKEND=torch`` (no TensorFlow), from the test extras;
    ``CNNKIT_KERAS3_PYTHON`` names another interpreter (default: this one) and ``CNNKIT_KERAS3_PATH`` an extra
    ``PYTHONPATH`` for it. ``"tf_keras"``: tf-keras 2.21 (TensorFlow's Keras 2) in its own virtual environment
    ``.venv-tf`` (``make test`` builds it; TensorFlow's protobuf and numpy pins do not mix with the main
    environment); ``CNNKIT_TF_KERAS_PYTHON`` names its interpreter. Without it the tf-keras tests FAIL: they
    are evidence that cnnkit reads what tf-keras writes, not optional.
    """

    def __init__(self, kind: str):
        import os
        import sys

        if kind not in ("keras3", "tf_keras"):
            raise ValueError(f"Unknown oracle {kind!r}. Expected one of ('keras3', 'tf_keras').")
        self.kind = kind
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        if kind == "keras3":
            env["KERAS_BACKEND"] = "torch"
            if os.environ.get("CNNKIT_KERAS3_PATH"):
                env["PYTHONPATH"] = os.environ["CNNKIT_KERAS3_PATH"] + os.pathsep + env.get("PYTHONPATH", "")
            self.python = os.environ.get("CNNKIT_KERAS3_PYTHON", sys.executable)
            self.package, self.flags = "keras", []
        else:
            env.pop("PYTHONPATH", None)  # nothing of the main environment leaks into TensorFlow's
            env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
            self.python = os.environ.get("CNNKIT_TF_KERAS_PYTHON", str(ROOT / ".venv-tf" / "bin" / "python"))
            self.package, self.flags = "tf_keras", ["--tf-keras"]
        self.env = env

    def version(self) -> str:
        """The oracle's version; fails (never skips, but for Keras 3 outside CI) saying what to do."""
        import os
        import subprocess

        try:
            probe = subprocess.run(
                [self.python, "-c", f"import importlib.metadata as m; import {self.package}; "
                                    f"print(m.version({self.package.replace('_', '-')!r}))"],
                env=self.env, capture_output=True, text=True, timeout=300)
        except OSError as error:
            probe = subprocess.CompletedProcess([], 1, "", str(error))
        if probe.returncode == 0:
            return probe.stdout.strip().splitlines()[-1]
        if self.kind == "keras3":
            message = ("Keras 3 (the oracle) is not importable: install the test extras (keras) or set "
                       "CNNKIT_KERAS3_PYTHON / CNNKIT_KERAS3_PATH")
            if not os.environ.get("CI"):
                pytest.skip(message)
        else:
            message = (f"the tf-keras oracle cannot be run with {self.python} ({probe.stderr.strip()[-300:]}). "
                       "Build its environment with `make .venv-tf/.installed` (tensorflow-cpu 2.21 and "
                       "tf-keras 2.21 from PyPI, about 2.2 GB; needs the network), or set "
                       "CNNKIT_TF_KERAS_PYTHON to an interpreter that has both")
        pytest.fail(message)

    def run(self, args: list[str], timeout: float = 300):
        import subprocess

        return subprocess.run([self.python, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def generate(self, script: Path, kind: str, names: tuple[str, ...] | None = None, flags=()) -> tuple[Path, dict]:
        """Model files made by ``script`` (now, or cached), and the oracle's own refusals by name.

        The script writes ``OUT/<name>/…`` and prints one JSON line per name with ``"ok"`` and, if not,
        ``"error"``; ``names`` (all the script's cases if ``None``) are passed after ``OUT``. The cache is
        ``~/.cache/cnnkit/keras-apps/<oracle>-<version>-<script hash>/<kind>`` (``CNNKIT_CACHE`` moves it). Named
        cases the oracle refused are asked again on every run (only the files of its successes are kept).
        """
        import hashlib
        import json
        import os

        version = self.version()
        digest = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
        cache = Path(os.environ.get("CNNKIT_CACHE", Path.home() / ".cache" / "cnnkit")) / "keras-apps" / (
            f"{self.kind.replace('_', '-')}-{version}-{digest}") / kind
        done = cache / ".done"
        if names is None:
            missing = [] if done.exists() else None
        else:  # a refusal is asked again on every run: a failure of the child's own (memory, a killed process)
            # must not be kept as the oracle's answer until someone deletes the cache
            missing = [n for n in names if not (cache / n / "io.npz").exists()]
            for n in missing:
                (cache / n / "error.txt").unlink(missing_ok=True)
        if missing is None or missing:
            proc = self.run([str(script), *self.flags, *flags, str(cache), *(missing or [])], timeout=3600)
            records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
            assert records, f"the {self.kind} oracle gave no answer:\n{proc.stderr[-3000:]}"
            for record in records:
                if not record["ok"]:
                    name = record.get("family", record.get("case"))
                    (cache / name).mkdir(parents=True, exist_ok=True)
                    (cache / name / "error.txt").write_text(record["error"])
            if names is None and proc.returncode == 0:
                done.write_text("\n".join(r.get("family", r.get("case")) for r in records))
        if names is None:
            names = tuple(done.read_text().split()) if done.exists() else tuple(
                sorted(p.name for p in cache.iterdir() if p.is_dir()))
        errors = {n: (cache / n / "error.txt").read_text() for n in names if (cache / n / "error.txt").exists()}
        return cache, errors


@pytest.fixture(scope="session")
def keras_oracle():
    """``keras_oracle("keras3" | "tf_keras")``: a :class:`KerasOracle`."""
    return KerasOracle
