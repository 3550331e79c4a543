"""Predictor: the training preprocessing reproduced, batched == alone, tiled scene == whole image (from a TIFF read
through GDAL, into a COG)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import tifffile
import torch
from affine import Affine
from torch import nn

from cnnkit.data import Standardized
from cnnkit.errors import ShapeError
from cnnkit.models import TinySegNet
from cnnkit.predict.outputs import label_cog
from cnnkit.predict.predictor import Predictor, Preprocessing
from cnnkit.predict.scene import open_scene


def _model(in_channels=5, num_classes=4, seed=0):
    torch.manual_seed(seed)
    model = TinySegNet(in_channels, num_classes, width=8)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _scene(height, width, bands=4, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 40, (bands, height, width)).astype(np.float32)
    image[1, 5:20, 7:9] = np.nan
    image[:, 30:34, 10:20] = -9999
    return image


PREP = Preprocessing(mean=(100.0, 90.0, 110.0, 95.0), std=(40.0, 30.0, 35.0, 45.0), nodata=-9999.0, multiple_of=4)


def test_preprocessing_equals_training():
    """The network sees exactly what Standardized gave it in training (NaN and nodata missing, padded to 4)."""
    image = torch.from_numpy(_scene(37, 22))
    data = Standardized([(image, torch.zeros(37, 22, dtype=torch.long))], PREP.mean, PREP.std, nodata=-9999.0,
                        multiple_of=4)
    x, valid = PREP(image)
    expected, label = data[0]
    assert torch.equal(x, expected)
    assert torch.equal(valid, (label[:37, :22] != -100))


def test_bands_counted_from_zero():
    prep = Preprocessing(mean=(0.0, 0.0), std=(1.0, 1.0), bands=(2, 0))
    image = torch.arange(3.0)[:, None, None].expand(3, 2, 2)
    x, _ = prep(image)
    assert x[0].eq(2).all() and x[1].eq(0).all() and x[2].eq(1).all()
    with pytest.raises(ShapeError, match=r"bands \[2, 0\] \(counted from 0\); the image has 2"):
        prep(torch.zeros(2, 3, 3))


def test_image_labels_and_no_data():
    predictor = Predictor(_model(), PREP, ("a", "b", "c", "d"), ignore_value=255)
    image = _scene(41, 30)
    p = predictor.predict_image(image)
    x, valid = PREP(torch.from_numpy(image))
    with torch.no_grad():
        logits = predictor.model(x[None])[0, :, :41, :30]
    assert torch.equal(p.labels[valid], logits.argmax(0)[valid])
    assert (p.labels[~valid] == 255).all() and (p.probabilities[:, ~valid] == 0).all()
    torch.testing.assert_close(p.probabilities[:, valid], logits.softmax(0)[:, valid])
    assert int((~valid).sum()) == 15 * 2 + 4 * 10


def test_batched_equals_alone():
    predictor = Predictor(_model(), PREP, ("a", "b", "c", "d"))
    images = [_scene(h, w, seed=i) for i, (h, w) in enumerate([(41, 30), (16, 64), (33, 33), (8, 5), (40, 29)])]
    batched = predictor.predict_images(images, batch_size=2)
    for image, result in zip(images, batched):
        alone = predictor.predict_image(image)
        assert torch.equal(result.labels, alone.labels)
        torch.testing.assert_close(result.probabilities, alone.probabilities, atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels_last", [True, False])
def test_scene_tiled_equals_whole_and_keeps_georeference(tmp_path, channels_last):
    predictor = Predictor(_model(), PREP, ("a", "b", "c", "d"))
    image = _scene(150, 101)
    path = tmp_path / "scene.tif"
    # GeoTIFF tags as another program writes them: GDAL must understand them as a transform
    tags = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True)]
    tifffile.imwrite(path, image.transpose(1, 2, 0) if channels_last else image, extratags=tags,
                     photometric="minisblack", planarconfig="contig" if channels_last else "separate")
    scene = open_scene(path, bands=4)
    assert scene.shape == (4, 150, 101)
    assert scene.georeference.transform == Affine(10, 0, 500000, 0, -10, 4000000)
    with label_cog(tmp_path / "labels.tif", (150, 101), ("a", "b", "c", "d"),
                   georeference=scene.georeference) as out:
        labels = np.zeros((150, 101), np.int16)
        probabilities = np.zeros((150, 101, 4), np.float32)

        class Both:  # the array for the comparison, the COG as the app fills it
            dtype = labels.dtype

            def __setitem__(self, key, value):
                labels[key] = value
                out[key] = value

        _, counts = predictor.predict_scene(scene, tile=32, labels_out=Both(), probabilities_out=probabilities)
    whole = predictor.predict_image(image)
    assert np.array_equal(labels, whole.labels.numpy())
    np.testing.assert_allclose(probabilities, whole.probabilities.permute(1, 2, 0).numpy(), atol=1e-5, rtol=0)
    assert torch.equal(counts, whole.class_pixels(4))
    with rasterio.open(tmp_path / "labels.tif") as ds:
        assert np.array_equal(ds.read(1), whole.labels.numpy())
        assert ds.transform == Affine(10, 0, 500000, 0, -10, 4000000)


def test_scene_with_wrong_band_count(tmp_path):
    path = tmp_path / "scene.tif"
    tifffile.imwrite(path, np.zeros((3, 20, 20), np.uint16), photometric="minisblack")
    with pytest.raises(ShapeError, match="has 3 bands; the network was trained on 4"):
        open_scene(path, bands=4)


@pytest.mark.parametrize(("shape", "options"), [
    ((23, 17, 3), {"planarconfig": "contig"}),
    ((3, 23, 17), {"planarconfig": "separate"}),
    ((23, 17), {}),
    ((23, 17, 3), {"planarconfig": "contig", "byteorder": ">"}),
    ((3, 23, 17), {}),  # a page stack: one page per band
    ((40, 48, 3), {"planarconfig": "contig", "compression": "zlib", "tile": (16, 16)}),
    ((3, 40, 48), {"planarconfig": "separate", "compression": "zlib", "predictor": True, "rowsperstrip": 5}),
])
def test_windows_read_through_gdal_equal_tifffile(tmp_path, shape, options):
    """tifffile (an independent TIFF reader) decodes the whole file; GDAL's windows must equal its pixels."""
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if options.get("predictor"):  # tifffile's own floating-point predictor needs imagecodecs: integers here
        array = (array * 1000 + 5000).astype(np.uint16)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, array, photometric="minisblack", **options)
    scene = open_scene(path, bands=1 if len(shape) == 2 else 3)
    reference = tifffile.imread(path)
    full = reference[None] if len(shape) == 2 else (reference.transpose(2, 0, 1) if shape[-1] == 3 else reference)
    np.testing.assert_array_equal(scene.read(), full)
    np.testing.assert_array_equal(scene.read(slice(5, 19), slice(3, 11)), full[:, 5:19, 3:11])
    np.testing.assert_array_equal(scene.read(slice(20, 99), slice(10, 99)), full[:, 20:, 10:])  # cut at the edge
    scene.close()


def test_preview_reads_in_blocks_and_keeps_none(tmp_path):
    """A scene's preview holds one block of rows (and the reader's bounded cache of the file's strips) at a time:
    strided views kept every block alive (an 8000² scene's overlay cost 1 GB)."""
    import tracemalloc

    image = np.random.default_rng(2).normal(size=(1024, 4096, 4)).astype(np.float32)  # 64 MB
    tifffile.imwrite(tmp_path / "p.tif", image, photometric="minisblack", planarconfig="contig", rowsperstrip=16)
    scene = open_scene(tmp_path / "p.tif", bands=4)
    tracemalloc.start()
    try:
        preview = scene.preview(8, rows_per_read=128)  # blocks of 128 rows: 8 MB each as float32
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(preview, image.transpose(2, 0, 1)[:, ::8, ::8])
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MB"
