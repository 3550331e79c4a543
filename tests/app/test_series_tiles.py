"""Series predicted in tiles in space (every date kept) equal the whole series: UTAE on an odd-sized series larger
than one tile (float64 to 1e-10, float32 to 1e-5, labels identical), the ConvLSTM's rule (halo 2 + T·(k − 1)/2,
growing with T; a T-independent halo is shown wrong), and ``cnnkit predict --max-pixels/--tile`` on a series run
(labels identical to the whole run, georeference kept). The bad series inputs predict must refuse, each naming its
file, are shown here too."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from cnnkit.app.predict import predict_series_files
from cnnkit.cli.main import app
from cnnkit.errors import ShapeError
from cnnkit.models import SeriesSegNet, spec_for
from cnnkit.models.utae import UTAE
from cnnkit.predict import TileGeometry
from cnnkit.predict.series import SeriesAsImage, pack_series, series_tile_geometry, tiled_series_forward
from cnnkit.train.rundir import prepare_run_dir, write_manifest

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # small convolutions: one thread is fastest


def _series(steps=5, bands=3, size=(45, 37), dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, steps, bands, *size, generator=generator, dtype=dtype)
    valid = torch.rand(1, steps, *size, generator=generator) > 0.25
    valid[0, :, 5:9, 3:20] = False  # a cloud on every date: those pixels see no data at all
    days = torch.tensor([[3, 17, 40, 41, 90, 120, 151, 200][:steps]])
    return x, valid, days


def test_utae_tiled_equals_whole_in_float64_and_float32():
    """45 × 37 (odd, not a multiple of the grid 4) in tiles of 8: many tiles, the last ones short; float64 1e-10,
    float32 1e-5 on the probabilities, the same labels."""
    torch.manual_seed(0)
    net = UTAE(3, 5, encoder_widths=(4, 8, 8), num_heads=2).eval()
    x, valid, days = _series()
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        model = net.to(dtype)
        geometry = series_tile_geometry(model, 3, days)
        assert geometry.multiple == (model.size_multiple,) * 2 == (4, 4)
        assert all(h % 4 == 0 and h >= 8 for h in geometry.halo)
        with torch.no_grad():
            whole = model(x.to(dtype), valid, days)
        tiled = tiled_series_forward(model, x.to(dtype), valid, days, tile=8, geometry=geometry)
        assert tiled.shape == whole.shape == (1, 5, 45, 37)
        difference = (torch.softmax(tiled, 1) - torch.softmax(whole, 1)).abs().max()
        assert difference <= tolerance, (dtype, float(difference))
        assert torch.equal(tiled.argmax(1), whole.argmax(1))
    # the tiles did cut the series: a halo of 0 (each tile alone) gives another result
    cut = TileGeometry((4, 4), (0, 0), (Fraction(1),) * 2, (Fraction(0),) * 2)
    alone = tiled_series_forward(net.double(), x, valid, days, tile=8, geometry=cut)
    with torch.no_grad():
        assert (alone - net(x, valid, days)).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [2, 5])
def test_convlstm_halo_grows_with_the_dates_and_tiles_equal_the_whole(steps):
    """kernel_size 3: halo = 1 (encoder 3 × 3) + T · 1 (one 3 × 3 step per date) + 1 (head 3 × 3), by hand; tiled ==
    whole with it (float64), not with the T-independent halo 2. kernel_size 1: halo 2 whatever T, and exact."""
    torch.manual_seed(1)
    x, valid, days = _series(steps=steps, size=(31, 26))
    for kernel_size, halo in ((3, 2 + steps), (1, 2)):
        net = SeriesSegNet(3, 4, width=4, hidden=4, kernel_size=kernel_size).double().eval()
        geometry = series_tile_geometry(net, 3, days)
        assert geometry.multiple == (1, 1) and geometry.halo == (halo, halo)
        with torch.no_grad():
            whole = net(x, valid, days)
        tiled = tiled_series_forward(net, x, valid, days, tile=7, geometry=geometry)
        torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-10)
        short = TileGeometry((1, 1), (2, 2), (Fraction(1),) * 2, (Fraction(2),) * 2)
        against = (tiled_series_forward(net, x, valid, days, tile=7, geometry=short) - whole).abs().max()
        if kernel_size == 3:
            assert against > 1e-6  # the receptive field grew past the encoder's and head's with every date
        else:
            assert against <= 1e-10


def test_geometries_are_checked_once_per_distinct_geometry_and_a_global_op_is_refused():
    """UTAE's geometry does not depend on T: one probe check serves 3, 5 and 7 dates (and the reused geometry is
    exact at 7 dates, float64); a ConvLSTM's halo grows with T, so each length is checked. A series network with a
    spatial mean (which no halo can reproduce) is refused by the probe check."""
    from cnnkit.errors import UnsupportedError
    from cnnkit.predict.series import SeriesGeometries

    torch.manual_seed(4)
    net = UTAE(3, 4, encoder_widths=(4, 8, 8), num_heads=2).double().eval()
    geometries = SeriesGeometries(net, 3)
    found = [geometries(torch.arange(t) * 7) for t in (3, 5, 7)]
    assert geometries.checks == 1 and found[0] == found[1] == found[2]
    x, valid, days = _series(steps=7, size=(23, 29))
    with torch.no_grad():
        whole = net(x, valid, days)
    torch.testing.assert_close(tiled_series_forward(net, x, valid, days, tile=8, geometry=found[2]), whole, rtol=0,
                               atol=1e-10)
    lstm = SeriesGeometries(SeriesSegNet(3, 4, width=4, hidden=4).double().eval(), 3)
    assert [lstm(torch.arange(t)).halo[0] for t in (3, 5, 3)] == [5, 7, 5] and lstm.checks == 2

    class SpatialMean(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)

        def forward(self, x, valid, days):
            out = self.conv(x[:, -1])
            return out + out.mean((-2, -1), keepdim=True)

    with pytest.raises(UnsupportedError, match="Tiles do not reproduce this network's whole-image result"):
        series_tile_geometry(SpatialMean().eval(), 3, torch.arange(2))


def test_packing_is_the_series_network_itself_and_refuses_wrong_shapes():
    torch.manual_seed(2)
    net = SeriesSegNet(3, 4, width=4, hidden=4).double().eval()
    x, valid, days = _series(steps=3, size=(9, 11))
    with torch.no_grad():
        assert torch.equal(SeriesAsImage(net, 3, days)(pack_series(x, valid)), net(x, valid, days))
    with pytest.raises(ShapeError, match=r"SeriesAsImage expects \(1, T·C \+ T, H, W\) = \(1, 12, H, W\)"):
        SeriesAsImage(net, 3, days)(torch.zeros(1, 11, 9, 11, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"valid must be \(1, T, H, W\) = \(1, 3, 9, 11\)"):
        tiled_series_forward(net, x, valid[:, :2], days, tile=8)
    with pytest.raises(ShapeError, match=r"days must hold one day per date \(3\)"):
        tiled_series_forward(net, x, valid, days[:, :2], tile=8)


@pytest.fixture(scope="module")
def utae_run(tmp_path_factory):
    """A series run folder written by hand: a random-weight UTAE on 3 bands, 5 classes."""
    torch.manual_seed(3)
    run = prepare_run_dir(tmp_path_factory.mktemp("utae") / "run", log=lambda _: None)
    spec = spec_for("UTAE", args={"encoder_widths": [4, 8, 8], "num_heads": 2})
    net = UTAE(3, 5, encoder_widths=(4, 8, 8), num_heads=2)
    write_manifest(run, net, spec=spec, in_channels=3, num_classes=5,
                   preprocessing={"kind": "series", "mean": [0.5, 1.0, -1.0], "std": [2.0, 1.0, 0.5], "band_count": 3,
                                  "nodata": None},
                   class_names=[f"c{k}" for k in range(5)], palette=[(k * 40, 0, 0) for k in range(5)],
                   ignore_index=None, task="series-segmentation")
    return run, net.eval()


def test_cnnkit_predict_tiles_a_series_and_equals_the_whole_run(utae_run, tmp_path):
    """--max-pixels 100 --tile 16 on a 45 × 37 GeoTIFF stack: the labels equal the whole run's and the network run
    by hand (standardised with the manifest, days from dates.json); probabilities within one float16 step; the
    GeoTIFF's georeference kept."""
    run, net = utae_run
    rng = np.random.default_rng(0)
    stack = rng.normal(0, 2, (4, 3, 45, 37)).astype(np.float32)
    stack[1, :, 10:20, 5:15] = np.nan  # a cloud on date 1
    folder = tmp_path / "in"
    folder.mkdir()
    tags = [(33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0), True)]
    tifffile.imwrite(folder / "geo.tif", stack, photometric="minisblack", extratags=tags)
    (folder / "dates.json").write_text(json.dumps({"geo": ["2021-04-02", "2021-04-12", "2021-06-01", "2021-08-30"]}))
    whole = runner.invoke(app, ["predict", str(run), str(folder / "geo.tif"), "--out", str(tmp_path / "whole"),
                                "--probabilities", "--probability-dtype", "float16"], env={"COLUMNS": "200"})
    assert whole.exit_code == 0, whole.output
    assert "run in tiles" not in whole.output
    tiled = runner.invoke(app, ["predict", str(run), str(folder / "geo.tif"), "--out", str(tmp_path / "tiled"),
                                "--probabilities", "--probability-dtype", "float16", "--max-pixels", "100", "--tile",
                                "16"], env={"COLUMNS": "200"})
    assert tiled.exit_code == 0, tiled.output
    assert "1 run in tiles" in tiled.output
    labels = {k: tifffile.imread(tmp_path / k / "geo_labels.tif") for k in ("whole", "tiled")}
    np.testing.assert_array_equal(labels["tiled"], labels["whole"])
    series = torch.from_numpy(stack)
    valid = torch.isfinite(series).all(1)
    mean, std = torch.tensor([0.5, 1.0, -1.0])[:, None, None], torch.tensor([2.0, 1.0, 0.5])[:, None, None]
    x = torch.where(valid[:, None], (series - mean) / std, torch.zeros(()))
    days = torch.tensor([[91, 101, 151, 241]])  # days since 2021-01-01, by hand
    with torch.no_grad():
        expected = net(x[None], valid[None], days)[0]
    np.testing.assert_array_equal(labels["tiled"], expected.argmax(0).numpy())
    import rasterio

    with rasterio.open(tmp_path / "tiled" / "geo_probabilities.tif") as ds:
        tiled_p = ds.read()
    with rasterio.open(tmp_path / "whole" / "geo_probabilities.tif") as ds:
        whole_p = ds.read()
    np.testing.assert_allclose(tiled_p, whole_p, atol=1e-3)  # float16: one step near 1 is 4.9e-4
    np.testing.assert_allclose(tiled_p, torch.softmax(expected, 0).numpy(), atol=1e-3)
    with tifffile.TiffFile(tmp_path / "tiled" / "geo_labels.tif") as tif:
        assert tif.pages[0].tags[33550].value == (10.0, 10.0, 0.0)
        assert tif.pages[0].tags[33922].value == (0.0, 0.0, 0.0, 500000.0, 4000000.0, 0.0)
    refused = runner.invoke(app, ["predict", str(run), str(folder / "geo.tif"), "--out", str(tmp_path / "r"),
                                  "--batch-size", "2"], env={"COLUMNS": "200"})
    assert refused.exit_code != 0 and "--batch-size" in refused.output and "time series" in refused.output


def _dated_folder(root, names, dates=None, shape=(3, 6, 5)):
    root.mkdir(parents=True)
    for name in names:
        tifffile.imwrite(root / name, np.ones(shape, np.float32), photometric="minisblack")
    if dates is not None:
        (root / "dates.json").write_text(json.dumps(dates))
    return root


def test_bad_series_are_refused_naming_the_file(utae_run, tmp_path):
    """Dates that repeat, go backwards or cannot be parsed, a series of no date, a mask of another number of dates:
    each refused by predict with the file's name (nothing written)."""
    run, _ = utae_run
    cases = {
        "repeat": (_dated_folder(tmp_path / "repeat", ["a.tif", "b.tif"], ["2021-04-02", "2021-04-02"]),
                   r"repeat: the dates must increase\. .*repeat/dates\.json\[1\] \(2021-04-02\) repeats"),
        "backwards": (_dated_folder(tmp_path / "backwards", ["a.tif", "b.tif"], ["2021-05-02", "2021-04-02"]),
                      r"backwards/dates\.json\[1\] \(2021-04-02\) goes backwards from"),
        "names": (_dated_folder(tmp_path / "names", ["a_20210502.tif", "b_20210402.tif"]),  # read in name order
                  r"names: the dates must increase\. .*b_20210402\.tif \(2021-04-02\) goes backwards from "
                  r".*a_20210502\.tif"),
        "unparsed": (_dated_folder(tmp_path / "unparsed", ["a.tif", "b.tif"], ["2021-04-02", "April"]),
                     r"unparsed.*cannot parse the date 'April'"),
    }
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 3, 6, 5), np.float32))
    cases["empty"] = (empty, r"empty\.npy: a series needs at least one date")
    data = tmp_path / "data"
    (data / "series").mkdir(parents=True)
    (data / "masks").mkdir()
    tifffile.imwrite(data / "series" / "s.tif", np.ones((3, 3, 6, 5), np.float32), photometric="minisblack")
    np.save(data / "masks" / "s.npy", np.ones((2, 6, 5), np.uint8))
    cases["mask"] = (data, r"masks/s\.npy: the mask has 2 dates, the series .*s\.tif has 3")
    for name, (path, message) in cases.items():
        with pytest.raises(ShapeError, match=message):
            predict_series_files(run, [path], tmp_path / f"out_{name}")
        assert not list((tmp_path / f"out_{name}").glob("*_labels*")), name


def test_public_names():
    import cnnkit.app.pastis
    import cnnkit.app.predict
    import cnnkit.predict

    assert {"SeriesAsImage", "SeriesGeometries", "pack_series", "series_tile_geometry", "tiled_series_forward"} <= set(
        cnnkit.predict.__all__)
    assert {"SeriesInput", "days_reference", "predict_series", "predict_series_files", "series_inputs"} <= set(
        cnnkit.app.predict.__all__)
    assert {"train_pastis", "predict_pastis", "pastis_inputs", "is_pastis_input"} <= set(cnnkit.app.pastis.__all__)
    for module in (cnnkit.predict, cnnkit.app.predict, cnnkit.app.pastis):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
