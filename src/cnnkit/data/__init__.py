"""Data-set helpers for pixel-wise learning: a user's folder of images and masks, standardised bands with a
validity band for missing pixels, rare-class crops."""

from cnnkit.data.crops import RareClassCrops
from cnnkit.data.folder import SegmentationFolder
from cnnkit.data.standardize import Standardized, band_statistics

__all__ = ["RareClassCrops", "SegmentationFolder", "Standardized", "band_statistics"]
