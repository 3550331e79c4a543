"""Child process of the output-folder tests: ``cnnkit.app.predict.predict_files`` with one seeded network, killed,
held or limited on request.

Run as ``python _predict_child.py`` with a JSON object on stdin: ``inputs``, ``out``, ``options`` (keyword arguments
of ``predict_files``) and at most one of

* ``kill_after``: SIGKILL itself at that progress call (mid-scene, as ``kill -9`` would);
* ``hold``: ``[started, go]`` — at progress call ``hold_at`` (default 1) create the file ``started`` and wait until
  ``go`` exists or the parent kills it (the run holds the output folder's lock meanwhile);
* ``file_size``: ``RLIMIT_FSIZE`` in bytes, with ``SIGXFSZ`` ignored (writes past it fail with ``EFBIG``, a full disk).

It prints one JSON line: ``{"outcome": "ok" | "cnnkit" | "raw", "message": ...}``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time


def make_predictor():
    """The network every output-folder test uses: TinySegNet on 2 bands (+ validity), 3 classes, seeded."""
    import torch

    from cnnkit.models import TinySegNet
    from cnnkit.predict import Predictor, Preprocessing

    torch.manual_seed(0)
    return Predictor(TinySegNet(3, 3), Preprocessing(mean=(50.0, 50.0), std=(30.0, 30.0), multiple_of=4),
                     ("water", "field", "town"))


def main() -> None:
    job = json.loads(sys.stdin.read())
    from cnnkit.app.predict import predict_files
    from cnnkit.errors import CnnkitError

    predictor = make_predictor()
    calls = {"n": 0}

    def progress(images: int, pixels: int) -> None:
        calls["n"] += 1
        if job.get("kill_after") == calls["n"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if job.get("hold") and calls["n"] == job.get("hold_at", 1):
            started, go = job["hold"]
            open(started, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.02)

    if job.get("file_size"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (job["file_size"], job["file_size"]))
    try:
        run = predict_files(predictor, job["inputs"], job["out"], progress=progress, **job.get("options", {}))
        record = {"outcome": "ok", "message": run.summary(predictor.class_names)}
    except CnnkitError as error:
        record = {"outcome": "cnnkit", "message": str(error)}
    except BaseException as error:  # a raw error is a bug the tests report
        record = {"outcome": "raw", "message": f"{type(error).__name__}: {error}"}
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
