"""Data-set helpers for pixel-wise learning: crops centred on rare-class pixels."""

from cnnkit.data.crops import RareClassCrops

__all__ = ["RareClassCrops"]
