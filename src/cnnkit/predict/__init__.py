"""Using a trained network: exact tiled inference on scenes of any size."""

from cnnkit.predict.tiling import Tile, TileGeometry, plan_tiles, tile_geometry, tiled_forward

__all__ = ["Tile", "TileGeometry", "plan_tiles", "tile_geometry", "tiled_forward"]
