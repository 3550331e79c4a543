"""Using a trained network: the preprocessing training applied, batches equal to single images, and exact tiled
inference on scenes of any size (``cnnkit predict`` is :mod:`cnnkit.app.predict`)."""

from cnnkit.predict.predictor import Prediction, Predictor, Preprocessing
from cnnkit.predict.scene import Scene, open_scene
from cnnkit.predict.tiling import Tile, TileGeometry, plan_tiles, tile_geometry, tiled_forward

__all__ = [
    "Prediction",
    "Predictor",
    "Preprocessing",
    "Scene",
    "Tile",
    "TileGeometry",
    "open_scene",
    "plan_tiles",
    "tile_geometry",
    "tiled_forward",
]
