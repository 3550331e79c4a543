"""cnnkit.rasters: the reader honours the file's metadata, the COG writer's windows equal the array, background
threads keep order and report errors, GDAL's errors name the file."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rasterio
from affine import Affine

import cnnkit.rasters
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.rasters import BackgroundWriter, CogWriter, Georeference, Raster, prefetch, write_cog

TRANSFORM = Affine(20.0, 0.0, 600000.0, 0.0, -20.0, 5100000.0)


def test_public_names():
    assert {"Raster", "CogWriter", "write_cog", "Georeference", "prefetch", "BackgroundWriter", "raster_errors",
            "read_georeference", "RASTER_EXTENSIONS", "read_picture", "check_vrt_sources", "prepare_folder",
            "FolderLock", "Staging"} <= set(cnnkit.rasters.__all__)
    assert all(hasattr(cnnkit.rasters, name) for name in cnnkit.rasters.__all__)


def test_reader_honours_nodata_scale_offset_and_names(tmp_path):
    stored = np.arange(2 * 30 * 40, dtype=np.int16).reshape(2, 30, 40) % 500
    stored[1, 3, 4] = -1
    with rasterio.open(tmp_path / "s.tif", "w", driver="GTiff", width=40, height=30, count=2, dtype="int16",
                       nodata=-1, crs="EPSG:32631", transform=TRANSFORM, tiled=True, blockxsize=16,
                       blockysize=16) as dst:
        dst.write(stored)
        dst.scales, dst.offsets = (0.5, 2.0), (10.0, -1.0)
        dst.descriptions = ("red", "nir")
    raster = Raster(tmp_path / "s.tif")
    assert raster.georeference == Georeference(rasterio.crs.CRS.from_epsg(32631), TRANSFORM)
    assert raster.descriptions == ("red", "nir") and raster.nodata == (-1.0, -1.0)
    window = raster.read(slice(2, 20), slice(1, 33))
    expected = stored[:, 2:20, 1:33].astype(np.float32) * np.array([0.5, 2.0], np.float32)[:, None, None]
    expected += np.array([10.0, -1.0], np.float32)[:, None, None]
    expected[1, 1, 3] = np.nan  # the declared nodata: no data, whatever the scale
    np.testing.assert_array_equal(window, expected)
    np.testing.assert_array_equal(raster.read_raw(slice(0, 5), slice(0, 5)), stored[:, :5, :5])
    raster.close()


def test_damaged_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(CnnkitError, match=r"Could not open the raster .*bad\.tif"):
        Raster(bad)
    with pytest.raises(CnnkitError, match="does not exist"):
        Raster(tmp_path / "absent.tif")


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_cog_windows_equal_the_array(tmp_path, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((300, 260, 3)) * 100).astype(dtype)
    with CogWriter(tmp_path / "c.tif", array.shape, dtype, block=128,
                   georeference=Georeference("EPSG:32631", TRANSFORM)) as out:
        for top in range(0, 300, 70):  # windows not aligned to the file's blocks, in any order
            for left in (130, 0):
                out[top:top + 70, left:left + 130] = array[top:top + 70, left:left + 130]
    with rasterio.open(tmp_path / "c.tif") as ds:
        np.testing.assert_array_equal(ds.read().transpose(1, 2, 0), array)
        assert ds.transform == TRANSFORM and ds.crs == "EPSG:32631"
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2, 4]  # down to one block
        assert ds.profile["compress"] == "deflate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]  # no temporary file left


def test_quantised_and_half_float_scores(tmp_path):
    p = np.random.default_rng(1).random((20, 30)).astype(np.float32)
    write_cog(tmp_path / "q.tif", p, "uint8", scale=1 / 255)
    write_cog(tmp_path / "h.tif", p, "float16")
    with rasterio.open(tmp_path / "q.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), np.round(p.astype(np.float64) * 255).astype(np.uint8))
    with rasterio.open(tmp_path / "h.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), p.astype(np.float16).astype(np.float32))


def test_an_aborted_cog_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="network failed"), CogWriter(tmp_path / "x.tif", (50, 50), "uint8") as out:
        out[0:10, 0:10] = 1
        raise RuntimeError("network failed")
    assert list(tmp_path.iterdir()) == []


def test_cog_writer_refusals(tmp_path):
    with pytest.raises(ShapeError, match=r"Unknown COG dtype 'complex64'"):
        CogWriter(tmp_path / "x.tif", (5, 5), "complex64")
    with pytest.raises(ShapeError, match="Unknown overview resampling 'cubic'"):
        CogWriter(tmp_path / "x.tif", (5, 5), "uint8", resampling="cubic")
    with pytest.raises(ShapeError, match=r"scale quantises into an integer dtype"):
        CogWriter(tmp_path / "x.tif", (5, 5), "float32", scale=0.1)


def test_prefetch_keeps_order_bounds_the_queue_and_reraises():
    loaded = []

    def load(i):
        loaded.append(i)
        return i * 10

    stream = prefetch(range(20), load, depth=2)
    assert next(stream) == (0, 0)
    time.sleep(0.2)
    assert len(loaded) <= 4  # one handed out, two waiting, one being put
    assert [v for _, v in stream] == [10 * i for i in range(1, 20)]

    def broken(i):
        if i == 3:
            raise OSError("block 3 unreadable")
        return i

    with pytest.raises(OSError, match="block 3 unreadable"):
        list(prefetch(range(10), broken))
    before = threading.active_count()
    stream = prefetch(range(1000), lambda i: i)
    next(stream)
    stream.close()  # a consumer that stops early stops the thread
    time.sleep(0.2)
    assert threading.active_count() <= before


def test_background_writer_runs_in_order_and_reports_the_first_error():
    done = []
    with BackgroundWriter(depth=1) as writer:
        for i in range(10):
            writer.submit(done.append, i)
    assert done == list(range(10))

    def fail(i):
        raise OSError(f"disk full at {i}")

    with pytest.raises(OSError, match="disk full at 0"), BackgroundWriter() as writer:
        for i in range(3):
            writer.submit(fail, i)


def test_a_sweep_of_haloed_tiles_decodes_each_block_once_and_holds_less_than_two_rows_of_blocks(tmp_path):
    """Tiles of 24 px with a 3-px halo swept row by row over 32-px blocks: every window equals the array, every block
    is decoded once, and the cache drops the rows above each row of tiles (it holds at most the 19 rows of one row of
    blocks below the top of a window and the next whole row, 51 rows, where whole blocks would be 64); a window that
    goes back up is still read right (its blocks decoded again)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (2, 100, 90)).astype(np.uint16)
    path = tmp_path / "x.tif"
    with rasterio.open(path, "w", driver="GTiff", width=90, height=100, count=2, dtype="uint16", tiled=True,
                       blockxsize=32, blockysize=32, compress="deflate") as dst:
        dst.write(data)
    raster = Raster(path)
    source = raster._main
    row_of_blocks = 32 * 90 * 2 * 2
    held = []
    for top in range(0, 100, 24):
        for left in range(0, 90, 24):
            rows, cols = slice(max(top - 3, 0), min(top + 27, 100)), slice(max(left - 3, 0), min(left + 27, 90))
            np.testing.assert_array_equal(raster.read_raw(rows, cols), data[:, rows, cols])
            held.append(source._cached)
    assert raster.blocks_decoded == 4 * 3
    assert max(held) == 51 * 90 * 2 * 2 < 2 * row_of_blocks
    np.testing.assert_array_equal(raster.read_raw(slice(0, 40), slice(0, 90)), data[:, 0:40])  # back up
    assert raster.blocks_decoded > 4 * 3
    raster.close()
