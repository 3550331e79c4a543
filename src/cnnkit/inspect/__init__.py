"""Seeing inside: record activations and gradients, follow filters through training, Grad-CAM, t-SNE.

Rendering (grids, masks, overlays, PNG files) lives in :mod:`cnnkit.render`.
"""

from cnnkit.inspect.attribution import grad_cam, saliency
from cnnkit.inspect.embedding import pool_features, sample_pixels, tsne_plot
from cnnkit.inspect.evolution import FilterChange, FilterEvolution
from cnnkit.inspect.recorder import Recorder

__all__ = ["FilterChange", "FilterEvolution", "Recorder", "grad_cam", "pool_features", "saliency", "sample_pixels",
           "tsne_plot"]
