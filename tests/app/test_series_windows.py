"""Series predicted in tiles read window by window from disk (issue 29): each layout's windows equal the array written;
the network run on windows == run on the whole series (float32: probabilities to 1e-5, labels identical) on an
odd-sized series larger than one tile, for a TIFF page stack and a folder of per-date GeoTIFFs; ``cnnkit predict``
over --max-pixels reads such a series by windows only (the whole read is never called) and writes the whole run's
labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import tifffile
import torch

import cnnkit.data.series
from cnnkit.app.predict import predict_series_files
from cnnkit.data.series import open_series, read_series
from cnnkit.models import spec_for
from cnnkit.models.utae import UTAE
from cnnkit.predict.series import series_tile_geometry, tiled_series_windows
from cnnkit.rasters.reading import PageStack, read_stack
from cnnkit.train.rundir import prepare_run_dir, write_manifest

STEPS, BANDS, HEIGHT, WIDTH = 4, 3, 101, 83
DATES = ["2021-04-02", "2021-04-12", "2021-06-01", "2021-08-30"]
MEAN, STD = [0.5, 1.0, -1.0], [2.0, 1.0, 0.5]


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: one thread is fastest


def _values(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = rng.normal(0, 2, (STEPS, BANDS, HEIGHT, WIDTH)).astype(np.float32)
    stack[1, :, 10:20, 5:15] = np.nan  # a cloud on date 1
    stack[2, 1, 30:33, 20:30] = np.inf  # one band not finite: the date is not valid there
    stack[:, :, 90:, 70:] = np.nan  # never seen: label 255
    return stack


def _page_stack(path, stack) -> None:
    """T × C single-band pages, tiled 16 × 16, deflate: tifffile records the shape (T, C, H, W)."""
    tifffile.imwrite(path, stack, photometric="minisblack", tile=(16, 16), compression="zlib")


def _per_date(folder, stack) -> None:
    """One band-interleaved GeoTIFF of C bands per date, tiled 16 × 16, named by its date."""
    folder.mkdir()
    for day, frame in zip(DATES, stack):
        with rasterio.open(folder / f"{day}.tif", "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=BANDS,
                           dtype="float32", tiled=True, blockxsize=16, blockysize=16, interleave="band") as dst:
            dst.write(frame)


LAYOUTS = {"page-stack": lambda root, stack: _page_stack(root / "s.tif", stack) or root / "s.tif",
           "per-date": lambda root, stack: _per_date(root / "s", stack) or root / "s"}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_windows_equal_the_written_array(tmp_path, layout):
    stack = _values(seed=1)
    stack[3, 2, 50:60, 50:60] = 7.0  # a nodata value in one band
    path = LAYOUTS[layout](tmp_path, stack)
    if layout == "page-stack":
        (tmp_path / "dates.json").write_text(json.dumps({"s": DATES}))
    mask = np.random.default_rng(4).random((STEPS, HEIGHT, WIDTH)) > 0.1
    np.save(tmp_path / "mask.npy", mask.astype(np.uint8))
    with open_series(path, band_count=BANDS, nodata=None) as series, \
            open_series(path, band_count=BANDS, nodata=7.0, mask=tmp_path / "mask.npy") as masked:
        assert series.shape == (STEPS, BANDS, HEIGHT, WIDTH)
        assert [d.isoformat() for d in series.dates.dates] == DATES
        for rows, cols in ((slice(0, 16), slice(0, 16)), (slice(7, 30), slice(13, 37)),
                           (slice(90, 120), slice(-5, None)), (slice(None), slice(None))):
            x, valid = series.read(rows, cols)
            expected = stack[..., rows, cols]
            np.testing.assert_array_equal(x.numpy(), expected)  # NaN where NaN: equal
            np.testing.assert_array_equal(valid.numpy(), np.isfinite(expected).all(1))
            _, valid = masked.read(rows, cols)
            np.testing.assert_array_equal(valid.numpy(), np.isfinite(expected).all(1) & ~(expected == 7.0).any(1)
                                          & mask[:, rows, cols])
    whole = read_series(path, band_count=BANDS)  # the whole read agrees
    np.testing.assert_array_equal(whole[0].numpy(), stack)


def test_page_stack_windows_of_each_tiff_layout(tmp_path):
    """Single-band pages, planar pages of C bands, pixel-interleaved pages of C bands: read_stack's window == the
    array written, in the shape its writer recorded."""
    stack = _values(seed=2)
    window = (slice(5, 38), slice(11, 30))
    for name, options, written in (("single", {}, stack),
                                   ("planar", {"planarconfig": "separate"}, stack),
                                   ("contig", {"planarconfig": "contig"}, stack.transpose(0, 2, 3, 1).copy())):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, written, photometric="minisblack", tile=(16, 16), compression="zlib", **options)
        part = read_stack(path, window=window)
        cut = written[..., 5:38, 11:30, :] if name == "contig" else written[..., 5:38, 11:30]
        assert part.shape == cut.shape, name
        np.testing.assert_array_equal(part.array, cut)
        np.testing.assert_array_equal(part.by_band(), stack[..., 5:38, 11:30].reshape(-1, 33, 19))
        with PageStack(path) as pages:
            assert pages.spatial() and pages.interleaved == (name == "contig")
    # a (T, H, W, C) array with C > 4 is written as T·H pages of (W, C): read_stack's window cuts those pages, but
    # the series' rows run along the pages, so open_series leaves it to the whole read
    rows = tmp_path / "rows.tif"
    written = np.arange(2 * 6 * 9 * 7, dtype=np.float32).reshape(2, 6, 9, 7)
    tifffile.imwrite(rows, written, photometric="minisblack")
    with PageStack(rows) as pages:
        assert (pages.pages, pages.height, pages.width) == (12, 9, 7)
    np.testing.assert_array_equal(read_stack(rows, window=(slice(2, 5), slice(1, 3))).array, written[..., 2:5, 1:3])
    assert open_series(rows, band_count=7) is None
    assert read_series(rows, band_count=7)[0].shape == (2, 7, 6, 9)


@pytest.fixture(scope="module")
def utae_run(tmp_path_factory):
    torch.manual_seed(3)
    run = prepare_run_dir(tmp_path_factory.mktemp("utae") / "run", log=lambda _: None)
    spec = spec_for("UTAE", args={"encoder_widths": [4, 8, 8], "num_heads": 2})
    net = UTAE(BANDS, 5, encoder_widths=(4, 8, 8), num_heads=2)
    write_manifest(run, net, spec=spec, in_channels=BANDS, num_classes=5,
                   preprocessing={"kind": "series", "mean": MEAN, "std": STD, "band_count": BANDS, "nodata": None},
                   class_names=[f"c{k}" for k in range(5)], palette=[(k * 40, 0, 0) for k in range(5)],
                   ignore_index=None, task="series-segmentation")
    return run, net.eval()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_tiles_read_by_windows_equal_the_whole_series(utae_run, tmp_path, layout, monkeypatch):
    run, net = utae_run
    stack = _values(seed=3)
    path = LAYOUTS[layout](tmp_path, stack)
    if layout == "page-stack":
        (tmp_path / "dates.json").write_text(json.dumps({"s": DATES}))
    # the reference: the series written, standardised by hand, the network run whole
    series = torch.from_numpy(stack)
    valid = torch.isfinite(series).all(1)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    x = torch.where(valid[:, None], (series - mean) / std, torch.zeros(()))
    days = torch.tensor([[91, 101, 151, 241]])  # days since 2021-01-01, by hand
    with torch.no_grad():
        whole = net(x[None], valid[None], days)
    reads = []

    def read(rows, cols):
        part, ok = source.read(rows, cols)
        reads.append(tuple(part.shape[-2:]))
        return torch.where(ok[:, None], (part - mean) / std, torch.zeros(())), ok

    with open_series(path, band_count=BANDS) as source:
        assert torch.equal(source.dates.days(None), days[0])
        tiled = tiled_series_windows(net, read, (HEIGHT, WIDTH), BANDS, days, tile=16,
                                     geometry=series_tile_geometry(net, BANDS, days))
    assert len(reads) > 4 and max(h * w for h, w in reads) < HEIGHT * WIDTH  # tiles, none the whole series
    assert (torch.softmax(tiled, 1) - torch.softmax(whole, 1)).abs().max() <= 1e-5
    assert torch.equal(tiled.argmax(1), whole.argmax(1))
    # through predict: over --max-pixels the series is read by windows only, and the labels are the whole run's
    plain = predict_series_files(run, [path], tmp_path / "whole", tiff=True)
    assert not plain.tiled

    def no_whole_read(*args, **kwargs):
        raise AssertionError("the tiled run read the whole series")

    monkeypatch.setattr(cnnkit.data.series, "read_series", no_whole_read)
    tiled_run = predict_series_files(run, [path], tmp_path / "tiled", tiff=True, max_pixels=100, tile=16)
    assert tiled_run.tiled == [path]
    with rasterio.open(tmp_path / "tiled" / "s_labels.tif") as ds, \
            rasterio.open(tmp_path / "whole" / "s_labels.tif") as reference:
        labels = ds.read(1)
        np.testing.assert_array_equal(labels, reference.read(1))
    expected = np.where(valid.any(0).numpy(), whole[0].argmax(0).numpy(), 255)
    np.testing.assert_array_equal(labels, expected)
    assert (labels == 255).any() and len(np.unique(labels)) > 2
