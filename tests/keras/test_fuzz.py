"""Seeded mutation fuzzing of the Keras fixtures: every damaged file is refused with a CnnkitError or loads.

Each mutated file (byte flips, duplicated, overwritten or deleted spans, truncations; inside a ``.keras``
archive also of its ``model.weights.h5`` or ``config.json``, re-zipped) is loaded in a child process with
a time limit (10 s a file) and an address-space limit (1.5 GiB). The outcome must be success or a
``CnnkitError``: no hang, no other exception, no crash, peak memory ≤ 1 GB above the loaded interpreter.

``KERAS_FUZZ_COUNT`` sets the number of files (default 500; ``make fuzz`` runs more) and
``KERAS_FUZZ_SEED`` the seed (default 17).
"""

from __future__ import annotations

import io
import os
import random
import zipfile
from collections import Counter
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SOURCES = sorted(FIXTURES.glob("*.h5")) + sorted(FIXTURES.glob("*.keras"))


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not out:
            break
        kind = rng.choice(["flip", "flip", "dup", "overwrite", "delete", "truncate", "zero"])
        at = rng.randrange(len(out))
        n = rng.choice([1, 4, 8, 16, 64, 256, 1024, 2048])
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind == "dup":  # a span copied from elsewhere and inserted (the shape of the hang in issue 17)
            src = rng.randrange(len(out))
            out[at:at] = out[src:src + n]
        elif kind == "overwrite":
            src = rng.randrange(len(out))
            span = out[src:src + n]
            out[at:at + len(span)] = span
        elif kind == "delete":
            del out[at:at + n]
        elif kind == "zero":
            out[at:at + n] = bytes(len(out[at:at + n]))
        else:
            del out[at:]
    return bytes(out)


def mutate_file(source: Path, rng: random.Random) -> bytes:
    data = source.read_bytes()
    if source.suffix == ".keras" and rng.random() < 0.6:
        with zipfile.ZipFile(source) as z:
            members = {n: z.read(n) for n in z.namelist()}
        target = rng.choice(["model.weights.h5", "model.weights.h5", "config.json"])
        members[target] = mutate_bytes(members[target], rng)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for name, content in members.items():
                z.writestr(name, content)
        return buffer.getvalue()
    return mutate_bytes(data, rng)


def write_mutations(folder: Path, count: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        source = rng.choice(SOURCES)
        path = folder / f"{i:05d}_{source.stem}{source.suffix}"
        path.write_bytes(mutate_file(source, rng))
        paths.append(path)
    return paths


def check_outcomes(records: list[dict], count: int) -> Counter:
    outcomes = Counter(r["outcome"] for r in records)
    bad = [r for r in records if r["outcome"] not in ("ok", "cnnkit")]
    assert not bad, f"{len(bad)} of {count} files gave hangs, crashes or raw errors: " + "; ".join(
        f"{Path(r['path']).name}: {r['outcome']} {r['error']} {r['message'][:200]}" for r in bad[:10])
    assert sorted(Counter(r["path"] for r in records).values()) == [1] * count
    slow = [r for r in records if r["seconds"] > 10]
    assert not slow, f"files over 10 s: {[(Path(r['path']).name, r['seconds']) for r in slow]}"
    peak = max(r["peak_rss_mb"] for r in records)
    assert peak <= 1024, f"peak RSS {peak} MB > 1 GB above the interpreter with torch and cnnkit loaded"
    return outcomes


def test_mutator_is_seeded_and_changes_files():
    rng1, rng2 = random.Random(5), random.Random(5)
    source = FIXTURES / "classifier.h5"
    first, second = mutate_file(source, rng1), mutate_file(source, rng2)
    assert first == second
    assert first != source.read_bytes()


@pytest.mark.slow
def test_mutated_fixtures_are_refused_or_loaded_in_bounded_time_and_memory(tmp_path, in_children):
    count = int(os.environ.get("KERAS_FUZZ_COUNT", "500"))
    seed = int(os.environ.get("KERAS_FUZZ_SEED", "17"))
    paths = write_mutations(tmp_path, count, seed)
    records = load_in_children(paths, in_children, count)
    outcomes = check_outcomes(records, count)
    print(f"\n{count} mutated Keras files (seed {seed}): {dict(outcomes)}; slowest "
          f"{max(r['seconds'] for r in records):.2f} s; peak RSS {max(r['peak_rss_mb'] for r in records)} MB")
    assert outcomes["cnnkit"] > count // 4  # the mutations do damage the files


def load_in_children(paths, in_children, count):
    batch = max(25, min(250, count // 4 + 1))
    return in_children(paths, batch=batch, parallel=2)
