"""SeriesFolder and collate_series on generated folders: stacks in both layouts, per-date folders, one-hot labels
with unlabelled pixels, NaN clouds, nodata and explicit masks — checked against the arrays written."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from cnnkit.data.series import SeriesFolder, collate_series
from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.models import SeriesSegNet


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for name in ("series", "labels", "masks"):
        (root / name).mkdir(parents=True)
    # a (T, C, H, W) stack with NaN clouds, a one-hot (H, W, K) label with all-zero pixels
    a = rng.normal(size=(6, 3, 10, 12)).astype(np.float32)
    a[2, :, :4, :5] = np.nan
    tifffile.imwrite(root / "series" / "a.tif", a, photometric="minisblack")
    onehot = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (10, 12))]
    onehot[0, :] = 0
    np.save(root / "labels" / "a.npy", onehot)
    # a (T, H, W, C) stack with nodata, a (K, H, W) one-hot label, an explicit mask
    b = rng.normal(size=(4, 7, 9, 3)).astype(np.float32)
    b[1, 3, 3, 0] = -9999
    tifffile.imwrite(root / "series" / "b.tif", b, photometric="minisblack", planarconfig="contig")
    np.save(root / "labels" / "b.npy", np.moveaxis(np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (7, 9))], -1, 0))
    mask_b = np.ones((4, 7, 9), np.uint8)
    mask_b[3, :2] = 0
    np.save(root / "masks" / "b.npy", mask_b)
    # a folder of per-date PNGs (H, W, 3) and a label image with 255 = no label
    (root / "series" / "c").mkdir()
    frames = rng.integers(0, 255, (5, 8, 6, 3)).astype(np.uint8)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(root / "series" / "c" / f"2024-0{t + 1}-01.png")
    label_c = rng.integers(0, 4, (8, 6)).astype(np.uint8)
    label_c[0, 0] = 255
    Image.fromarray(label_c).save(root / "labels" / "c.png")
    return root, a, onehot, b, mask_b, frames, label_c


def test_items_equal_the_files(tmp_path):
    root, a, onehot, b, mask_b, frames, label_c = _folder(tmp_path)
    data = SeriesFolder(root, nodata=-9999, ignore_index=255)
    assert len(data) == 3
    series, valid, label = data[0]
    np.testing.assert_array_equal(series.numpy(), a)
    assert torch.equal(valid, torch.from_numpy(np.isfinite(a).all(1)))
    expected = np.where(onehot.sum(-1) > 0, onehot.argmax(-1), -100)
    assert torch.equal(label, torch.from_numpy(expected))
    series, valid, label = data[1]
    np.testing.assert_array_equal(series.numpy(), np.moveaxis(b, -1, 1))
    expected_valid = (b != -9999).all(-1) & (mask_b != 0)
    assert torch.equal(valid, torch.from_numpy(expected_valid)) and not valid[1, 3, 3] and not valid[3, 0].any()
    series, valid, label = item = data[2]
    np.testing.assert_array_equal(series.numpy(), np.moveaxis(frames, -1, 1).astype(np.float32))
    assert label[0, 0] == -100 and label[1, 1] == int(label_c[1, 1])
    # dates: c's file names 2024-01-01 … 2024-05-01 (days since January 1, 2024, a leap year); a and b have none
    assert item.days.tolist() == [0, 31, 60, 91, 121] and data.dates(2).source == "file names"
    assert data[0].days.tolist() == list(range(6)) and data.dates(1).source == "file order"
    assert data.time_axis == ("acquisition dates (from file names) for 1 series; "
                              "the order of the files (no acquisition dates found) for 2 series")


def test_collated_batch_runs_exactly(tmp_path):
    """A batch of the folder's series through SeriesSegNet equals each series alone (float64)."""
    root = _folder(tmp_path)[0]
    data = SeriesFolder(root, nodata=-9999, ignore_index=255)
    items = [data[i] for i in range(3)]
    x, valid, labels = collate_series(items)
    assert x.shape == (3, 6, 3, 10, 12) and valid.shape == (3, 6, 10, 12) and labels.shape == (3, 10, 12)
    assert (labels[1, 7:] == -100).all() and not valid[1, 4:].any()
    torch.manual_seed(0)
    net = SeriesSegNet(3, 4, width=4, hidden=4).double()
    out = net(x.double(), valid)
    for n, (series, v, _) in enumerate(items):
        alone = net(series[None].double(), v[None])[0]
        h, w = series.shape[2:]
        torch.testing.assert_close(out[n, :, :h, :w], alone, atol=1e-10, rtol=1e-10)


def test_errors(tmp_path):
    root = _folder(tmp_path)[0]
    (root / "series" / "d.tif").write_bytes(b"not a tiff")
    with pytest.raises(CnnkitError, match="No label for the series"):
        SeriesFolder(root)
    np.save(root / "labels" / "d.npy", np.zeros((3, 3, 2)))
    with pytest.raises(CnnkitError, match=r"Could not (read|open the raster) .*d\.tif"):
        SeriesFolder(root)[3]
    with pytest.raises(ShapeError, match="nodata must be a number"):
        SeriesFolder(root, nodata="0")
    with pytest.raises(ShapeError, match=r"samples\[1\] must be"):
        collate_series([(torch.zeros(2, 3, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), torch.zeros(4, 4)),
                        (torch.zeros(2, 2, 4, 4), torch.ones(2, 4, 4, dtype=torch.bool), torch.zeros(4, 4))])


def test_band_statistics_and_standardisation_match_numpy():
    """Mean and std over valid pixels only (NaN clouds and invalid dates left out), vs NumPy's nan-statistics."""
    from cnnkit.data.series import StandardizedSeries, series_band_statistics

    rng = np.random.default_rng(1)
    items = []
    for t, h, w in [(4, 5, 6), (2, 7, 3)]:
        series = torch.from_numpy(rng.normal(2.0, 3.0, (t, 3, h, w)).astype(np.float32))
        valid = torch.from_numpy(rng.random((t, h, w)) > 0.3)
        series[~valid[:, None].expand_as(series)] = float("nan")
        items.append((series, valid, torch.zeros(h, w, dtype=torch.long)))
    mean, std = series_band_statistics(items)
    values = np.concatenate([np.moveaxis(s.numpy(), 1, 0).reshape(3, -1) for s, _, _ in items], axis=1)
    np.testing.assert_allclose(mean.numpy(), np.nanmean(values, axis=1), rtol=1e-5)
    np.testing.assert_allclose(std.numpy(), np.nanstd(values, axis=1), rtol=1e-5)
    data = StandardizedSeries(items)
    assert data.sizes == [(4, 5, 6), (2, 7, 3)]
    scaled, valid, _ = data[1]
    series = items[1][0].numpy()
    scaled_by_hand = (series - mean.numpy()[:, None, None]) / std.numpy()[:, None, None]
    expected = np.where(items[1][1].numpy()[:, None], scaled_by_hand, 0.0)
    np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_series_crops_are_windows_of_the_series_with_every_date():
    """Each crop equals a window of its series (found by search), all dates and the weight map kept; small series
    are padded with valid = False and -100; rare-class crops hold the rare class."""
    from cnnkit.data.series import SeriesCrops

    rng = np.random.default_rng(2)
    items = []
    for t, h, w in [(5, 12, 14), (3, 6, 7)]:
        series = torch.from_numpy(rng.normal(size=(t, 2, h, w)).astype(np.float32))
        valid = torch.from_numpy(rng.random((t, h, w)) > 0.2)
        label = torch.from_numpy(rng.integers(0, 2, (h, w)))
        weight = torch.from_numpy(rng.random((h, w)).astype(np.float32))
        items.append((torch.where(valid[:, None], series, torch.zeros(())), valid, label, weight))
    items[0][2][9, 11] = 2  # one rare pixel
    crops = SeriesCrops(items, 8, {2: 1.0}, num_crops=3, generator=torch.Generator().manual_seed(0))
    assert len(crops) == 6 and crops.sizes[0] == (5, 8, 8) and crops.sizes[5] == (3, 8, 8)
    for index in range(3):
        series, valid, label, weight = crops[index]
        assert series.shape == (5, 2, 8, 8) and (label == 2).any()
        source = items[0]
        found = [(y, x) for y in range(12 - 8 + 1) for x in range(14 - 8 + 1)
                 if torch.equal(source[0][:, :, y:y + 8, x:x + 8], series)]
        assert len(found) == 1
        y, x = found[0]
        assert torch.equal(valid, source[1][:, y:y + 8, x:x + 8]) and torch.equal(label, source[2][y:y + 8, x:x + 8])
        assert torch.equal(weight, source[3][y:y + 8, x:x + 8])
    series, valid, label, weight = crops[3]  # the 6 × 7 series, padded to 8 × 8
    assert not valid[:, 6:].any() and not valid[:, :, 7:].any() and (label[6:] == -100).all()
    assert torch.equal(series[:, :, :6, :7], items[1][0]) and (weight[6:] == 0).all()


def test_collate_pads_pixel_weights():
    a = (torch.ones(2, 1, 3, 4), torch.ones(2, 3, 4, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.long),
         torch.full((3, 4), 0.5))
    b = (torch.ones(3, 1, 2, 5), torch.ones(3, 2, 5, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.long),
         torch.full((2, 5), 2.0))
    *_, weight = collate_series([a, b])
    assert weight.shape == (2, 3, 5)
    assert torch.equal(weight[0, :3, :4], torch.full((3, 4), 0.5)) and (weight[0, :, 4] == 0).all()
    assert torch.equal(weight[1, :2], torch.full((2, 5), 2.0)) and (weight[1, 2] == 0).all()
    with pytest.raises(ShapeError, match=r"samples\[1\] must be \(series, valid, label, weight\)"):
        collate_series([a, b[:3]])


def test_weight_maps_from_the_folder(tmp_path):
    root = _folder(tmp_path)[0]
    (root / "weights").mkdir()
    rng = np.random.default_rng(5)
    maps = {"a": rng.random((10, 12)), "b": rng.random((7, 9))}
    for stem, weight in maps.items():
        np.save(root / "weights" / f"{stem}.npy", weight)
    with pytest.raises(CnnkitError, match="every series needs a weight map: none for c"):
        SeriesFolder(root, nodata=-9999, ignore_index=255)
    np.save(root / "weights" / "c.npy", -np.ones((8, 6)))
    data = SeriesFolder(root, nodata=-9999, ignore_index=255)
    item = data[0]
    assert len(item) == 4 and torch.equal(item[3], torch.from_numpy(maps["a"].astype(np.float32)))
    with pytest.raises(ShapeError, match=r"c\.npy: a weight map must be H × W = \(8, 6\) of finite values ≥ 0"):
        data[2]


def test_dated_geotiff_and_dates_json_reach_the_batch(tmp_path):
    """A GeoTIFF of T·C bands whose descriptions hold the dates (read through cnnkit.rasters: declared nodata is no
    data), a stack dated by series/dates.json; the days go through standardisation, crops and collate_series."""
    import json

    import rasterio

    from cnnkit.data.series import SeriesCrops, StandardizedSeries, read_series

    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    for name in ("series", "labels", "masks"):
        (root / name).mkdir(parents=True)
    bands = rng.normal(size=(3, 2, 6, 5)).astype(np.float32)  # T = 3, C = 2
    bands[1, 0, 2, 3] = -9999
    with rasterio.open(root / "series" / "g.tif", "w", driver="GTiff", width=5, height=6, count=6, dtype="float32",
                       nodata=-9999, crs="EPSG:32631", transform=rasterio.transform.from_origin(0, 60, 10, 10)) as dst:
        dst.write(bands.reshape(6, 6, 5))
        for i, day in enumerate(["20230410", "20230410", "2023-06-01", "2023-06-01", "20230715", "20230715"]):
            dst.set_band_description(i + 1, f"{day}_B{i % 2 + 1}")
    np.save(root / "labels" / "g.npy", np.eye(3, dtype=np.uint8)[rng.integers(0, 3, (6, 5))])
    tifffile.imwrite(root / "series" / "h.tif", rng.normal(size=(2, 2, 6, 5)).astype(np.float32),
                     photometric="minisblack")
    np.save(root / "labels" / "h.npy", np.eye(3, dtype=np.uint8)[rng.integers(0, 3, (6, 5))])
    (root / "series" / "dates.json").write_text(json.dumps({"h": ["2023-05-02", "2023-05-20"]}))
    data = SeriesFolder(root)
    series, valid, _ = item = data[0]
    np.testing.assert_array_equal(np.nan_to_num(series.numpy(), nan=-9999), bands)
    assert not valid[1, 2, 3] and int((~valid).sum()) == 1
    assert item.days.tolist() == [99, 151, 195] and data.dates(0).source == "band descriptions"
    assert data[1].days.tolist() == [121, 139] and data.dates(1).source == "dates.json"
    assert data.time_axis == ("acquisition dates (from band descriptions) for 1 series; acquisition dates (from "
                              "dates.json) for 1 series")
    _, read_valid, read_dates = read_series(root / "series" / "g.tif", band_count=2, with_dates=True)
    assert torch.equal(read_valid, valid) and read_dates == data.dates(0)
    standardized = StandardizedSeries(data)
    assert standardized[0].days.tolist() == [99, 151, 195]
    crops = SeriesCrops(standardized, 4, num_crops=2, generator=torch.Generator().manual_seed(0))
    assert [crops[i].days.tolist() for i in range(4)] == [[99, 151, 195]] * 2 + [[121, 139]] * 2
    batch = collate_series([crops[3], crops[0]])
    assert batch.days.tolist() == [[121, 139, 0], [99, 151, 195]]
    x, batch_valid, labels = batch  # still the three tensors
    assert x.shape == (2, 3, 2, 4, 4) and labels.shape == (2, 4, 4) and not batch_valid[0, 2].any()
    # a mask with another number of dates than the image, named
    np.save(root / "masks" / "g.npy", np.ones((2, 6, 5), np.uint8))
    with pytest.raises(ShapeError, match=r"g\.npy: the mask has 2 dates, the series .*g\.tif has 3"):
        SeriesFolder(root)[0]
