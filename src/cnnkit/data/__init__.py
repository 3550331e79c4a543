"""Data-set helpers for pixel-wise learning: a user's folder of images and masks, rare-class crops."""

from cnnkit.data.crops import RareClassCrops
from cnnkit.data.folder import SegmentationFolder

__all__ = ["RareClassCrops", "SegmentationFolder"]
