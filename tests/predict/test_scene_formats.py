"""Tiled == whole on the rasters the geospatial world stores: a Cloud-Optimized GeoTIFF, a JPEG2000 file and a VRT
mosaic of two adjacent GeoTIFFs (equal to the same mosaic written as one file). All data generated here."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from torch import nn

from cnnkit.models import TinySegNet
from cnnkit.predict import Predictor, Preprocessing, open_scene

BANDS = 3
TRANSFORM = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
PREP = Preprocessing(mean=(1000.0,) * BANDS, std=(300.0,) * BANDS, nodata=0.0, multiple_of=4)


def _predictor() -> Predictor:
    torch.manual_seed(0)
    model = TinySegNet(BANDS + 1, 4, width=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return Predictor(model.eval(), PREP, ("a", "b", "c", "d"))


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(1000, 300, (BANDS, height, width)).clip(1, 4000).astype(np.uint16)
    image[:, 40:52, 30:70] = 0  # the run's nodata
    return image


def _geotiff(path, image, transform=TRANSFORM, **options) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=image.shape[2], height=image.shape[1], count=image.shape[0],
                       dtype=image.dtype, crs="EPSG:32632", transform=transform, **options) as dst:
        dst.write(image)


def _tiled_and_whole(path, tile: int = 32):
    """Labels of the scene run tile by tile from the file, and of the whole image read by rasterio directly."""
    predictor = _predictor()
    scene = open_scene(path, bands=BANDS)
    labels, _ = predictor.predict_scene(scene, tile=tile)
    scene.close()
    with rasterio.open(path) as ds:  # the independent reference: GDAL's own whole read
        whole = ds.read()
    return labels, predictor.predict_image(whole.astype(np.float32)).labels.numpy(), whole


def test_cog_input_tiled_equals_whole(tmp_path):
    image = _image(200, 170)
    _geotiff(tmp_path / "plain.tif", image)
    rasterio.shutil.copy(tmp_path / "plain.tif", tmp_path / "scene.tif", driver="COG", COMPRESS="DEFLATE",
                         PREDICTOR="YES", BLOCKSIZE=64)
    with rasterio.open(tmp_path / "scene.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.block_shapes[0] == (64, 64)
    tiled, whole, pixels = _tiled_and_whole(tmp_path / "scene.tif", tile=64)
    assert np.array_equal(pixels, image)
    assert np.array_equal(tiled, whole)
    assert (whole[40:52, 30:70] == 255).all() and (whole != 255).sum() > 0.9 * whole.size


def test_jpeg2000_input_tiled_equals_whole(tmp_path):
    image = _image(150, 130, seed=1)
    path = tmp_path / "scene.jp2"
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=130, height=150, count=BANDS, dtype="uint16",
                       crs="EPSG:32632", transform=TRANSFORM, QUALITY=100, REVERSIBLE="YES", BLOCKXSIZE=64,
                       BLOCKYSIZE=64) as dst:
        dst.write(image)
    scene = open_scene(path, bands=BANDS)
    assert scene.georeference.transform == TRANSFORM
    scene.close()
    tiled, whole, pixels = _tiled_and_whole(path)
    assert np.array_equal(pixels, image)  # lossless
    assert np.array_equal(tiled, whole)


def _vrt(path, parts, width, height) -> None:
    """A VRT mosaic of GeoTIFFs, each placed at its column offset (written by hand: rasterio has no VRT builder)."""
    bands = []
    for band in range(1, BANDS + 1):
        sources = "".join(
            f"<SimpleSource><SourceFilename relativeToVRT=\"1\">{name}</SourceFilename>"
            f"<SourceBand>{band}</SourceBand><SrcRect xOff=\"0\" yOff=\"0\" xSize=\"{w}\" ySize=\"{height}\"/>"
            f"<DstRect xOff=\"{x}\" yOff=\"0\" xSize=\"{w}\" ySize=\"{height}\"/></SimpleSource>"
            for name, x, w in parts)
        bands.append(f"<VRTRasterBand dataType=\"UInt16\" band=\"{band}\">{sources}</VRTRasterBand>")
    geo = ", ".join(repr(v) for v in TRANSFORM.to_gdal())
    path.write_text(f"<VRTDataset rasterXSize=\"{width}\" rasterYSize=\"{height}\">"
                    f"<SRS>EPSG:32632</SRS><GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>")


def test_vrt_mosaic_tiled_equals_whole_and_equals_one_file(tmp_path):
    image = _image(120, 150, seed=2)
    left, right = image[:, :, :70], image[:, :, 70:]
    _geotiff(tmp_path / "left.tif", left, tiled=True, blockxsize=32, blockysize=32, compress="deflate")
    _geotiff(tmp_path / "right.tif", right, transform=TRANSFORM @ Affine.translation(70, 0))
    _vrt(tmp_path / "mosaic.vrt", [("left.tif", 0, 70), ("right.tif", 70, 80)], 150, 120)
    _geotiff(tmp_path / "one.tif", image)
    tiled, whole, pixels = _tiled_and_whole(tmp_path / "mosaic.vrt")
    assert np.array_equal(pixels, image)
    assert np.array_equal(tiled, whole)
    one, _, _ = _tiled_and_whole(tmp_path / "one.tif")
    assert np.array_equal(tiled, one)
    scene = open_scene(tmp_path / "mosaic.vrt", bands=BANDS)
    assert scene.georeference.transform == TRANSFORM and scene.georeference.crs == "EPSG:32632"


@pytest.mark.parametrize("tile", [32, 64])
def test_each_block_decoded_once_in_a_sweep(tmp_path, tile):
    """Windows with halos overlap their neighbours' blocks; the reader decodes each block once all the same."""
    image = _image(256, 320, seed=3)
    _geotiff(tmp_path / "t.tif", image, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    scene = open_scene(tmp_path / "t.tif", bands=BANDS)
    _predictor().predict_scene(scene, tile=tile)
    assert scene._array.blocks_decoded == (256 // 64) * (320 // 64)
    scene.close()
