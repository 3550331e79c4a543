"""Rendering: label maps → coloured masks, overlays and legends; filters, gradients and activations as grids.

Everything returns ``uint8`` NumPy arrays, channels last (H, W, 3), ready for :func:`save_png` (Pillow). A pixel
without data is :data:`NODATA_COLOR` in every picture, a pixel with data but no label :data:`UNLABELLED_COLOR`.
"""

from cnnkit.render.grids import activation_grid, annotated_grid, colorbar, filter_grid, signed_to_rgb, tile_images
from cnnkit.render.labels import (
    DEFAULT_PALETTE,
    NODATA_COLOR,
    UNLABELLED_COLOR,
    colorize,
    default_palette,
    image_to_rgb,
    legend,
    overlay,
    probabilities_to_labels,
    save_png,
)
from cnnkit.render.panels import (
    CORRECT_COLOR,
    WRONG_COLOR,
    confidence_colors,
    confidence_panel,
    error_panel,
    label_panel,
)

__all__ = [
    "CORRECT_COLOR",
    "DEFAULT_PALETTE",
    "NODATA_COLOR",
    "UNLABELLED_COLOR",
    "WRONG_COLOR",
    "activation_grid",
    "annotated_grid",
    "colorbar",
    "colorize",
    "confidence_colors",
    "confidence_panel",
    "default_palette",
    "error_panel",
    "filter_grid",
    "image_to_rgb",
    "label_panel",
    "legend",
    "overlay",
    "probabilities_to_labels",
    "save_png",
    "signed_to_rgb",
    "tile_images",
]
