"""Child process of test_applications.py: load Keras model files with cnnkit where Keras cannot be imported.

Run as ``python _apps_child.py`` with a JSON list of ``[model_path, io_npz_path]`` pairs on stdin; prints
one JSON line per file: ``{"path", "ok", "error", "max_abs_err", "scale", "report_keras_totals"}``.
A ``sys.meta_path`` finder makes every import of tensorflow, keras or tf_keras fail, so a pass proves
that cnnkit needs neither.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import sys

BLOCKED = ("tensorflow", "keras", "tf_keras")


class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"{spec.name} is blocked: cnnkit must load Keras files without it")

    def exec_module(self, module):  # pragma: no cover - create_module raises first
        raise ModuleNotFoundError(module.__name__)


class _Blocker(importlib.abc.MetaPathFinder):
    """Importing tensorflow/keras/tf_keras fails; ``find_spec`` probes (torch._dynamo's) see no origin."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Refuse(), origin=None)
        return None


def main() -> None:
    sys.meta_path.insert(0, _Blocker())
    import numpy as np
    import torch

    import cnnkit.keras as ck

    for model_path, io_path in json.loads(sys.stdin.read()):
        record = {"path": model_path, "ok": False, "error": ""}
        try:
            model, report = ck.load(model_path, channels_last_input=True)
            io = np.load(io_path)
            xs = [torch.from_numpy(io[k]) for k in sorted(k for k in io.files if k.startswith("x"))]
            with torch.no_grad():
                out = model(*xs)
            ref = io["y0"]
            record.update(ok=True, max_abs_err=float(np.abs(out.numpy() - ref).max()),
                          scale=float(np.abs(ref).max()), spread=float(ref.std()),
                          shape_ok=tuple(out.shape) == ref.shape,
                          keras_totals=[report.keras_trainable, report.keras_non_trainable])
        except Exception as error:
            record["error"] = f"{type(error).__name__}: {error}"[:600]
        record["blocked_ok"] = not any(m.split(".")[0] in BLOCKED for m in sys.modules)
        try:
            import tensorflow  # noqa: F401
            record["blocked_ok"] = False
        except ImportError:
            pass
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
