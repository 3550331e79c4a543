"""Rendering: label maps → coloured masks, overlays and legends; filters, gradients and activations as grids.

Everything returns ``uint8`` NumPy arrays, channels last (H, W, 3), ready for :func:`save_png` (Pillow).
"""

from cnnkit.render.grids import activation_grid, filter_grid, signed_to_rgb, tile_images
from cnnkit.render.labels import (
    DEFAULT_PALETTE,
    colorize,
    default_palette,
    image_to_rgb,
    legend,
    overlay,
    probabilities_to_labels,
    save_png,
)

__all__ = [
    "DEFAULT_PALETTE",
    "activation_grid",
    "colorize",
    "default_palette",
    "filter_grid",
    "image_to_rgb",
    "legend",
    "overlay",
    "probabilities_to_labels",
    "save_png",
    "signed_to_rgb",
    "tile_images",
]
