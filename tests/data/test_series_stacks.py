"""Series stacks read through the one GDAL reader (cnnkit.rasters.read_stack) equal what tifffile — an independent
TIFF reader — reads from the same file: every dtype, planar configuration and compression a series is written with;
damaged stacks are refused naming the file; dates ride in the TIFF tags."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import tifffile
import torch

from cnnkit.data.series import SeriesFolder, read_series
from cnnkit.errors import CnnkitError, UnsupportedError
from cnnkit.rasters import read_stack
from cnnkit.rasters.plausibility import check_stack

# (array shape, tifffile options): T x C x H x W in single-band pages, band-interleaved pages (separate) and
# pixel-interleaved pages (contig, written T x H x W x C), and T x H x W (one band)
_LAYOUTS = {
    "single-band pages": ((4, 3, 9, 11), {"photometric": "minisblack"}),
    "separate": ((4, 3, 9, 11), {"photometric": "minisblack", "planarconfig": "separate"}),
    "contig": ((4, 9, 11, 3), {"photometric": "minisblack", "planarconfig": "contig"}),
    "one band": ((4, 9, 11), {"photometric": "minisblack"}),
}


def _values(dtype, shape, rng):
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("layout", list(_LAYOUTS))
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_stack_equals_tifffile(tmp_path, dtype, layout, compression):
    shape, options = _LAYOUTS[layout]
    rng = np.random.default_rng(sum(map(ord, dtype + layout)) + (compression is not None))
    written = _values(dtype, shape, rng)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, written, compression=compression, rowsperstrip=4, **options)
    reference = tifffile.imread(path)
    np.testing.assert_array_equal(reference, written)  # the reference reads what was written
    raw = read_stack(path, raw=True)
    assert raw.array.dtype == reference.dtype and raw.array.shape == reference.shape
    np.testing.assert_array_equal(raw.array, reference)
    values = read_stack(path)
    assert values.array.dtype == np.float32
    np.testing.assert_array_equal(values.array, reference.astype(np.float32))
    # through the series reader: (T, C, H, W) float32, whichever layout was written
    band_count = 1 if layout == "one band" else 3
    series, valid = read_series(path, band_count=band_count)
    expected = reference.reshape(4, 1, 9, 11) if layout == "one band" else (
        np.moveaxis(reference, -1, 1) if layout == "contig" else reference)
    np.testing.assert_array_equal(series.numpy(), expected.astype(np.float32))
    assert torch.equal(valid, torch.from_numpy(np.isfinite(expected).all(1)))


def test_tiled_stack_and_folder_item_equal_tifffile(tmp_path):
    """Tiled pages (tiles cut at the edges) in a training folder; the label and mask TIFFs keep their dtype."""
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    for name in ("series", "labels", "masks"):
        (root / name).mkdir(parents=True)
    written = rng.normal(size=(3, 2, 40, 36)).astype(np.float32)
    written[1, :, 5:9, 3:4] = np.nan
    tifffile.imwrite(root / "series" / "a.tif", written, photometric="minisblack", planarconfig="separate",
                     tile=(16, 16), compression="zlib")
    label = rng.integers(0, 5, (40, 36)).astype(np.uint8)
    tifffile.imwrite(root / "labels" / "a.tif", label)
    mask = rng.integers(0, 2, (3, 40, 36)).astype(np.uint8)
    tifffile.imwrite(root / "masks" / "a.tif", mask, photometric="minisblack")
    series, valid, target = SeriesFolder(root)[0]
    np.testing.assert_array_equal(series.numpy(), tifffile.imread(root / "series" / "a.tif"))
    assert torch.equal(target, torch.from_numpy(tifffile.imread(root / "labels" / "a.tif").astype(np.int64)))
    expected = np.isfinite(written).all(1) & (tifffile.imread(root / "masks" / "a.tif") != 0)
    assert torch.equal(valid, torch.from_numpy(expected)) and not valid[1, 5, 3]


def test_declared_nodata_of_every_page_is_no_data(tmp_path):
    """GDAL_NODATA on every page (tifffile writes the tag as asked): those pixels read as NaN, as in a single image."""
    written = np.arange(2 * 3 * 5 * 4, dtype=np.int16).reshape(2, 3, 5, 4)
    written[0, 1, 2, 2] = written[1, 2, 4, 3] = -1
    path = tmp_path / "n.tif"
    with tifffile.TiffWriter(path) as tif:
        for page in written:
            tif.write(page, photometric="minisblack", planarconfig="separate", extratags=[(42113, "s", 0, "-1", True)])
    stack = read_stack(path)
    assert stack.pages == 2 and stack.bands == 3 and stack.nodata == (-1.0, -1.0, -1.0)
    expected = np.where(written == -1, np.nan, written).astype(np.float32)
    np.testing.assert_array_equal(stack.array, expected)
    np.testing.assert_array_equal(read_stack(path, raw=True).array, written)


def test_dates_from_tifffile_tags_and_page_band_descriptions(tmp_path):
    from datetime import date

    rng = np.random.default_rng(5)
    path = tmp_path / "t.tif"
    written = rng.normal(size=(3, 2, 6, 5)).astype(np.float32)
    tifffile.imwrite(path, written, photometric="minisblack", planarconfig="separate",
                     metadata={"dates": ["2024-04-02", "20240511", "2024-06-30"]})
    series, _, dates = read_series(path, band_count=2, with_dates=True)
    np.testing.assert_array_equal(series.numpy(), written)
    assert dates.source == "TIFF tags" and dates.dates == (date(2024, 4, 2), date(2024, 5, 11), date(2024, 6, 30))
    assert dates.days().tolist() == [92, 131, 181]
    # a GDAL metadata item, written by rasterio
    gdal = tmp_path / "g.tif"
    with rasterio.open(gdal, "w", driver="GTiff", width=5, height=6, count=6, dtype="float32") as dst:
        dst.write(written.reshape(6, 6, 5))
        dst.update_tags(dates="2023-01-05,2023-02-05 2023-03-05")
    _, _, dates = read_series(gdal, band_count=2, with_dates=True)
    assert dates.source == "TIFF tags" and dates.days().tolist() == [4, 35, 63]
    # dates in the tags that go backwards are refused, naming the file
    tifffile.imwrite(path, written, photometric="minisblack", metadata={"dates": ["2024-04-02", "2024-03-01", "x"]})
    with pytest.raises(CnnkitError, match=r"t\.tif: TIFF tag dates\[2\]: cannot parse the date 'x'"):
        read_series(path, band_count=2, with_dates=True)
    # a stack of GDAL pages whose band descriptions hold the dates, page after page
    paged = tmp_path / "p.tif"
    with tifffile.TiffWriter(paged) as tif:
        for t, day in enumerate(["20220301", "20220401", "20220501"]):
            meta = "<GDALMetadata>" + "".join(
                f'<Item name="DESCRIPTION" sample="{b}" role="description">{day}_B{b + 1}</Item>' for b in range(2)
            ) + "</GDALMetadata>"
            tif.write(written[t], photometric="minisblack", planarconfig="separate",
                      extratags=[(42112, "s", 0, meta, True)], metadata=None)
    stack = read_stack(paged)
    assert stack.descriptions == ("20220301_B1", "20220301_B2", "20220401_B1", "20220401_B2", "20220501_B1",
                                  "20220501_B2")
    series, _, dates = read_series(paged, with_dates=True)
    np.testing.assert_array_equal(series.numpy(), written)
    assert dates.source == "band descriptions" and dates.days().tolist() == [59, 90, 120]


def test_damaged_stacks_are_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(9)
    written = rng.normal(size=(4, 2, 16, 16)).astype(np.float32)
    path = tmp_path / "broken.tif"
    tifffile.imwrite(path, written, photometric="minisblack", planarconfig="separate", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(count)  # page 3's first strip: no longer deflate data
    path.write_bytes(bytes(data))
    with pytest.raises(CnnkitError, match=r"Could not read .*broken\.tif"):
        read_stack(path)
    root = tmp_path / "data"
    (root / "series").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "series" / "broken.tif").write_bytes(bytes(data))
    np.save(root / "labels" / "broken.npy", np.eye(2, dtype=np.uint8)[np.zeros((16, 16), int)])
    with pytest.raises(CnnkitError, match=r"Could not read .*series/broken\.tif"):
        SeriesFolder(root)[0]
    # truncated inside the last page: the block table contradicts the file's length
    truncated = tmp_path / "short.tif"
    tifffile.imwrite(truncated, written, photometric="minisblack", planarconfig="separate")
    with tifffile.TiffFile(truncated) as tif:
        end = tif.pages[3].dataoffsets[-1]
    truncated.write_bytes(truncated.read_bytes()[:end + 10])
    with pytest.raises(CnnkitError, match=r"short\.tif: its directory 2 lies at bytes .* the file is truncated"):
        read_series(truncated, band_count=2)
    # pages that differ
    mixed = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(mixed) as tif:
        tif.write(written[0], photometric="minisblack", planarconfig="separate")
        tif.write(written[1, :, :8], photometric="minisblack", planarconfig="separate")
    with pytest.raises(UnsupportedError, match=r"mixed\.tif: page 2 holds 2 bands of 8 × 16 float32, page 1 2 bands "
                                               r"of 16 × 16 float32"):
        read_stack(mixed)
    # a stack over the budget, refused before decoding
    with pytest.raises(CnnkitError, match=r"s\.tif declares 4 pages of 2 bands of 16 × 16 pixels \(8,192 bytes"):
        check_stack("s.tif", 4, 2, 16, 16, 4, budget=4096)


def test_window_reader_refuses_a_stack_of_multi_band_pages(tmp_path):
    """Raster reads one image: a stack of multi-band pages is not one, and reading its first page alone would leave
    the other dates out silently (as before this reader knew stacks)."""
    from cnnkit.rasters import Raster

    path = tmp_path / "series.tif"
    tifffile.imwrite(path, np.zeros((3, 2, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate")
    with pytest.raises(UnsupportedError, match=r"series\.tif holds 3 pages of 2 bands of 8 × 8: a stack"):
        Raster(path)
    assert read_stack(path).shape == (3, 2, 8, 8)
    one = tmp_path / "one.tif"  # one multi-band page: one image
    tifffile.imwrite(one, np.zeros((2, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate")
    with Raster(one) as raster:
        assert raster.shape == (2, 8, 8) and raster.pages == 1
