"""Child process of the raster fuzz suite: ``cnnkit predict`` (``predict_files``) on many damaged files, one
interpreter for all of them.

Run as ``python _fuzz_child.py LIMIT_BYTES`` with a JSON list of ``[file, output folder]`` pairs on stdin. It
imports torch and cnnkit once, predicts one clean file (warm-up), limits its address space to ``LIMIT_BYTES`` above
what it then maps (``RLIMIT_AS``), and for each file prints ``{"start": file}`` before and a record after::

    {"path", "outcome": "ok" | "cnnkit" | "raw", "error", "message", "seconds", "peak_rss_mb", "rss_mb",
     "declared": [bands, height, width] | null, "pixels": pixels predicted with data}

``outcome`` is ``"cnnkit"`` for a ``CnnkitError`` (a clean refusal) and ``"raw"`` for any other exception (a bug).
``peak_rss_mb`` is the peak resident memory above the warmed-up interpreter, ``rss_mb`` the absolute peak, both in
MiB from this process's own ``VmHWM`` (not ``ru_maxrss``, which on Linux keeps the high-water mark of the process
that forked this one: a child of a 2 GB pytest process reported 2 GB before it had done anything).
"""

from __future__ import annotations

import json
import resource
import sys
import time
import warnings


def _peak_mib() -> float:
    """This process's peak resident memory (``VmHWM``, KiB in /proc/self/status) in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def main() -> None:
    limit = int(sys.argv[1])
    jobs = json.loads(sys.stdin.read())
    warnings.simplefilter("ignore")
    import torch

    from cnnkit.app.predict import predict_files
    from cnnkit.errors import CnnkitError
    from cnnkit.models import TinySegNet
    from cnnkit.predict import Predictor, Preprocessing, open_scene

    torch.set_num_threads(1)
    torch.manual_seed(0)
    predictor = Predictor(TinySegNet(2, 3), Preprocessing(mean=(100.0,), std=(50.0,), multiple_of=4), ("a", "b", "c"))
    options = dict(band_count=1, tiff=True, confidence=True, max_pixels=900, tile=16)
    warm_file, warm_out = jobs.pop(0)
    predict_files(predictor, [warm_file], warm_out, **options)  # lazy imports of torch and GDAL drivers
    with open("/proc/self/status", encoding="ascii") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limit, mapped + limit))
    baseline = _peak_mib()
    for path, out in jobs:
        print(json.dumps({"start": path}), flush=True)
        start = time.perf_counter()
        record = {"path": path, "outcome": "ok", "error": "", "message": "", "declared": None, "pixels": 0}
        try:
            run = predict_files(predictor, [path], out, **options)
            record["pixels"] = run.pixels
            scene = open_scene(path, 1)
            record["declared"] = list(scene.shape)
            scene.close()
        except CnnkitError as error:
            record.update(outcome="cnnkit", error=type(error).__name__, message=str(error)[:300])
        except BaseException as error:
            record.update(outcome="raw", error=type(error).__name__, message=str(error)[:300])
        record["seconds"] = round(time.perf_counter() - start, 3)
        peak = _peak_mib()
        record["peak_rss_mb"], record["rss_mb"] = round(peak - baseline, 1), round(peak, 1)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
