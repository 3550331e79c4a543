"""Untrusted rasters (issue 27): declared sizes checked against the bytes before decoding, every decoder error a
CnnkitError naming the file, GDAL's sparse blocks read and predicted as no data, VRTs kept to their own folder."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import rasterio
import tifffile
from PIL import Image
from rasterio.windows import Window

from cnnkit.errors import CnnkitError
from cnnkit.rasters import Raster
from cnnkit.rasters.boundary import raster_errors
from cnnkit.rasters.pictures import read_picture
from cnnkit.rasters.vrt import check_vrt_sources


def _patch_tag(path, tag: str, value: int, index: int = 0) -> None:
    """Set entry ``index`` of a strip/tile offsets or byte-counts tag of the first page to ``value``."""
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[0].tags[tag]
        fmt = {3: "H", 4: "I", 16: "Q"}[entry.dtype]
        at = entry.valueoffset + index * struct.calcsize(fmt) if entry.count > 1 else entry.valueoffset
        order = tif.byteorder
    data = bytearray(path.read_bytes())
    struct.pack_into(order + fmt, data, at, value)
    path.write_bytes(bytes(data))


def _striped(path, rows_per_strip: int = 8, compress=None):
    values = (np.arange(32 * 24) % 97).astype(np.uint16).reshape(1, 32, 24)
    with rasterio.open(path, "w", driver="GTiff", width=24, height=32, count=1, dtype="uint16",
                       blockysize=rows_per_strip, compress=compress) as dst:
        dst.write(values)
    return values


def test_strips_that_contradict_the_header_are_refused_before_decoding(tmp_path):
    path = tmp_path / "s.tif"
    values = _striped(path)
    np.testing.assert_array_equal(Raster(path).read_raw(), values)  # the intact file reads
    size = path.stat().st_size
    cases = {"StripByteCounts": (100, r"block \(1, 0\) holds 100 bytes; an uncompressed block of 8 × 24 × 1 samples "
                                      r"of 16 bits needs 384"),
             "StripOffsets": (size - 10, r"block \(1, 0\) lies at bytes \d+–\d+ of a file of \d+ bytes")}
    for tag, (value, message) in cases.items():
        _striped(path)
        _patch_tag(path, tag, value, index=1)
        with pytest.raises(CnnkitError, match=rf"s\.tif: {message}"):
            Raster(path)
    _striped(path)
    _patch_tag(path, "StripOffsets", 0, index=2)  # into the header: the StripOffsets=0
    with pytest.raises(CnnkitError, match=r"block \(2, 0\) lies at bytes 0–384 .*header ends at byte 8"):
        Raster(path)


def test_a_block_that_cannot_decode_to_its_size_is_refused(tmp_path):
    path = tmp_path / "t.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16", tiled=True,
                       blockxsize=32, blockysize=32, compress="deflate") as dst:
        dst.write(np.random.default_rng(0).integers(0, 900, (1, 64, 64), dtype=np.uint16))
    _patch_tag(path, "TileByteCounts", 1, index=3)  # 2,048 bytes of pixels from one byte: beyond deflate's 1,032:1
    with pytest.raises(CnnkitError, match=r"t\.tif: block \(1, 1\) holds 1 bytes, which deflate cannot decode into "
                                          r"2048 \(at most 1100:1\)"):
        Raster(path)


def test_damaged_compressed_data_is_a_cnnkit_error_naming_the_file(tmp_path):
    path = tmp_path / "z.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16", tiled=True,
                       blockxsize=32, blockysize=32, compress="deflate") as dst:
        dst.write(np.random.default_rng(1).integers(0, 900, (1, 64, 64), dtype=np.uint16))
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["TileOffsets"].value[0]
    data = bytearray(path.read_bytes())
    for k in range(2, 40):  # the deflate stream of the first tile, past its zlib header
        data[offset + k] ^= 0x5A
    path.write_bytes(bytes(data))
    raster = Raster(path)
    with pytest.raises(CnnkitError, match=r"Could not read .*z\.tif: "):
        raster.read(slice(0, 32), slice(0, 32))


@pytest.mark.parametrize("error", [ZeroDivisionError("division by zero"), IndexError("list index out of range"),
                                   AssertionError(), MemoryError(), NotImplementedError("JPEG-in-TIFF")])
def test_whatever_a_decoder_raises_becomes_a_cnnkit_error(tmp_path, monkeypatch, error):
    path = tmp_path / "s.tif"
    _striped(path)
    raster = Raster(path)

    class Exploding:
        def read(self, *args, **kwargs):
            raise error

    monkeypatch.setattr(raster._main, "_open", lambda: Exploding())
    with pytest.raises(CnnkitError, match=rf"Could not read .*s\.tif: {type(error).__name__ if str(error) else ''}"):
        raster.read()


def test_a_missing_codec_names_what_to_install():
    from rasterio.errors import RasterioIOError

    with pytest.raises(CnnkitError, match=r"Could not open x\.tif: .*missing codec ZSTD.* The ZSTD codec is missing "
                                          r"from this GDAL: install a rasterio built with it \(pip install"), \
            raster_errors("x.tif", "open"):
        raise RasterioIOError("Cannot open TIFF file due to missing codec ZSTD.")


def test_sparse_blocks_read_and_predict_as_no_data(tmp_path):
    from cnnkit.app.predict import predict_files
    from cnnkit.models import TinySegNet
    from cnnkit.predict import Predictor, Preprocessing

    path = tmp_path / "sparse.tif"
    written = (np.random.default_rng(2).random((1, 32, 32)) * 100 + 1).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32", tiled=True,
                       blockxsize=32, blockysize=32, SPARSE_OK=True) as dst:
        dst.write(written, window=Window(32, 0, 32, 32))  # block (0, 1) only; the other three are never stored
    raster = Raster(path)
    window = raster.read()
    expected = np.full((1, 64, 64), np.nan, np.float32)
    expected[:, :32, 32:] = written
    np.testing.assert_array_equal(window, expected)
    assert raster.has_sparse_blocks and raster.read_raw()[0, 40, 0] == 0  # GDAL's fill, which read() does not trust
    raster.close()
    predictor = Predictor(TinySegNet(2, 3), Preprocessing(mean=(50.0,), std=(30.0,), multiple_of=4), ("a", "b", "c"))
    for max_pixels in (10**6, 1000):  # whole, and tiled
        out = tmp_path / f"out{max_pixels}"
        run = predict_files(predictor, [path], out, max_pixels=max_pixels, tile=16)
        labels = np.array(Image.open(out / "sparse_labels.png"))
        np.testing.assert_array_equal(labels == 255, np.isnan(expected[0]))
        assert run.pixels == 32 * 32


def _png(path, rows: int = 4000, keep: int | None = None, width: int = 60) -> None:
    stored = rows if keep is None else keep  # only these rows are built and compressed
    values = (np.arange(stored * width) % 251).astype(np.uint8).reshape(stored, width)
    raw = b"".join(b"\x00" + row.tobytes() for row in values)
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, rows, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_png_that_holds_fewer_rows_than_declared_or_a_bomb_is_refused(tmp_path):
    _png(tmp_path / "whole.png")
    np.testing.assert_array_equal(read_picture(tmp_path / "whole.png"), np.array(Image.open(tmp_path / "whole.png")))
    _png(tmp_path / "short.png", keep=40)
    assert np.array(Image.open(tmp_path / "short.png")).shape == (4000, 60)  # Pillow alone pads it with zeros
    with pytest.raises(CnnkitError, match=r"short\.png declares 4000 rows \(244000 bytes of image data\) but holds "
                                          r"2440 bytes \(about 40 rows\): the file is truncated or damaged"):
        read_picture(tmp_path / "short.png")
    _png(tmp_path / "bomb.png", rows=10_000, keep=1, width=100_000)
    with pytest.raises(CnnkitError, match=r"bomb\.png declares 10000 × 100000 pixels × 1 channels \(954 MiB decoded\): "
                                          r"over the 256 MiB a PNG or JPEG may take"):
        read_picture(tmp_path / "bomb.png")


def test_a_vrt_reads_only_files_in_its_own_folder_unless_allowed(tmp_path):
    (tmp_path / "shared").mkdir()
    source = tmp_path / "private.tif"
    values = _striped(source)
    vrt = ('<VRTDataset rasterXSize="24" rasterYSize="32"><VRTRasterBand dataType="UInt16" band="1"><SimpleSource>'
           '<SourceFilename relativeToVRT="{rel}">{name}</SourceFilename><SourceBand>1</SourceBand></SimpleSource>'
           "</VRTRasterBand></VRTDataset>")
    outside = tmp_path / "shared" / "outside.vrt"
    outside.write_text(vrt.format(rel=1, name="../private.tif"))
    with pytest.raises(CnnkitError, match=r"outside\.vrt reads \.\./private\.tif, outside its own folder .*shared\. "
                                          r"Pass --allow-external-vrt-sources"):
        Raster(outside, external_sources=False)
    np.testing.assert_array_equal(Raster(outside, external_sources=True).read_raw(), values)
    absolute = tmp_path / "shared" / "absolute.vrt"
    absolute.write_text(vrt.format(rel=0, name=source))
    with pytest.raises(CnnkitError, match=r"outside its own folder"):
        Raster(absolute, external_sources=False)
    remote = tmp_path / "shared" / "remote.vrt"
    remote.write_text(vrt.format(rel=0, name="/vsicurl/http://example.com/x.tif"))
    with pytest.raises(CnnkitError, match=r"through a GDAL connection string or virtual file system"):
        check_vrt_sources(remote)
    inside = tmp_path / "inside.vrt"
    inside.write_text(vrt.format(rel=1, name="private.tif"))
    np.testing.assert_array_equal(Raster(inside, external_sources=False).read_raw(), values)
    code = tmp_path / "code.vrt"
    code.write_text(vrt.replace("<SimpleSource>", "<PixelFunctionLanguage>Python</PixelFunctionLanguage><SimpleSource>")
                    .format(rel=1, name="private.tif"))
    with pytest.raises(CnnkitError, match=r"asks to run Python code"):
        check_vrt_sources(code, allow_outside=True)


def test_a_compressed_block_over_the_budget_is_refused(tmp_path, monkeypatch):
    from cnnkit.rasters import plausibility

    path = tmp_path / "b.tif"
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16", tiled=True,
                       blockxsize=32, blockysize=32, compress="deflate") as dst:
        dst.write(np.ones((1, 64, 64), np.uint16))
    Raster(path).close()
    monkeypatch.setattr(plausibility, "MAX_COMPRESSED_BLOCK", 2047)  # a 32 × 32 uint16 block is 2,048 bytes
    with pytest.raises(CnnkitError, match=r"b\.tif stores deflate-compressed blocks of 32 × 32 pixels × 1 samples "
                                          r"\(0 MiB each, decoded whole whatever window is read\): over the 0 MiB"):
        Raster(path)


def test_a_vrt_holds_its_geotiffs_to_the_same_checks(tmp_path):
    source = tmp_path / "band.tif"
    values = _striped(source)
    vrt = tmp_path / "stack.vrt"
    from cnnkit.rasters import stack_vrt

    stack_vrt([source], vrt)
    np.testing.assert_array_equal(Raster(vrt).read_raw(), values)
    _patch_tag(source, "StripOffsets", 0, index=1)
    with pytest.raises(CnnkitError, match=r"band\.tif: block \(1, 0\) lies at bytes 0–384"):
        Raster(vrt)
    with rasterio.open(source, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16", tiled=True,
                       blockxsize=32, blockysize=32, SPARSE_OK=True) as dst:
        dst.write(np.ones((1, 32, 32), np.uint16), window=Window(0, 0, 32, 32))
    stack_vrt([source], vrt)
    with pytest.raises(CnnkitError, match=r"stack\.vrt reads .*band\.tif, which has blocks without data \(sparse\)"):
        Raster(vrt)


def test_predict_refuses_a_vrt_reading_outside_its_folder_unless_allowed(tmp_path):
    from cnnkit.app.predict import predict_files
    from cnnkit.models import TinySegNet
    from cnnkit.predict import Predictor, Preprocessing

    (tmp_path / "shared").mkdir()
    _striped(tmp_path / "private.tif")
    from cnnkit.rasters import stack_vrt

    stack_vrt([tmp_path / "private.tif"], tmp_path / "shared" / "scene.vrt")  # ../private.tif
    predictor = Predictor(TinySegNet(2, 3), Preprocessing(mean=(50.0,), std=(30.0,), multiple_of=4), ("a", "b", "c"))
    with pytest.raises(CnnkitError, match=r"scene\.vrt reads \.\./private\.tif, outside its own folder"):
        predict_files(predictor, [tmp_path / "shared" / "scene.vrt"], tmp_path / "refused")
    assert not [p for p in (tmp_path / "refused").iterdir() if not p.name.startswith(".")]
    run = predict_files(predictor, [tmp_path / "shared" / "scene.vrt"], tmp_path / "allowed", external_sources=True)
    assert run.pixels == 32 * 24
