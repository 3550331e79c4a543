"""Untrusted rasters: what a file declares, checked against its own bytes and a memory budget before decoding.

A header is a promise the bytes must keep. Before anything is allocated:

* **TIFF** (:func:`tiff_blocks`): the number of blocks is bounded; every block's data lies after the header, inside
  the file, clear of the first directory and of the other blocks; no block decodes to more than its compression can
  produce from its byte count (deflate at most 1,032:1, an uncompressed block exactly its size), and no compressed
  block decodes to more than :data:`MAX_COMPRESSED_BLOCK` (GDAL decodes it whole). A block without
  data (byte count 0, as GDAL writes it) is a *sparse* block: it is read as no data, never as zeros.
* **PNG** (:func:`check_png`): the declared size fits the budget, and the image data decompresses — counted, in
  bounded memory — to exactly the rows the header declares; a file that holds 40 rows
  of a declared 4,000 is refused, not padded with zeros.
* **Every raster** (:func:`check_declared`): at most :data:`MAX_PIXELS` pixels per band, and a positive size.

Examples:
    >>> check_declared("x.tif", 3, 46341, 46341)
    Traceback (most recent call last):
    ...
    cnnkit.errors.CnnkitError: x.tif declares 46341 × 46341 pixels × 3 bands: more than cnnkit reads from one file \
(2147483647 pixels a band). Split it (gdal_translate -srcwin) or check that the file is intact.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError

__all__ = ["CHUNKED_DRIVERS", "MAX_BLOCKS", "MAX_COMPRESSED_BLOCK", "MAX_PAGES", "MAX_PIXELS", "PICTURE_BYTES",
           "STACK_BYTES", "check_chunks", "check_declared", "check_png", "check_raw", "check_stack", "tiff_blocks",
           "tiff_directories"]

MAX_PIXELS = 2**31 - 1
"""Pixels per band (height × width) of one raster at most."""

MAX_BLOCKS = 2**20
"""Blocks (tiles or strips, per band of a band-interleaved file) of one raster at most."""

MAX_COMPRESSED_BLOCK = 256 * 2**20
"""Bytes a compressed block may decode to: GDAL decodes such a block whole, whatever window is asked of it."""

PICTURE_BYTES = 256 * 2**20
"""A PNG or JPEG is decoded whole (by Pillow): its decoded pixels may take this many bytes at most."""

STACK_BYTES = 8 * 2**30
"""A stack of TIFF pages read whole (:func:`cnnkit.rasters.read_stack`: a series) may take this many bytes decoded
(60 dates × 10 bands × 1,830² float32 pixels: 8.0 GB)."""

MAX_PAGES = 2**16
"""Pages of one TIFF at most."""

_RATIO = {"NONE": 1, "DEFLATE": 1100, "ADOBE_DEFLATE": 1100, "LZW": 4096, "PACKBITS": 128}
"""The most a block of each compression can decode to per stored byte (deflate's bound is 1,032:1); other codecs
(ZSTD, LERC, WEBP, JPEG) get :data:`_OTHER_RATIO`."""
_OTHER_RATIO = 2**16


def check_declared(path: str | os.PathLike, count: int, height: int, width: int) -> None:
    """Refuse a raster without pixels or with more than :data:`MAX_PIXELS` a band, naming the sizes."""
    if count < 1 or height < 1 or width < 1:
        raise CnnkitError(f"{os.fspath(path)} declares {height} × {width} pixels × {count} bands: no pixels to read.")
    if height * width > MAX_PIXELS:
        raise CnnkitError(f"{os.fspath(path)} declares {height} × {width} pixels × {count} bands: more than cnnkit "
                          f"reads from one file ({MAX_PIXELS} pixels a band). Split it (gdal_translate -srcwin) or "
                          "check that the file is intact.")


CHUNKED_DRIVERS = ("netCDF", "HDF5", "HDF5Image", "HDF4", "HDF4Image")
"""GDAL drivers of formats stored in compressed chunks that the library decodes whole (netCDF-4 and HDF5 through
libhdf5): a chunk is what GDAL reports as a block."""


def check_chunks(path: str | os.PathLike, driver: str, block_shape: tuple[int, int], count: int, itemsize: int,
                 budget: int = MAX_COMPRESSED_BLOCK) -> None:
    """Refuse a netCDF/HDF raster whose chunks (GDAL's blocks; counted across every band, as a chunk may span them)
    decode to more than ``budget`` bytes: the library decodes a chunk whole, whatever window is read.

    Examples:
        >>> check_chunks("x.h5", "HDF5Image", (40000, 40000), 1, 4)
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: x.h5 (HDF5Image) stores chunks of 40000 × 40000 pixels × 1 bands (6104 MiB each, \
decoded whole whatever window is read): over the 256 MiB budget. Re-chunk it (nccopy -c, h5repack -l) or check that \
the file is intact.
    """
    rows, cols = block_shape
    whole = rows * cols * max(count, 1) * itemsize
    if whole > budget:
        raise CnnkitError(f"{os.fspath(path)} ({driver}) stores chunks of {rows} × {cols} pixels × {count} bands "
                          f"({whole / 2**20:.0f} MiB each, decoded whole whatever window is read): over the "
                          f"{budget // 2**20} MiB budget. Re-chunk it (nccopy -c, h5repack -l) or check that the "
                          "file is intact.")


def check_raw(path: str | os.PathLike, offset: int, count: int, height: int, width: int, itemsize: int) -> None:
    """Refuse a raw raster (ENVI: its ``.hdr`` declares the size, the data file holds the pixels uncompressed) whose
    data file is shorter than its header declares: GDAL reads the missing rows as zeros, which would be taken as data.

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.img")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes(100))
        >>> check_raw(path, 0, 2, 10, 10, 4)
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: ...x.img holds 100 bytes; its header declares 10 × 10 pixels × 2 bands of 4 bytes \
after a 0-byte offset (800 bytes): the file is truncated, or its header is wrong.
    """
    need = offset + count * height * width * itemsize
    size = os.path.getsize(path)
    if size < need:
        raise CnnkitError(f"{os.fspath(path)} holds {size} bytes; its header declares {height} × {width} pixels × "
                          f"{count} bands of {itemsize} bytes after a {offset}-byte offset ({need} bytes): the file is "
                          "truncated, or its header is wrong.")


def check_stack(path: str | os.PathLike, pages: int, count: int, height: int, width: int, itemsize: int,
                budget: int = STACK_BYTES) -> None:
    """Refuse a stack of ``pages`` pages of ``count`` bands of ``height × width`` whose decoded values (``itemsize``
    bytes each) would take more than ``budget`` bytes, before any is decoded.

    Examples:
        >>> check_stack("s.tif", 100_000, 10, 1000, 1000, 4)
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: s.tif declares 100000 pages of 10 bands of 1000 × 1000 pixels (4,000,000,000,000 \
bytes decoded): over the 8 GiB a stack read whole may take. Split the series in space (gdal_translate -srcwin) or \
check that the file is intact.
    """
    check_declared(path, count, height, width)
    total = pages * count * height * width * itemsize
    if total > budget:
        raise CnnkitError(f"{os.fspath(path)} declares {pages} pages of {count} bands of {height} × {width} pixels "
                          f"({total:,} bytes decoded): over the {budget // 2**30} GiB a stack read whole may take. "
                          "Split the series in space (gdal_translate -srcwin) or check that the file is intact.")


def tiff_directories(path: str | os.PathLike, limit: int = MAX_PAGES) -> int:
    """Walk a TIFF's chain of directories (one per page, overviews and masks included) and count them; every
    directory must lie inside the file, and the chain must end (GDAL, given a chain cut short, logs an error and
    reads the pages before the cut: a truncated stack would lose its last dates silently).

    Raises:
        CnnkitError: a directory outside the file (truncated), a chain that loops, or more than ``limit`` pages.
    """
    name = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return 0
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        if big and len(head) < 16:
            raise CnnkitError(f"{name}: its BigTIFF header is cut short: the file is truncated.")
        offset = struct.unpack(order + "Q", head[8:16])[0] if big else struct.unpack(order + "I", head[4:8])[0]
        count_size, entry, next_size = (8, 20, 8) if big else (2, 12, 4)
        seen: set[int] = set()
        while offset:
            if offset in seen:
                raise CnnkitError(f"{name}: its directory {len(seen) + 1} (byte {offset}) is one met before: the chain "
                                  "of pages loops; the file is damaged.")
            if len(seen) >= limit:
                raise CnnkitError(f"{name} holds more than {limit:,} pages: more than cnnkit reads from one file. Is "
                                  "the file intact?")
            seen.add(offset)
            f.seek(offset)
            raw = f.read(count_size)
            entries = struct.unpack(order + ("Q" if big else "H"), raw)[0] if len(raw) == count_size else None
            end = offset + count_size + entry * (entries or 0) + next_size
            if entries is None or end > size:
                raise CnnkitError(f"{name}: its directory {len(seen)} lies at bytes {offset}–{end} of a file of {size} "
                                  "bytes: the file is truncated or damaged.")
            f.seek(end - next_size)
            offset = struct.unpack(order + ("Q" if big else "I"), f.read(next_size))[0]
    return len(seen)


def _header_end(path: Path, size: int) -> tuple[int, tuple[int, int]]:
    """The end of the TIFF header and the byte span of the first directory (IFD)."""
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 8 or head[:2] not in (b"II", b"MM"):
            return 8, (0, 0)
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        if big:
            if len(head) < 16:
                return 16, (0, 0)
            start = struct.unpack(order + "Q", head[8:16])[0]
            f.seek(start)
            raw = f.read(8)
            entries = struct.unpack(order + "Q", raw)[0] if len(raw) == 8 else 0
            return 16, (start, start + 8 + 20 * entries + 8)
        start = struct.unpack(order + "I", head[4:8])[0]
        f.seek(start)
        raw = f.read(2)
        entries = struct.unpack(order + "H", raw)[0] if len(raw) == 2 else 0
        return 8, (start, start + 2 + 12 * entries + 4)


def tiff_blocks(dataset, path: str | os.PathLike, first_page: bool = True) -> frozenset[tuple[int, int, int]]:
    """Check a GeoTIFF's block table against its bytes; return its sparse blocks ``(band, row, col)`` (band 0 for a
    pixel-interleaved file: its blocks hold every band), which read as no data.

    Args:
        dataset: The file opened with rasterio (driver ``GTiff``).
        path: The file (its length, its header).
        first_page: Whether ``dataset`` is the file's first page (its directory is checked against the blocks).

    Raises:
        CnnkitError: too many blocks, or a block whose bytes contradict the header (naming the block, its offset
            and byte count, and the file's length).
    """
    path = Path(path)
    name = os.fspath(path)
    size = path.stat().st_size
    rows, cols = (int(v) for v in dataset.block_shapes[0])
    height, width = dataset.height, dataset.width
    structure = dataset.tags(ns="IMAGE_STRUCTURE") if dataset.count else {}
    separate = structure.get("INTERLEAVE", "PIXEL").upper() == "BAND" and dataset.count > 1
    planes = dataset.count if separate else 1
    samples = 1 if separate else dataset.count
    bits = int(dataset.tags(1, ns="IMAGE_STRUCTURE").get("NBITS", 0) or 0) or np.dtype(dataset.dtypes[0]).itemsize * 8
    compression = structure.get("COMPRESSION", "NONE").upper()
    ratio = _RATIO.get(compression, _OTHER_RATIO)
    down, across = math.ceil(height / rows), math.ceil(width / cols)
    if down * across * planes > MAX_BLOCKS:
        raise CnnkitError(f"{name} declares {down * across * planes:,} blocks of {rows} × {cols} pixels "
                          f"({height} × {width} × {dataset.count} bands): more than {MAX_BLOCKS:,}. Is the file "
                          "intact?")
    whole = rows * math.ceil(cols * samples * bits / 8)
    if compression != "NONE" and whole > MAX_COMPRESSED_BLOCK:
        raise CnnkitError(f"{name} stores {compression.lower()}-compressed blocks of {rows} × {cols} pixels × "
                          f"{samples} samples ({whole / 2**20:.0f} MiB each, decoded whole whatever window is read): "
                          f"over the {MAX_COMPRESSED_BLOCK // 2**20} MiB budget. Re-tile it "
                          "(gdal_translate -co TILED=YES).")
    header, directory = _header_end(path, size)
    if not first_page:
        directory = (0, 0)
    sparse, spans = set(), []
    for plane in range(planes):
        for i in range(down):
            block_rows = min(rows, height - i * rows)  # a tile at the bottom edge holds more: a lower bound
            decoded = block_rows * math.ceil(cols * samples * bits / 8)
            for j in range(across):
                offset = dataset.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=plane + 1)
                count = dataset.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=plane + 1)
                if offset is None or not int(count or 0):  # GDAL's sparse block: nothing stored
                    sparse.add((plane, i, j))
                    continue
                offset, count = int(offset), int(count)
                where = f"{name}: block ({i}, {j}){f' of band {plane + 1}' if separate else ''} "
                if offset < header or offset + count > size:
                    raise CnnkitError(f"{where}lies at bytes {offset}–{offset + count} of a file of {size} bytes "
                                      f"(its header ends at byte {header}): the file is damaged or truncated.")
                if offset < directory[1] and directory[0] < offset + count:
                    raise CnnkitError(f"{where}points into the file's directory (bytes {directory[0]}–"
                                      f"{directory[1]}): the file is damaged.")
                if compression == "NONE" and count < decoded:
                    raise CnnkitError(f"{where}holds {count} bytes; an uncompressed block of {block_rows} × {cols} "
                                      f"× {samples} samples of {bits} bits needs {decoded}: the file is damaged.")
                if decoded > count * ratio:
                    raise CnnkitError(f"{where}holds {count} bytes, which {compression.lower()} cannot decode into "
                                      f"{decoded} (at most {ratio}:1): the header contradicts the data.")
                spans.append((offset, count, i, j))
    spans.sort()
    for (a, n, i, j), (b, m, k, l_) in itertools.pairwise(spans):
        if b < a + n and (a, n) != (b, m):
            raise CnnkitError(f"{name}: blocks ({i}, {j}) and ({k}, {l_}) share bytes {b}–{min(a + n, b + m)}: "
                              "the file is damaged.")
    return frozenset(sparse)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def _png_rows_bytes(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + math.ceil(w * bits_per_pixel / 8))

    if not interlaced:
        return rows(width, height)
    return sum(rows(max(0, math.ceil((width - x0) / dx)), max(0, math.ceil((height - y0) / dy)))
               for y0, x0, dy, dx in _ADAM7)


def check_png(path: str | os.PathLike, budget: int = PICTURE_BYTES) -> tuple[int, int, int]:
    """Check a PNG's declared size against ``budget`` and its own image data; returns ``(height, width, channels)``.

    The image data is decompressed in pieces and counted, never held: it must hold exactly the rows the header
    declares.

    Raises:
        CnnkitError: not a PNG, a size of 0 or over the budget, image data too short, too long or too small to hold
            the declared size (naming the sizes).
    """
    name = os.fspath(path)
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            raise CnnkitError(f"Could not read the image {name}: not a PNG file (its signature is wrong).")
        header = None
        stream = zlib.decompressobj()
        produced = 0
        expected = None
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise CnnkitError(f"Could not read the image {name}: the file ends before its IEND chunk (truncated).")
            length, kind = struct.unpack(">I", head[:4])[0], head[4:]
            if kind == b"IHDR":
                data = f.read(length)
                if length != 13 or len(data) != 13:
                    raise CnnkitError(f"Could not read the image {name}: its IHDR chunk is damaged.")
                width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data)
                channels = _PNG_CHANNELS.get(colour)
                if channels is None or depth not in (1, 2, 4, 8, 16):
                    raise CnnkitError(f"Could not read the image {name}: colour type {colour} with bit depth {depth} "
                                      "is not a PNG's.")
                check_declared(name, channels, height, width)
                out_channels = 3 if colour == 3 else channels
                decoded = height * width * out_channels * max(1, depth // 8)
                if decoded > budget:
                    raise CnnkitError(f"{name} declares {height} × {width} pixels × {out_channels} channels "
                                      f"({decoded / 2**20:.0f} MiB decoded): over the {budget // 2**20} MiB a PNG or "
                                      "JPEG may take (they are decoded whole). Convert it to a tiled GeoTIFF "
                                      "(gdal_translate -co TILED=YES), which is read window by window.")
                expected = _png_rows_bytes(width, height, channels * depth, interlace == 1)
                header = (height, width, out_channels)
                f.seek(4, 1)
                continue
            if header is None:
                raise CnnkitError(f"Could not read the image {name}: its first chunk is not IHDR.")
            if kind == b"IDAT":
                left = length
                while left:
                    piece = f.read(min(left, 1 << 16))
                    if not piece:
                        break
                    left -= len(piece)
                    produced += _count(stream, piece, expected, produced, name)
                f.seek(4, 1)
                continue
            if kind == b"IEND":
                break
            f.seek(length + 4, 1)
    if produced != expected:
        rows = produced * header[0] // max(expected, 1)
        raise CnnkitError(f"{name} declares {header[0]} rows ({expected} bytes of image data) but holds {produced} "
                          f"bytes (about {rows} rows): the file is truncated or damaged.")
    return header


def _count(stream, piece: bytes, expected: int, produced: int, name: str) -> int:
    """Decompress ``piece`` through ``stream`` in bounded pieces, counting the bytes (more than ``expected`` in all is
    refused at once)."""
    total = 0
    data = piece
    while True:
        try:
            out = stream.decompress(data, 1 << 20)
        except zlib.error as err:
            raise CnnkitError(f"Could not read the image {name}: its image data is damaged ({err}).") from err
        total += len(out)
        if produced + total > expected:
            raise CnnkitError(f"{name}: its image data decodes to more than the {expected} bytes its header declares: "
                              "the file is damaged.")
        data = stream.unconsumed_tail
        if not data:
            return total
