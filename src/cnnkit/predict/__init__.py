"""Using a trained network: the preprocessing training applied, batches equal to single images, and exact tiled
inference on scenes of any size, and on image time series in tiles in space (``cnnkit predict`` is
:mod:`cnnkit.app.predict`)."""

from cnnkit.predict.predictor import Prediction, Predictor, Preprocessing
from cnnkit.predict.scene import Scene, open_scene
from cnnkit.predict.series import (
    SeriesAsImage,
    SeriesGeometries,
    pack_series,
    series_tile_geometry,
    tiled_series_forward,
    tiled_series_windows,
)
from cnnkit.predict.tiling import Tile, TileGeometry, plan_tiles, tile_geometry, tiled_forward

__all__ = [
    "Prediction",
    "Predictor",
    "Preprocessing",
    "Scene",
    "SeriesAsImage",
    "SeriesGeometries",
    "Tile",
    "TileGeometry",
    "open_scene",
    "pack_series",
    "plan_tiles",
    "series_tile_geometry",
    "tile_geometry",
    "tiled_forward",
    "tiled_series_forward",
    "tiled_series_windows",
]
