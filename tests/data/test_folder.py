"""SegmentationFolder: PNG and TIFF pairs round-trip exactly, errors name the files, DataLoader works."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from cnnkit.data.folder import SegmentationFolder
from cnnkit.errors import CnnkitError, ShapeError, UnsupportedError
from cnnkit.masking import PaddedBatch, collate_padded


def _palette_png(labels: np.ndarray, path) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    img.save(path)


@pytest.fixture()
def folder(tmp_path):
    """Two RGB PNGs with palette / grayscale masks and two 4-band TIFFs (HWC and CHW) with TIFF masks."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    expected = {}
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    lab = rng.integers(0, 4, (5, 7), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "images" / "a.png")
    _palette_png(lab, tmp_path / "masks" / "a.png")
    expected["a"] = (rgb.transpose(2, 0, 1), lab)

    gray_img = rng.integers(0, 256, (6, 3, 3), dtype=np.uint8)
    lab_b = rng.integers(0, 3, (6, 3), dtype=np.uint8)
    Image.fromarray(gray_img).save(tmp_path / "images" / "b.png")
    Image.fromarray(lab_b, mode="L").save(tmp_path / "masks" / "b.png")
    expected["b"] = (gray_img.transpose(2, 0, 1), lab_b)

    hwc = rng.integers(0, 65535, (9, 4, 4), dtype=np.uint16)
    lab_c = rng.integers(0, 5, (9, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "images" / "c.tif", hwc, photometric="minisblack", planarconfig="contig")
    tifffile.imwrite(tmp_path / "masks" / "c.tif", lab_c)
    expected["c"] = (hwc.transpose(2, 0, 1), lab_c)

    chw = rng.normal(size=(4, 8, 10)).astype(np.float32)
    lab_d = rng.integers(0, 5, (8, 10), dtype=np.int32)
    lab_d[0, :3] = 255
    tifffile.imwrite(tmp_path / "images" / "d.tiff", chw, photometric="minisblack", planarconfig="separate")
    tifffile.imwrite(tmp_path / "masks" / "d.tiff", lab_d)
    expected["d"] = (chw, lab_d)
    return tmp_path, expected


def test_values_round_trip_exactly(folder):
    root, expected = folder
    ds = SegmentationFolder(root)
    assert len(ds) == 4
    for (image_path, _), index in zip(ds.samples, range(len(ds))):
        image, label = ds[index]
        want_image, want_label = expected[image_path.stem]
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        assert image.shape == want_image.shape and label.shape == want_label.shape
        np.testing.assert_array_equal(image.numpy(), want_image.astype(np.float32))
        np.testing.assert_array_equal(label.numpy(), want_label.astype(np.int64))


def test_bands_and_ignore_index(folder):
    root, expected = folder
    (root / "images" / "a.png").unlink(), (root / "masks" / "a.png").unlink()
    (root / "images" / "b.png").unlink(), (root / "masks" / "b.png").unlink()
    ds = SegmentationFolder(root, bands=(3, 0), ignore_index=255)
    image, label = ds[1]
    chw, lab_d = expected["d"]
    np.testing.assert_array_equal(image.numpy(), chw[[3, 0]])
    want = lab_d.astype(np.int64)
    want[want == 255] = -100
    np.testing.assert_array_equal(label.numpy(), want)
    with pytest.raises(ShapeError, match="bands must index the image's 4 bands"):
        SegmentationFolder(root, bands=(4,))[0]
    with pytest.raises(ValueError, match="bands must be a non-empty sequence"):
        SegmentationFolder(root, bands=(-1,))


def test_dataloader_with_collate_padded(folder):
    root, expected = folder
    ds = SegmentationFolder(root, bands=(0,))  # one band so that RGB, gray and TIFF images batch together
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate_padded)
    batch, labels = next(iter(loader))
    assert isinstance(batch, PaddedBatch)
    assert batch.data.shape == (4, 1, 9, 10)
    assert labels.shape == (4, 9, 10) and labels.dtype == torch.int64
    for i, (image_path, _) in enumerate(ds.samples):
        want_image, want_label = expected[image_path.stem]
        h, w = want_label.shape
        assert batch.sizes[i].tolist() == [h, w]
        np.testing.assert_array_equal(batch.data[i, 0, :h, :w].numpy(), want_image[0].astype(np.float32))
        np.testing.assert_array_equal(labels[i, :h, :w].numpy(), want_label.astype(np.int64))
        assert (labels[i, h:] == -100).all() and (labels[i, :, w:] == -100).all()


def test_missing_mask_is_named(folder):
    root, _ = folder
    (root / "masks" / "c.tif").unlink()
    with pytest.raises(CnnkitError, match=r"No mask for image .*c\.tif"):
        SegmentationFolder(root)


def test_size_mismatch_names_both_files(folder):
    root, _ = folder
    tifffile.imwrite(root / "masks" / "c.tif", np.zeros((9, 5), np.uint8))
    ds = SegmentationFolder(root)
    index = [p.stem for p, _ in ds.samples].index("c")
    pattern = r"images.c\.tif has shape \(9, 4\), mask .*masks.c\.tif has shape \(9, 5\)"
    with pytest.raises(ShapeError, match=pattern):
        ds[index]


def test_unsupported_extension(folder):
    root, _ = folder
    (root / "images" / "e.jpg").write_bytes(b"")
    with pytest.raises(UnsupportedError, match=r"Unsupported file extension '\.jpg'. Expected one of"):
        SegmentationFolder(root)


def test_rgb_mask_refused(folder):
    root, _ = folder
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "masks" / "a.png")
    ds = SegmentationFolder(root)
    with pytest.raises(UnsupportedError, match="colour or multi-band masks are not supported"):
        ds[0]


def test_unlistable_folder_is_a_cnnkit_error_naming_it(folder, monkeypatch):
    from pathlib import Path

    root, _ = folder

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", denied)  # as chmod 000 does for anyone but root
    with pytest.raises(CnnkitError, match=r"Could not list .*images: Permission denied\. Make the folder readable"):
        SegmentationFolder(root)


def test_missing_folder(tmp_path):
    with pytest.raises(CnnkitError, match="images folder does not exist"):
        SegmentationFolder(tmp_path)


def test_sizes_and_label_read_only_what_they_need(folder):
    root, expected = folder
    ds = SegmentationFolder(root, ignore_index=255)
    assert ds.sizes == [expected[path.stem][1].shape for path, _ in ds.samples]
    for i, (path, _) in enumerate(ds.samples):
        reference = torch.from_numpy(expected[path.stem][1].astype(np.int64))
        reference[reference == 255] = -100
        assert torch.equal(ds.label(i), reference) and torch.equal(ds[i][1], reference)


# --- damaged and hostile files ---------------------------------------------------------------------------


def _one_pair(tmp_path, image: np.ndarray, mask: np.ndarray, suffix: str = ".tif"):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.warns(UserWarning) if image.size == 0 else contextlib.nullcontext():  # tifffile: nonconformant
        tifffile.imwrite(tmp_path / "images" / f"x{suffix}", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "masks" / f"x{suffix}", mask)
    return SegmentationFolder(tmp_path)


@pytest.mark.parametrize("shape", [(0, 4, 5), (4, 5, 0)], ids=["CHW", "HWC"])
def test_zero_band_tiff_is_refused_naming_the_file(tmp_path, shape):
    """cnnkit train trained on the validity band alone for such a file; GDAL now refuses to open it (tifffile wrote
    RowsPerStrip 0), still naming the file."""
    ds = _one_pair(tmp_path, np.zeros(shape, np.float32), np.zeros((4, 5), np.uint8))
    with pytest.raises(CnnkitError, match=r"images/x\.tif"):
        ds[0]


def test_float_mask_beyond_int64_is_refused(tmp_path):
    mask = np.zeros((4, 5), np.float32)
    mask[1, 2] = 1e30  # became int64 min (-9223372036854775808)
    ds = _one_pair(tmp_path, np.zeros((4, 5), np.float32), mask)
    with pytest.raises(UnsupportedError, match=r"must fit in int64\. Received a float32 value 1e\+30 from .*masks/x"):
        ds[0]
    with pytest.raises(UnsupportedError, match=r"must fit in int64"):
        ds.label(0)


def test_uint64_labels_beyond_int64_are_refused_not_wrapped(tmp_path):
    mask = np.zeros((4, 5), np.uint64)
    mask[0, 0] = 2**63 + 5  # wrapped to a negative label
    ds = _one_pair(tmp_path, np.zeros((4, 5), np.float32), mask)
    with pytest.raises(UnsupportedError, match=r"Received a uint64 value 9223372036854775813 > 9223372036854775807"):
        ds[0]


def test_uint64_labels_that_fit_are_read_exactly(tmp_path):
    mask = np.arange(20, dtype=np.uint64).reshape(4, 5)
    _, label = _one_pair(tmp_path, np.ones((4, 5), np.float32), mask)[0]
    assert label.dtype == torch.int64 and label.tolist() == mask.astype(np.int64).tolist()


@pytest.mark.parametrize("which", ["images", "masks"])
def test_truncated_png_is_a_cnnkit_error_naming_the_file(folder, which):
    root, _ = folder
    path = root / which / "a.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # "OSError: image file is truncated" without the name before
    ds = SegmentationFolder(root)
    with pytest.raises(CnnkitError, match=rf"Could not read .*{which}/a\.png: .*truncated"):
        ds[0]


@pytest.mark.parametrize("which", ["images", "masks"])
def test_png_holding_fewer_rows_than_it_declares_is_refused_not_padded(folder, which):
    """Pillow pads such a PNG with zeros (pixels and labels that were never stored); the folder refuses it."""
    import struct
    import zlib

    root, _ = folder
    rows = np.zeros((2, 1 + 7), np.uint8).tobytes()  # 2 of the 5 declared rows of a 7-px grey image, filter 0
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", 7, 5, 8, 0, 0, 0, 0)
    (root / which / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                      + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert np.array(Image.open(root / which / "a.png")).shape == (5, 7)  # what was read before
    with pytest.raises(CnnkitError, match=rf"{which}.a\.png declares 5 rows .* the file is truncated or damaged"):
        SegmentationFolder(root)[0]


def test_damaged_tiffs_are_cnnkit_errors_naming_the_file(folder):
    root, _ = folder
    image = root / "images" / "c.tif"
    image.write_bytes(image.read_bytes()[:200])  # cut inside the pixel data
    (root / "masks" / "d.tiff").write_bytes(b"II*\x00" + b"\xff" * 40)  # a header pointing nowhere
    ds = SegmentationFolder(root)
    stems = [p.stem for p, _ in ds.samples]
    with pytest.raises(CnnkitError, match=r"images/c\.tif"):
        ds[stems.index("c")]
    with pytest.raises(CnnkitError, match=r"masks/d\.tiff"):
        ds[stems.index("d")]
    with pytest.raises(CnnkitError, match=r"masks/d\.tiff"):
        _ = ds.sizes


# -- GeoTIFFs with their own metadata (read through cnnkit.rasters) ---------------------------------------------------

_NAMES = ("blue", "green", "red", "nir", "swir")


def _geotiffs(root, seed: int, count: int = 3, size=(24, 20)):
    """``count`` pairs of 5-band uint16 GeoTIFFs declaring nodata=0 and uint8 masks declaring nodata=255, band
    descriptions blue … swir; returns the raw arrays."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pairs = []
    for k in range(count):
        image = rng.integers(1, 5000, (5, *size), dtype=np.uint16)
        image[rng.random((5, *size)) < 0.04] = 0  # no data in single bands
        image[:, :3, :4] = 0  # a corner without any data
        mask = rng.integers(0, 3, size, dtype=np.uint8)
        mask[rng.random(size) < 0.1] = 255
        where = dict(crs="EPSG:32633", transform=Affine(10, 0, 600000 + 1000 * k, 0, -10, 5000000))
        with rasterio.open(root / "images" / f"s{k}.tif", "w", driver="GTiff", width=size[1], height=size[0], count=5,
                           dtype="uint16", nodata=0, **where) as dst:
            dst.write(image)
            dst.descriptions = _NAMES
        with rasterio.open(root / "masks" / f"s{k}.tif", "w", driver="GTiff", width=size[1], height=size[0], count=1,
                           dtype="uint8", nodata=255, **where) as dst:
            dst.write(mask[None])
        pairs.append((image, mask))
    return pairs


def test_declared_nodata_and_band_descriptions_are_read(tmp_path):
    pairs = _geotiffs(tmp_path, 0)
    ds = SegmentationFolder(tmp_path)
    assert ds.band_names == _NAMES
    assert SegmentationFolder(tmp_path, bands=(3, 2)).band_names == ("nir", "red")
    assert ds.declared_nodata() == {"images": [0.0], "masks": [255.0]}
    for index, (raw, mask) in enumerate(pairs):
        image, label = ds[index]
        np.testing.assert_array_equal(torch.isnan(image).numpy(), raw == 0)  # the declared nodata, per band
        np.testing.assert_array_equal(image.nan_to_num(0).numpy(), raw.astype(np.float32))
        # the mask's declared nodata is unlabelled, with no option given
        np.testing.assert_array_equal(label.numpy(), np.where(mask == 255, -100, mask.astype(np.int64)))
        np.testing.assert_array_equal(ds.label(index).numpy(), label.numpy())


def test_misaligned_pair_is_refused_naming_both_files(tmp_path):
    import rasterio
    from affine import Affine

    _geotiffs(tmp_path, 1, count=1)
    with rasterio.open(tmp_path / "masks" / "s0.tif", "r+") as dst:
        dst.transform = Affine(10, 0, 600010, 0, -10, 5000000)  # one pixel to the east
    with pytest.raises(ShapeError, match=r"not aligned: image .*images.s0\.tif.*mask .*masks.s0\.tif"):
        SegmentationFolder(tmp_path)[0]
    with rasterio.open(tmp_path / "masks" / "s0.tif", "r+") as dst:
        dst.transform = Affine(10, 0, 600000, 0, -10, 5000000)
        dst.crs = "EPSG:32634"
    with pytest.raises(ShapeError, match=r"EPSG:32633.*EPSG:32634"):
        SegmentationFolder(tmp_path)[0]


def test_bands_in_separate_files_stacked_through_a_vrt(tmp_path):
    """The recipe of docs/rasters.md: one file per band, stacked with stack_vrt, read as one 5-band image."""
    import rasterio

    from cnnkit.rasters import stack_vrt

    (raw, mask), = _geotiffs(tmp_path / "stacked", 2, count=1)
    bands = tmp_path / "bands"
    bands.mkdir()
    with rasterio.open(tmp_path / "stacked" / "images" / "s0.tif") as src:
        profile = {**src.profile, "count": 1}
        for k in range(len(_NAMES)):
            with rasterio.open(bands / f"B{k}.tif", "w", **profile) as dst:
                dst.write(src.read(k + 1)[None])
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (tmp_path / "stacked" / "masks" / "s0.tif").rename(root / "masks" / "s0.tif")
    stack_vrt([bands / f"B{k}.tif" for k in range(5)], root / "images" / "s0.vrt", descriptions=_NAMES)
    ds = SegmentationFolder(root)
    image, label = ds[0]
    assert ds.band_names == _NAMES
    np.testing.assert_array_equal(torch.isnan(image).numpy(), raw == 0)
    np.testing.assert_array_equal(image.nan_to_num(0).numpy(), raw.astype(np.float32))
    np.testing.assert_array_equal(label.numpy(), np.where(mask == 255, -100, mask.astype(np.int64)))
    with pytest.raises(ShapeError, match=r"one grid: .*B0\.tif is 20×24 .*bad\.tif is 21×24"):
        with rasterio.open(bands / "bad.tif", "w", **{**profile, "width": 21}) as dst:
            dst.write(np.ones((1, 24, 21), np.uint16))
        stack_vrt([bands / "B0.tif", bands / "bad.tif"], tmp_path / "bad.vrt")


def test_training_excludes_and_counts_the_declared_nodata(tmp_path):
    """cnnkit train on GeoTIFFs declaring nodata, no --nodata: those pixels are counted as no data in the log (the
    share equals a count by hand) and the band descriptions are the band names."""
    from cnnkit.app.train import train_folder

    pairs = _geotiffs(tmp_path / "train", 3)
    _geotiffs(tmp_path / "held", 4, count=1)
    lines: list[str] = []
    train_folder(tmp_path / "train", tmp_path / "run", heldout=tmp_path / "held", num_classes=3, epochs=1,
                 log=lines.append, seed=0)
    text = "\n".join(lines)
    missing = sum(int((raw == 0).any(axis=0).sum()) for raw, _ in pairs)  # a pixel with no data in any band
    unlabelled = sum(int(((mask == 255) & ~(raw == 0).any(axis=0)).sum()) for raw, mask in pairs)
    total = sum(mask.size for _, mask in pairs)
    assert 0 < missing < total and unlabelled > 0
    assert f"no data (NaN, ±inf, or the files' declared 0): {missing:,} ({100 * missing / total:.1f} %)" in text
    assert f"unlabelled: {unlabelled:,} ({100 * unlabelled / total:.1f} %)" in text
    assert "band names (the files' band descriptions or colour interpretation): blue, green, red, nir, swir" in text
    assert "nodata declared by the files: images 0 (no data, left out); masks 255 (unlabelled)" in text


# -- band names in bands (#26) ----------------------------------------------------------------------------------------


def test_bands_by_name_equal_bands_by_index(tmp_path):
    """Band descriptions select bands, case-insensitive, mixed with indices; the pixels equal selection by index."""
    _geotiffs(tmp_path, 5, count=2)
    by_index = SegmentationFolder(tmp_path, bands=(3, 2, 0))
    by_name = SegmentationFolder(tmp_path, bands=("NIR", " red", 0))
    assert by_name.band_indices == (3, 2, 0) and by_name.band_names == ("nir", "red", "blue")
    for index in range(2):
        assert torch.equal(by_name[index][0].nan_to_num(-1), by_index[index][0].nan_to_num(-1))


def test_bands_by_name_follow_each_files_own_order(tmp_path):
    import rasterio

    (raw, _), = _geotiffs(tmp_path, 6, count=1)
    with rasterio.open(tmp_path / "images" / "s0.tif", "r+") as dst:
        dst.descriptions = tuple(reversed(_NAMES))  # swir … blue: "blue" is now band 4
    image, _ = SegmentationFolder(tmp_path, bands=("blue",))[0]
    np.testing.assert_array_equal(image[0].nan_to_num(0).numpy(), raw[4].astype(np.float32))


def test_unknown_band_name_lists_the_available_names(tmp_path, folder):
    _geotiffs(tmp_path / "geo", 7, count=1)
    with pytest.raises(ShapeError, match=r"'nri' does not name a band of .*s0\.tif: the band names it declares are "
                                         r"blue, green, red, nir, swir; indices"):
        SegmentationFolder(tmp_path / "geo", bands=("nri",))
    root, _ = folder  # PNGs and TIFFs without descriptions
    with pytest.raises(ShapeError, match=r"'red' does not name a band of .*a\.png: it declares no band names"):
        SegmentationFolder(root, bands=("red",))
    with pytest.raises(ShapeError, match=r"non-empty sequence of band indices .* Received: bands=.red."):
        SegmentationFolder(root, bands="red")


# -- entries a training folder leaves out, and files it refuses (#27) -------------------------------------------------


def test_every_skipped_entry_is_named(folder):
    """An orphan mask, a folder, a looping link, a dangling link and a hidden file: each named once, none silent."""
    root, _ = folder
    (root / "masks" / "orphan.png").write_bytes((root / "masks" / "a.png").read_bytes())
    (root / "images" / "sub").mkdir()
    (root / "masks" / "loop.tif").symlink_to(root / "masks" / "loop.tif")
    (root / "images" / "gone.tif").symlink_to(root / "nowhere.tif")
    (root / "images" / ".DS_Store").write_bytes(b"")
    lines: list[str] = []
    ds = SegmentationFolder(root, log=lines.append)
    assert len(ds) == 4 and ds.skipped == lines
    expected = {"images/.DS_Store": "hidden", "images/gone.tif": "target does not exist", "images/sub": "a folder",
                "masks/loop.tif": "loops", "masks/orphan.png": "a mask without an image"}
    assert len(lines) == len(expected)
    for name, why in expected.items():
        assert sum(f"skipped {root / name}: " in line and why in line for line in lines) == 1, (name, lines)
    with pytest.warns(UserWarning) as record:
        SegmentationFolder(root)  # without log: one warning per entry, at the caller's line
    assert [str(w.message) for w in record] == lines and {w.filename for w in record} == {__file__}


def _strips_into_header(path, array: np.ndarray, offset: int) -> None:
    """Write ``array`` as one strip, then point StripOffsets at byte ``offset`` of the header."""
    import struct

    tifffile.imwrite(path, array, rowsperstrip=array.shape[0])
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["StripOffsets"]
        where, fmt = tag.valueoffset, {3: "<H", 4: "<I"}[tag.dtype]
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, where, offset)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, 8])
def test_strips_pointing_into_the_header_never_train_on_garbage(tmp_path, offset):
    """The issue's file (StripOffsets=0) decoded its header as pixels: a band mean of 2.6e35. Now such a file is
    refused naming it, or (offset 0 is GDAL's sparse strip) reads as no data, which the statistics pass names."""
    from cnnkit.data.standardize import band_statistics

    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    values = (np.arange(256, dtype=np.float32).reshape(16, 16) % 50) * 1e3
    _strips_into_header(tmp_path / "images" / "bad.tif", values, offset)
    tifffile.imwrite(tmp_path / "masks" / "bad.tif", np.zeros((16, 16), np.uint8))
    ds = SegmentationFolder(tmp_path)
    with pytest.raises(CnnkitError, match=r"images.bad\.tif"):
        image, _ = ds[0]
        assert not torch.isfinite(image).any(), f"garbage read as data: mean {image.double().mean()}"
        band_statistics(ds)


def test_float_values_beyond_the_dtypes_statistics_are_refused(tmp_path):
    """Values whose mean square overflows float32 (what cnnkit trains in) are refused naming the file; real values
    pass, half floats included (1,000 is ordinary there though its square is beyond float16)."""
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    values = (np.arange(256, dtype=np.float32).reshape(16, 16) % 50) * 1e3
    tifffile.imwrite(tmp_path / "images" / "good.tif", values)
    tifffile.imwrite(tmp_path / "images" / "half.tif", values.astype(np.float16))  # squares beyond float16: fine
    tifffile.imwrite(tmp_path / "images" / "bad.tif", values * np.float32(1e25))  # up to 4.9e29
    for stem in ("good", "half", "bad"):
        tifffile.imwrite(tmp_path / "masks" / f"{stem}.tif", np.zeros((16, 16), np.uint8))
    ds = SegmentationFolder(tmp_path)
    stems = [p.stem for p, _ in ds.samples]
    np.testing.assert_array_equal(ds[stems.index("good")][0][0].numpy(), values)
    np.testing.assert_array_equal(ds[stems.index("half")][0][0].numpy(), values.astype(np.float16).astype(np.float32))
    with pytest.raises(CnnkitError, match=r"images.bad\.tif holds values impossible for its float32 data: band 0 "
                                          r"has a mean square of .*largest magnitude 4\.9e\+29.*beyond the float32"):
        ds[stems.index("bad")]


def test_memory_error_while_decoding_names_the_file(folder, monkeypatch):
    from cnnkit.rasters import Raster

    root, _ = folder
    ds = SegmentationFolder(root)

    def exhausted(self, *args):
        raise MemoryError("Unable to allocate 16.0 GiB")

    monkeypatch.setattr(Raster, "read", exhausted)
    index = [p.stem for p, _ in ds.samples].index("d")
    with pytest.raises(CnnkitError, match=r"Could not read .*images.d\.tiff: not enough memory .*16\.0 GiB"):
        ds[index]


def test_the_issues_damaged_folder_names_or_refuses_every_entry(tmp_path):
    """#27's folder in one: an orphan mask and a looping link named when the folder is built, the file whose strips
    point into its header refused (naming it) by the statistics pass — none silently dropped."""
    from cnnkit.data import data_statistics

    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    values = (np.arange(256, dtype=np.float32).reshape(16, 16) % 50) * 1e3
    for stem in ("a", "b"):
        tifffile.imwrite(tmp_path / "images" / f"{stem}.tif", values)
    _strips_into_header(tmp_path / "images" / "c.tif", values, 0)
    for stem in ("a", "b", "c", "orphan"):
        tifffile.imwrite(tmp_path / "masks" / f"{stem}.tif", np.zeros((16, 16), np.uint8))
    (tmp_path / "masks" / "loop.tif").symlink_to(tmp_path / "masks" / "loop.tif")
    lines: list[str] = []
    ds = SegmentationFolder(tmp_path, log=lines.append)
    assert [p.stem for p, _ in ds.samples] == ["a", "b", "c"]
    assert len(lines) == 2 and "masks/loop.tif: a symbolic link that loops" in lines[0]
    assert "masks/orphan.tif: a mask without an image" in lines[1]
    with pytest.raises(CnnkitError, match=r"images.c\.tif"):
        data_statistics(ds, num_classes=2)


# -- sparse blocks, colour interpretation, header-only pair check -----------------------------------------------------


def _sparse_geotiff(path, values: np.ndarray) -> None:
    """A 32 × 32 GeoTIFF of 16 × 16 blocks written with SPARSE_OK=TRUE whose top-right block is never written (its
    byte count is 0: GDAL reads it as 0, no nodata declared)."""
    import rasterio
    from rasterio.windows import Window

    count = 1 if values.ndim == 2 else len(values)
    values = values.reshape(count, 32, 32)
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=count, dtype=values.dtype.name,
                       tiled=True, blockxsize=16, blockysize=16, sparse_ok=True) as dst:
        for row, col in ((0, 0), (1, 0), (1, 1)):  # block (0, 1) left unwritten
            window = Window(col * 16, row * 16, 16, 16)
            dst.write(values[:, row * 16:row * 16 + 16, col * 16:col * 16 + 16], window=window)


def test_sparse_blocks_are_unlabelled_in_masks_and_no_data_in_images(tmp_path):
    """A mask's block stored without data reads as GDAL's 0 — a class — through read_raw; it must be −100, and the
    image's pixels there NaN. The reference: the written values with the unwritten block set by hand."""
    import rasterio

    rng = np.random.default_rng(11)
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    image = rng.integers(1, 1000, (2, 32, 32)).astype(np.uint16)
    mask = rng.integers(1, 4, (32, 32)).astype(np.uint8)  # classes 1–3 where written: a 0 can only be GDAL's fill
    _sparse_geotiff(tmp_path / "images" / "s.tif", image)
    _sparse_geotiff(tmp_path / "masks" / "s.tif", mask)
    with rasterio.open(tmp_path / "masks" / "s.tif") as src:  # the file is what the test means: block (0, 1) sparse
        assert src.read(1)[:16, 16:].max() == 0 and src.read(1)[16:, :].min() >= 1
    hole = np.zeros((32, 32), bool)
    hole[:16, 16:] = True
    expected_label = np.where(hole, -100, mask.astype(np.int64))
    expected_image = np.where(hole, np.nan, image.astype(np.float32))
    ds = SegmentationFolder(tmp_path)
    got_image, got_label = ds[0]
    np.testing.assert_array_equal(got_label.numpy(), expected_label)
    np.testing.assert_array_equal(ds.label(0).numpy(), expected_label)
    np.testing.assert_array_equal(got_image.numpy(), expected_image)  # NaN exactly in the hole


def test_band_names_fall_back_to_the_colour_interpretation(tmp_path):
    """An RGB GeoTIFF without band descriptions: its bands are named red, green, blue (GDAL's colour interpretation),
    usable in bands=; a band described keeps its description."""
    import rasterio
    from rasterio.enums import ColorInterp

    rng = np.random.default_rng(12)
    (tmp_path / "images").mkdir(), (tmp_path / "masks").mkdir()
    rgb = rng.integers(0, 256, (3, 8, 6), dtype=np.uint8)
    with rasterio.open(tmp_path / "images" / "a.tif", "w", driver="GTiff", width=6, height=8, count=3, dtype="uint8",
                       photometric="RGB") as dst:
        dst.write(rgb)
    with rasterio.open(tmp_path / "images" / "a.tif") as src:
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.descriptions == (None, None, None)
    tifffile.imwrite(tmp_path / "masks" / "a.tif", rng.integers(0, 3, (8, 6), dtype=np.uint8))
    assert SegmentationFolder(tmp_path).band_names == ("red", "green", "blue")
    picked = SegmentationFolder(tmp_path, bands=("Blue", "red"))
    assert picked.band_names == ("blue", "red") and picked.band_indices == (2, 0)
    np.testing.assert_array_equal(picked[0][0].numpy(), rgb[[2, 0]].astype(np.float32))
    with rasterio.open(tmp_path / "images" / "a.tif", "r+") as dst:
        dst.set_band_description(2, "nir")  # a description wins over the colour interpretation
    assert SegmentationFolder(tmp_path).band_names == ("red", "nir", "blue")


def test_check_pairs_refuses_a_mismatch_from_headers_before_any_pixel_is_decoded(folder, tmp_path, monkeypatch):
    """check_pairs reads headers only: with every decode made to fail, a size mismatch and a grid mismatch are still
    refused naming both files, and a good folder passes (its mask sizes kept for sizes)."""
    import rasterio
    from affine import Affine

    import cnnkit.data.folder as folder_module
    from cnnkit.rasters import Raster

    def never(*args, **kwargs):
        raise AssertionError("a pixel was decoded")

    for name in ("read", "read_raw"):
        monkeypatch.setattr(Raster, name, never)
    monkeypatch.setattr(folder_module, "_read", never)
    monkeypatch.setattr(folder_module, "_read_png", never)
    root, expected = folder
    good = SegmentationFolder(root)
    good.check_pairs()
    assert good.sizes == [expected[p.stem][1].shape for p, _ in good.samples]

    Image.fromarray(np.zeros((5, 6), np.uint8)).save(root / "masks" / "a.png")  # the image is 5 × 7
    with pytest.raises(ShapeError, match=r"images.a\.png has shape \(5, 7, 3\), mask .*masks.a\.png has shape "
                                         r"\(5, 6\)"):
        SegmentationFolder(root).check_pairs()

    _geotiffs(tmp_path / "geo", 13, count=2)
    with rasterio.open(tmp_path / "geo" / "masks" / "s1.tif", "r+") as dst:
        dst.transform = Affine(10, 0, 601010, 0, -10, 5000000)  # one pixel east of its image
    with pytest.raises(ShapeError, match=r"not aligned: image .*images.s1\.tif.*mask .*masks.s1\.tif"):
        SegmentationFolder(tmp_path / "geo").check_pairs()
