"""ENVI, netCDF and HDF5 inputs — the formats GDAL reads besides GeoTIFF — through cnnkit predict and training
folders: tiled == whole (labels identical), the file's georeference and nodata honoured where the format carries
them, files of several rasters refused naming them (or one named as GDAL names it), damaged files refused naming the
file. All files generated here: ENVI and netCDF by GDAL (rasterio), HDF5 by h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from torch import nn

from cnnkit.app.predict import predict_files
from cnnkit.data import SegmentationFolder
from cnnkit.errors import CnnkitError
from cnnkit.models import TinySegNet
from cnnkit.predict import Predictor, Preprocessing, open_scene
from cnnkit.rasters import Raster, read_georeference

BANDS = 3
NODATA = -9999.0
TRANSFORM = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
HEIGHT, WIDTH = 70, 90


def _predictor() -> Predictor:
    torch.manual_seed(0)
    model = TinySegNet(BANDS + 1, 4, width=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    prep = Preprocessing(mean=(1000.0,) * BANDS, std=(300.0,) * BANDS, nodata=None, multiple_of=4)
    return Predictor(model.eval(), prep, ("a", "b", "c", "d"))


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(1000, 300, (BANDS, HEIGHT, WIDTH)).astype(np.float32)
    image[:, 20:31, 40:62] = NODATA  # the file's declared nodata
    return image


def _geotiff(path, image, **tags) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=image.shape[0], dtype="float32",
                       crs="EPSG:32632", transform=TRANSFORM, nodata=NODATA) as dst:
        dst.write(image)
        if tags:
            dst.update_tags(**tags)
            for band in range(image.shape[0]):
                dst.update_tags(band + 1, NETCDF_DIM_band=str(band + 1))


def _envi(path, image) -> None:
    with rasterio.open(path, "w", driver="ENVI", width=WIDTH, height=HEIGHT, count=image.shape[0], dtype="float32",
                       crs="EPSG:32632", transform=TRANSFORM, nodata=NODATA) as dst:
        dst.write(image)


def _netcdf(path, image, tmp_path) -> None:
    """GDAL's netCDF driver writes by copying (CreateCopy): the bands as one variable along a 'band' dimension."""
    source = tmp_path / f"{path.stem}_source.tif"
    _geotiff(source, image, NETCDF_DIM_EXTRA="{band}", NETCDF_DIM_band_DEF=f"{{{image.shape[0]},6}}",
             NETCDF_DIM_band_VALUES="{" + ",".join(str(b + 1) for b in range(image.shape[0])) + "}")
    rasterio.shutil.copy(source, path, driver="netCDF", FORMAT="NC4C", COMPRESS="DEFLATE")
    source.unlink()


def _hdf5(path, image, **datasets) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_dataset("reflectance", data=image, chunks=(1, 16, 16), compression="gzip")
        data.attrs["_FillValue"] = np.float32(NODATA)
        for name, values in datasets.items():
            f[name] = values


def _write(kind: str, folder, image, tmp_path, stem: str = "scene"):
    path = folder / (stem + {"envi": ".img", "netcdf": ".nc", "hdf5": ".h5"}[kind])
    {"envi": _envi, "netcdf": lambda p, i: _netcdf(p, i, tmp_path), "hdf5": _hdf5}[kind](path, image)
    return path


@pytest.mark.parametrize("kind", ["envi", "netcdf", "hdf5"])
def test_predict_tiled_equals_whole_with_georeference_and_nodata(tmp_path, kind):
    image = _image(seed=len(kind))
    path = _write(kind, tmp_path, image, tmp_path)
    with rasterio.open(Raster(path).name) as ds:  # the independent reference: GDAL's own whole read
        pixels = ds.read()
        georeferenced = ds.crs is not None
    np.testing.assert_array_equal(pixels, image)
    scene = open_scene(path, bands=BANDS)
    assert scene.shape == (BANDS, HEIGHT, WIDTH) and scene.nodata == NODATA
    assert np.isnan(scene.read(slice(20, 31), slice(40, 62))).all()  # the declared nodata is no data
    scene.close()
    predictor = _predictor()
    whole_input = np.where(image == NODATA, np.nan, image)
    whole = predictor.predict_image(whole_input).labels.numpy()
    assert (whole[20:31, 40:62] == 255).all() and (whole != 255).sum() > 0.9 * whole.size - 11 * 22
    for name, options in (("tiled", dict(max_pixels=1000, tile=32)), ("one", dict(max_pixels=10**7))):
        run = predict_files(predictor, [path], tmp_path / name, band_count=BANDS, tiff=True, log=lambda _: None,
                            **options)
        assert len(run.files) == 1
        with rasterio.open(tmp_path / name / "scene_labels.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), whole)
            if kind == "hdf5":  # HDF5 carries no georeference GDAL reads
                assert not georeferenced and ds.crs is None
            else:
                assert georeferenced and ds.crs == rasterio.crs.CRS.from_epsg(32632) and ds.transform == TRANSFORM
    assert read_georeference(path).is_set == georeferenced


def test_files_of_several_rasters_are_refused_naming_them_or_read_by_name(tmp_path):
    image = _image(seed=3)
    h5 = tmp_path / "two.h5"
    _hdf5(h5, image, **{"other/quality": image[0]})
    with pytest.raises(CnnkitError, match=r"two\.h5 holds 2 rasters \(subdatasets\): HDF5:.*two\.h5://other/quality, "
                                          r"HDF5:.*two\.h5://reflectance\. cnnkit reads one raster a file"):
        open_scene(h5, bands=BANDS)
    # named as GDAL names it, with or without quotes: that raster
    for name in (f'HDF5:"{h5}"://reflectance', f"HDF5:{h5}://reflectance"):
        with Raster(name) as raster:
            assert raster.path == h5 and raster.shape == (BANDS, HEIGHT, WIDTH)
            np.testing.assert_array_equal(raster.read_raw(), image)
    with Raster(f'HDF5:"{h5}"://other/quality') as raster:
        np.testing.assert_array_equal(raster.read_raw()[0], image[0])
    with pytest.raises(CnnkitError, match=r"two\.h5 holds no subdataset .*://missing'; it holds: HDF5:"):
        Raster(f'HDF5:"{h5}"://missing')
    with pytest.raises(CnnkitError, match=r"Input image does not exist: .*nowhere\.h5 \(named in HDF5:"):
        Raster(f'HDF5:"{tmp_path / "nowhere.h5"}"://reflectance')
    # a netCDF of two variables (GDAL writes each band as its own variable without a band dimension)
    nc = tmp_path / "vars.nc"
    _geotiff(tmp_path / "vars.tif", image[:2])
    rasterio.shutil.copy(tmp_path / "vars.tif", nc, driver="netCDF")
    with pytest.raises(CnnkitError, match=r"vars\.nc holds 2 rasters \(subdatasets\): .*Band1, .*Band2\..*"
                                          r"gdal_translate"):
        Raster(nc)
    with Raster(f'NETCDF:"{nc}":Band2') as raster:
        np.testing.assert_array_equal(raster.read_raw()[0], image[1])
        assert raster.nodata == (NODATA,) and raster.georeference.transform == TRANSFORM


def test_training_folder_reads_envi_netcdf_hdf5_and_names_side_cars(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(4)
    images = {kind: _image(seed=10 + i) for i, kind in enumerate(("envi", "netcdf", "hdf5"))}
    for kind, image in images.items():
        _write(kind, root / "images", image, tmp_path, stem=kind)
        mask = rng.integers(0, 4, (HEIGHT, WIDTH)).astype(np.uint8)
        with rasterio.open(root / "masks" / f"{kind}.tif", "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=1,
                           dtype="uint8", crs=None if kind == "hdf5" else "EPSG:32632",
                           transform=TRANSFORM if kind != "hdf5" else Affine.identity()) as dst:
            dst.write(mask[None])
    aux = root / "images" / "envi.img.aux.xml"
    if not aux.exists():  # GDAL's ENVI writer may keep what the header cannot say in a side-car
        aux.write_text("<PAMDataset></PAMDataset>")
    lines = []
    data = SegmentationFolder(root, log=lines.append)
    assert sorted(lines) == [f"skipped {root / 'images' / 'envi.hdr'}: the ENVI header of envi.img",
                             f"skipped {root / 'images' / 'envi.img.aux.xml'}: GDAL's side-car metadata of envi.img"]
    assert [p.name for p, _ in data.samples] == ["envi.img", "hdf5.h5", "netcdf.nc"]
    for index, (path, mask_path) in enumerate(data.samples):
        image, label = data[index]
        expected = np.where(images[path.stem] == NODATA, np.nan, images[path.stem])
        np.testing.assert_array_equal(image.numpy(), expected)
        with rasterio.open(mask_path) as ds:
            np.testing.assert_array_equal(label.numpy(), ds.read(1).astype(np.int64))


def _chunk_span(path) -> tuple[int, int]:
    """Where the fourth stored chunk of the file's first chunked 2-D+ dataset lies (netCDF-4 is HDF5 underneath)."""
    found = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, o: found.append(o) if isinstance(o, h5py.Dataset) and o.chunks and o.ndim >= 2 else None)
        info = found[0].id.get_chunk_info(3)
    return info.byte_offset, info.size


def _damaged(kind: str, path) -> dict:
    """Damaged versions of ``path``: ``{what: write it}``."""
    data = path.read_bytes()
    header = path.with_suffix(".hdr")

    def overwrite(offset: int, size: int):
        return lambda: path.write_bytes(data[:offset] + b"\xff" * size + data[offset + size:])

    cases = {
        "truncated": lambda: path.write_bytes(data[: len(data) // 3]),
        "empty": lambda: path.write_bytes(b""),
    }
    if kind == "envi":
        text = header.read_text()
        cases["header declares more lines"] = lambda: header.write_text(
            text.replace(f"lines   = {HEIGHT}", f"lines   = {HEIGHT * 100}"))
        cases["header declares no data type"] = lambda: header.write_text(
            text.replace("data type = 4", "data type = 99"))
        cases["header garbage"] = lambda: header.write_bytes(b"ENVI\n" + bytes(range(256)) * 4)
    else:
        cases["header zeroed"] = lambda: path.write_bytes(data[:64] + bytes(len(data) - 64))
        cases["a chunk overwritten"] = overwrite(*_chunk_span(path))
    return cases


@pytest.mark.parametrize("kind", ["envi", "netcdf", "hdf5"])
def test_damaged_files_are_refused_naming_them(tmp_path, kind):
    path = _write(kind, tmp_path, _image(seed=5), tmp_path)
    original = {p: p.read_bytes() for p in tmp_path.iterdir()}
    for what, damage in _damaged(kind, path).items():
        for p, content in original.items():
            p.write_bytes(content)
        damage()
        with pytest.raises(CnnkitError, match=rf"{path.name}|{path.stem}\.hdr") as refused:
            scene = open_scene(path, bands=BANDS)
            try:
                _predictor().predict_scene(scene, tile=32)
            finally:
                scene.close()
        assert "Traceback" not in str(refused.value), what
