"""Child process of the Keras fuzz tests: load files under a memory limit and report each outcome.

Run as ``python _load_child.py LIMIT_BYTES`` with a JSON list of file paths on stdin. For each file it
prints one JSON line before loading (``{"start": path}``, so a parent that has to kill a hung child knows
which file hung) and one after::

    {"path": ..., "outcome": "ok" | "cnnkit" | "raw", "error": type name, "message": ...,
     "seconds": ..., "peak_rss_mb": ...}

``outcome`` is ``"cnnkit"`` for a ``CnnkitError`` and ``"raw"`` for any other exception (a bug: every error
must reach the user as a ``CnnkitError``). ``peak_rss_mb`` is the process's peak resident memory so far
(``resource.getrusage``) above what it held after its imports and two warm-up loads (torch alone is 0.5 GB
with its CPU build, more with a CUDA build); the address space is limited with ``RLIMIT_AS``, as headroom
above what is mapped after the imports.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def _peak_mib() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` (KiB in /proc/self/status), not ``ru_maxrss``, which on
    Linux keeps the high-water mark of the process that forked this one (a child of a 2 GB pytest process starts
    at 2 GB), so the baseline would hide a file's cost."""
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def main() -> None:
    limit = int(sys.argv[1])
    paths = json.loads(sys.stdin.read())
    import cnnkit.keras as ck
    import cnnkit.keras.convert  # noqa: F401 (imported before the memory limit)
    from cnnkit.errors import CnnkitError

    fixtures = Path(__file__).parent / "fixtures"
    for warm_up in ("classifier.keras", "lstm.h5"):  # the first load imports parts of torch lazily (seconds)
        ck.load(fixtures / warm_up)
    # The limit is headroom above what the interpreter, torch and cnnkit already map (a CUDA build of torch maps
    # about 3 GiB of address space at import, a CPU build far less).
    with open("/proc/self/status", encoding="ascii") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limit, mapped + limit))
    # what the interpreter, torch and cnnkit hold before any file is read (0.5 GB with the CPU build of torch,
    # more with a CUDA build): the files' own cost is measured above it
    baseline = _peak_mib()
    for path in paths:
        print(json.dumps({"start": path}), flush=True)
        start = time.perf_counter()
        record = {"path": path, "outcome": "ok", "error": "", "message": ""}
        try:
            model, _ = ck.load(path)
            del model
        except CnnkitError as error:
            record.update(outcome="cnnkit", error=type(error).__name__, message=str(error)[:500])
        except BaseException as error:
            record.update(outcome="raw", error=type(error).__name__, message=str(error)[:500])
        record["seconds"] = round(time.perf_counter() - start, 3)
        record["peak_rss_mb"] = round(_peak_mib() - baseline, 1)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
