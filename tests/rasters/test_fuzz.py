"""Seeded mutation fuzzing of cnnkit predict's readers (issue 27): every damaged raster is refused with a
CnnkitError or predicted, in bounded time and memory, never predicted from bytes that contradict its header, and a
refusal leaves nothing under the final output names.

Seeds, generated here: GeoTIFFs in strips (uncompressed, deflate) and tiles (deflate, LZW), a Cloud-Optimized
GeoTIFF, a PNG, a JPEG 2000, a VRT (its XML mutated, its source beside it), an ENVI file (its data file or its
``.hdr`` mutated, the other beside it), a netCDF-4 file (deflate) and an HDF5 file (gzip chunks, h5py). Each mutated
file (byte flips, duplicated, overwritten, zeroed or deleted spans, sizes made huge, truncations — half of them inside
the first 512 bytes, where the headers lie; for PNGs mostly inside one chunk, its CRC made right, or the image data
cut short as a valid deflate stream) is predicted by ``predict_files`` in a child process (``_fuzz_child.py``: torch
imported once, many files per child, each under its own guard) with a time limit per file (10 s) and an
address-space limit (1.5 GiB above the warmed-up interpreter).

Outcomes: ``cnnkit`` (a clean error) or ``ok`` (predicted); never a raw exception, a signal or a hang. An accepted
file must not yield more pixels with data than its bytes can hold (its size times the seed's compression bound:
1 uncompressed (ENVI too), 1,032 deflate, PNG, netCDF-4 and HDF5 gzip, 4,096 LZW, the VRT's source file for a VRT).

``RASTER_FUZZ_COUNT`` sets the number of files (default 320; ``make fuzz`` runs more) and ``RASTER_FUZZ_SEED`` the
seed (default 27).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil

CHILD = Path(__file__).with_name("_fuzz_child.py")
MEMORY_LIMIT = 3 * 2**29  # 1.5 GiB of address space above the warmed-up child
FILE_SECONDS = 10.0
START_SECONDS = 240.0
BOUND = {"strips": 1, "strips_deflate": 1032, "tiles_deflate": 1032, "tiles_lzw": 4096, "cog": 1032, "png": 1032,
         "jp2": None, "vrt": None, "envi": 1, "netcdf": 1032, "hdf5": 1032}
"""Pixels with data an accepted file may yield per byte of itself (times the sample size), by seed."""


def write_seeds(folder: Path) -> dict[str, Path]:
    """One small clean file of each kind (1 band, 40 × 36), the VRT's source beside it."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(27)
    values = (rng.random((36, 40)) * 200).astype(np.uint16)
    common = dict(driver="GTiff", width=40, height=36, count=1, dtype="uint16", nodata=0)
    seeds = {}
    for kind, extra in {"strips": dict(blockysize=4), "strips_deflate": dict(blockysize=4, compress="deflate"),
                        "tiles_deflate": dict(tiled=True, blockxsize=16, blockysize=16, compress="deflate"),
                        "tiles_lzw": dict(tiled=True, blockxsize=16, blockysize=16, compress="lzw")}.items():
        seeds[kind] = folder / f"{kind}.tif"
        with rasterio.open(seeds[kind], "w", **common, **extra) as dst:
            dst.write(values[None])
    rasterio.shutil.copy(seeds["tiles_deflate"], folder / "cog.tif", driver="COG", BLOCKSIZE=16, COMPRESS="DEFLATE")
    seeds["cog"] = folder / "cog.tif"
    seeds["png"] = folder / "png.png"
    Image.fromarray(values.astype(np.uint8)).save(seeds["png"])
    seeds["jp2"] = folder / "jp2.jp2"
    with rasterio.open(seeds["jp2"], "w", **{**common, "driver": "JP2OpenJPEG", "dtype": "uint8"}) as dst:
        dst.write(values[None].astype(np.uint8))
    seeds["vrt"] = folder / "vrt.vrt"
    from cnnkit.rasters import stack_vrt

    stack_vrt([seeds["strips"]], seeds["vrt"])
    seeds["envi"] = folder / "envi.img"  # its header beside it: envi.hdr
    with rasterio.open(seeds["envi"], "w", **{**common, "driver": "ENVI"}) as dst:
        dst.write(values[None])
    seeds["netcdf"] = folder / "netcdf.nc"
    rasterio.shutil.copy(seeds["strips"], seeds["netcdf"], driver="netCDF", FORMAT="NC4C", COMPRESS="DEFLATE")
    import h5py

    seeds["hdf5"] = folder / "hdf5.h5"
    with h5py.File(seeds["hdf5"], "w") as f:
        data = f.create_dataset("data", data=values, chunks=(16, 16), compression="gzip")
        data.attrs["_FillValue"] = np.uint16(0)
    return seeds


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits of ``data``, half of them in the first 512 bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not out:
            break
        kind = rng.choice(["flip", "flip", "dup", "overwrite", "delete", "truncate", "zero", "big"])
        at = rng.randrange(min(len(out), 512)) if rng.random() < 0.5 else rng.randrange(len(out))
        n = rng.choice([1, 2, 4, 8, 16, 64, 256, 1024])
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                out[at + rng.randrange(-8, 8) if 0 <= at - 8 < len(out) - 16 else rng.randrange(len(out))] ^= (
                    1 << rng.randrange(8))
        elif kind == "dup":
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
        elif kind == "big":  # a size, offset or count made huge
            out[at:at + 2] = rng.choice([b"\xff\xff", b"\xff\x7f", b"\x00\x80", b"\x10\x27"])[:len(out[at:at + 2])]
        else:
            del out[at:]
    return bytes(out)


def mutate_png_chunk(data: bytes, rng: random.Random) -> bytes:
    """One chunk of a PNG (its header or image data, most often) mutated and its CRC made right again, so the damage
    reaches the decoder instead of the checksum."""
    chunks, at = [], 8
    while at + 8 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        chunks.append([data[at + 4:at + 8], data[at + 8:at + 8 + length]])
        at += 12 + length
    target = rng.choice([c for c in chunks if c[0] in (b"IHDR", b"IDAT")] or chunks)
    if target[0] == b"IDAT" and rng.random() < 0.5:  # image data cut short but still a valid deflate stream
        raw = zlib.decompress(target[1])
        target[1] = zlib.compress(raw[:rng.randrange(len(raw))])
    else:
        target[1] = mutate(target[1], rng)
    return data[:8] + b"".join(struct.pack(">I", len(body)) + kind + body
                               + struct.pack(">I", zlib.crc32(kind + body)) for kind, body in chunks)


def write_mutations(folder: Path, seeds: dict[str, Path], count: int, seed: int) -> list[tuple[Path, str]]:
    rng = random.Random(seed)
    kinds = sorted(seeds)
    shutil.copy(seeds["strips"], folder / seeds["strips"].name)  # the mutated VRTs' source, beside them
    files = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        path = folder / f"{i:05d}_{kind}{seeds[kind].suffix}"
        data = seeds[kind].read_bytes()
        if kind == "envi":  # the data file or its header mutated, the other beside it
            header = seeds[kind].with_suffix(".hdr").read_bytes()
            damage_header = rng.random() < 0.5
            path.with_suffix(".hdr").write_bytes(mutate(header, rng) if damage_header else header)
            path.write_bytes(data if damage_header else mutate(data, rng))
        else:
            path.write_bytes(mutate_png_chunk(data, rng) if kind == "png" and rng.random() < 0.7 else mutate(data, rng))
        files.append((path, kind))
    return files


def _run_batch(jobs: list[list[str]], warm: list[str]) -> tuple[list[dict], list[list[str]]]:
    proc = subprocess.Popen([sys.executable, str(CHILD), str(MEMORY_LIMIT)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    proc.stdin.write(json.dumps([warm, *jobs]))
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
                records.append({"path": current or jobs[0][0], "outcome": "hang", "message": "", "seconds":
                                FILE_SECONDS, "peak_rss_mb": 0, "rss_mb": 0})
                break
            line = proc.stdout.readline()
            if not line:
                code = proc.wait()
                if current is not None:
                    records.append({"path": current, "outcome": "crash", "message": f"exit code {code}",
                                    "seconds": 0, "peak_rss_mb": 0, "rss_mb": 0})
                break
            message = json.loads(line)
            if "start" in message:
                current, deadline = message["start"], time.monotonic() + FILE_SECONDS
            else:
                records.append(message)
                current = None
    finally:
        selector.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not records:  # the child died before its first file: count it against that file, so the run moves on
        records.append({"path": jobs[0][0], "outcome": "crash", "message": f"exit code {proc.returncode} before the "
                        "first file", "seconds": 0, "peak_rss_mb": 0, "rss_mb": 0})
    done = {r["path"] for r in records}
    return records, [job for job in jobs if job[0] not in done]


def predict_in_children(jobs: list[list[str]], warm: list[str], batch: int, parallel: int = 2) -> list[dict]:
    def run(index: int, chunk: list[list[str]]) -> list[dict]:
        out = []
        while chunk:  # each child warms up into a folder of its own (a shared one would be locked by the other)
            records, chunk = _run_batch(chunk, [warm[0], f"{warm[1]}_{index}_{len(out)}"])
            out += records
        return out

    chunks = [jobs[i:i + batch] for i in range(0, len(jobs), batch)]
    with ThreadPoolExecutor(parallel) as pool:
        return [r for records in pool.map(run, range(len(chunks)), chunks) for r in records]


def test_mutator_is_seeded_and_changes_files():
    data = bytes(range(256)) * 8
    assert mutate(data, random.Random(3)) == mutate(data, random.Random(3)) != data


@pytest.mark.slow
def test_mutated_rasters_are_refused_or_predicted_in_bounded_time_and_memory(tmp_path):
    count = int(os.environ.get("RASTER_FUZZ_COUNT", "320"))
    seed = int(os.environ.get("RASTER_FUZZ_SEED", "27"))
    seeds = write_seeds(tmp_path / "seeds")
    files = write_mutations(tmp_path, seeds, count, seed)
    kinds = {str(path): kind for path, kind in files}
    jobs = [[str(path), str(tmp_path / "out" / path.stem)] for path, _ in files]
    start = time.perf_counter()
    records = predict_in_children(jobs, [str(seeds["tiles_deflate"]), str(tmp_path / "warm")],
                                  batch=max(40, count // 2 + 1))
    seconds = time.perf_counter() - start
    outcomes = Counter(r["outcome"] for r in records)
    bad = [r for r in records if r["outcome"] not in ("ok", "cnnkit")]
    assert not bad, f"{len(bad)} of {count} files: " + "; ".join(
        f"{Path(r['path']).name}: {r['outcome']} {r.get('error', '')} {r['message'][:200]}" for r in bad[:10])
    assert sorted(Counter(r["path"] for r in records).values()) == [1] * count
    slow = [(Path(r["path"]).name, r["seconds"]) for r in records if r["seconds"] > FILE_SECONDS]
    assert not slow, f"files over {FILE_SECONDS} s: {slow}"
    assert max(r["rss_mb"] for r in records) <= 1536, "peak RSS over 1.5 GB"
    for r in records:
        out = tmp_path / "out" / Path(r["path"]).stem
        finals = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if r["outcome"] == "cnnkit":
            assert not finals, f"{Path(r['path']).name} was refused ({r['message'][:200]}) but left {finals}"
            continue
        assert len(finals) == 4, (Path(r["path"]).name, finals)
        kind = kinds[r["path"]]
        _, height, width = r["declared"]
        assert r["pixels"] <= height * width
        source = seeds["strips"] if kind == "vrt" else Path(r["path"])
        bound = BOUND["strips"] if kind == "vrt" else BOUND[kind]
        if bound is not None:
            sample = 1 if kind in ("png", "jp2") else 2
            assert r["pixels"] * sample <= source.stat().st_size * bound, (
                f"{Path(r['path']).name}: {r['pixels']} pixels with data from {source.stat().st_size} bytes")
    peak = max(r["peak_rss_mb"] for r in records)
    print(f"\n{count} mutated rasters (seed {seed}): {dict(outcomes)} in {seconds:.1f} s; by kind "
          f"{dict(Counter((kinds[r['path']], r['outcome']) for r in records))}; slowest "
          f"{max(r['seconds'] for r in records):.2f} s; peak RSS {max(r['rss_mb'] for r in records):.0f} MB "
          f"({peak:.0f} MB above the warmed-up child)")
    assert outcomes["cnnkit"] > count // 5 and outcomes["ok"] > count // 10  # the mutations damage, not destroy
