"""``cnnkit predict RUN 'NETCDF:"f.nc":var'``: one raster of a netCDF file named as GDAL names it is an input like a
file — its labels equal those of a GeoTIFF holding only that variable, its outputs are named ``f_var`` — and a name
its file does not list, a file that is not local, or two inputs whose outputs would share a name are refused naming
them, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from typer.testing import CliRunner

from cnnkit.app.predict import expand_inputs, input_stem
from cnnkit.cli.main import app
from cnnkit.errors import CnnkitError
from cnnkit.models import TinySegNet
from cnnkit.rasters.reading import is_subdataset_name, parse_subdataset, subdataset_stem
from cnnkit.train.rundir import write_manifest

runner = CliRunner()
HEIGHT, WIDTH = 37, 45
TRANSFORM = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)


@pytest.fixture(scope="module")
def one_band_run(tmp_path_factory):
    """An image run folder written by hand: a random-weight TinySegNet on 1 band (+ validity), 3 classes."""
    torch.manual_seed(0)
    model = TinySegNet(2, 3, width=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    run = tmp_path_factory.mktemp("subdatasets") / "run"
    run.mkdir()
    write_manifest(run, model, spec={"library": "cnnkit", "architecture": "TinySegNet", "args": {"width": 4}},
                   in_channels=2, num_classes=3,
                   preprocessing={"mean": [0.5], "std": [0.25], "nodata": None, "bands": None, "multiple_of": 4,
                                  "validity_band": True, "band_count": 1},
                   class_names=["a", "b", "c"], palette=[[0, 0, 255], [0, 200, 0], [200, 0, 0]], ignore_index=255)
    return run


def _geotiff(path, bands: np.ndarray) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=bands.shape[0], dtype="float32",
                       crs="EPSG:32632", transform=TRANSFORM) as dst:
        dst.write(bands)


@pytest.fixture()
def two_variables(tmp_path):
    """f.nc holding two variables, Band1 and Band2 (GDAL's netCDF driver writes each band of a GeoTIFF as one), and
    b.tif holding Band2's values alone."""
    rng = np.random.default_rng(1)
    bands = rng.random((2, HEIGHT, WIDTH), dtype=np.float32)
    bands[0] += 3.0  # the other variable: another class everywhere if it were read instead
    _geotiff(tmp_path / "source.tif", bands)
    rasterio.shutil.copy(tmp_path / "source.tif", tmp_path / "f.nc", driver="netCDF")
    _geotiff(tmp_path / "b.tif", bands[1:])
    with rasterio.open(tmp_path / "f.nc") as ds:
        assert len(ds.subdatasets) == 2  # the input: a file of two rasters, named one at a time
    return tmp_path / "f.nc", tmp_path / "b.tif"


def test_a_named_netcdf_variable_predicts_as_the_geotiff_of_that_variable(one_band_run, two_variables, tmp_path):
    nc, tif = two_variables
    name = f'NETCDF:"{nc}":Band2'
    for out, given in (("nc", name), ("tif", str(tif))):
        done = runner.invoke(app, ["predict", str(one_band_run), given, "--out", str(tmp_path / out), "--tiff"],
                             env={"COLUMNS": "200"})
        assert done.exit_code == 0, done.output
    names = sorted(p.name for p in (tmp_path / "nc").iterdir() if not p.name.startswith("."))
    assert names == ["f_Band2_labels.png", "f_Band2_labels.tif", "f_Band2_overlay.png"]
    with rasterio.open(tmp_path / "nc" / "f_Band2_labels.tif") as ds, \
            rasterio.open(tmp_path / "tif" / "b_labels.tif") as reference:
        labels, expected = ds.read(1), reference.read(1)
        assert ds.transform == reference.transform == TRANSFORM
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(expected)) > 1  # the network does tell pixels apart: equal labels say something
    # the other variable gives other labels: the name chose the raster
    done = runner.invoke(app, ["predict", str(one_band_run), f'NETCDF:"{nc}":Band1', "--out", str(tmp_path / "b1")])
    assert done.exit_code == 0, done.output
    assert not np.array_equal(rasterio.open(tmp_path / "b1" / "f_Band1_labels.png").read(1), expected)
    # tiled == whole for a named raster too
    done = runner.invoke(app, ["predict", str(one_band_run), name, "--out", str(tmp_path / "tiled"), "--tiff",
                               "--max-pixels", "200", "--tile", "16"], env={"COLUMNS": "200"})
    assert done.exit_code == 0 and "1 run in tiles" in done.output, done.output
    with rasterio.open(tmp_path / "tiled" / "f_Band2_labels.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), expected)


def test_names_that_are_not_listed_or_not_local_are_refused_nothing_written(one_band_run, two_variables, tmp_path):
    nc, _ = two_variables
    missing = f'NETCDF:"{nc}":ndvi'
    done = runner.invoke(app, ["predict", str(one_band_run), missing, "--out", str(tmp_path / "out")],
                         env={"COLUMNS": "400"})
    assert done.exit_code != 0
    text = " ".join(done.output.split())
    assert "f.nc holds no subdataset" in text and "ndvi" in text and "Band1" in text, done.output
    assert not [p for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")]
    for name, message in ((f'NETCDF:"{tmp_path / "none.nc"}":ndvi', r"Input image does not exist: .*none\.nc"),
                          ('NETCDF:"/vsicurl/https://example.com/f.nc":ndvi', "not a local file"),
                          ('HDF5:"http://example.com/f.h5"://data', "not a local file"),
                          ('NETCDF:"PG:dbname=x":t', "not a local file")):
        with pytest.raises(CnnkitError, match=message):
            expand_inputs([name])
    # two names of one subdataset (quoted or not) are one input; a file whose stem is the subdataset's is refused
    assert len(expand_inputs([f'NETCDF:"{nc}":Band2', f"NETCDF:{nc}:Band2"])) == 1
    rasterio.shutil.copy(nc.parent / "b.tif", nc.parent / "f_Band2.tif")
    with pytest.raises(CnnkitError, match="Two inputs share the name 'f_Band2'"):
        expand_inputs([f'NETCDF:"{nc}":Band2', nc.parent / "f_Band2.tif"])


def test_subdataset_names_parse_without_opening_anything(tmp_path):
    assert parse_subdataset('HDF5:"a b.h5"://grp//data') == ("HDF5", type(tmp_path)("a b.h5"), "/grp/data")
    assert parse_subdataset("scene.tif") is None and parse_subdataset("C:/data/scene.nc") is None
    assert subdataset_stem('HDF5:"/x/a b.h5"://grp/data') == "a_b_grp_data"
    assert input_stem('NETCDF:"/x/f.nc":ndvi') == "f_ndvi" and input_stem("/x/f.nc") == "f"
    real = tmp_path / 'NETCDF:"x.nc":v'  # a file that is really called so is a file, not a name
    real.write_bytes(b"")
    assert not is_subdataset_name(real) and is_subdataset_name('NETCDF:"x.nc":v')
    with pytest.raises(ValueError, match="Not a subdataset name"):
        subdataset_stem("scene.tif")
