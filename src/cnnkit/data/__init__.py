"""Data-set helpers for pixel-wise learning: a user's folder of images and masks, standardised bands with a
validity band for missing pixels, rare-class crops, image time series with clouds, and the seeded synthetic
data sets of ``cnnkit demo``."""

from cnnkit.data.crops import RareClassCrops
from cnnkit.data.folder import SegmentationFolder
from cnnkit.data.series import SeriesCrops, SeriesFolder, StandardizedSeries, collate_series, series_band_statistics
from cnnkit.data.standardize import Standardized, band_statistics
from cnnkit.data.synthetic import CLASS_NAMES, RARE_CLASS, SyntheticLandCover
from cnnkit.data.synthetic_series import CROP_CLASSES, crop_series

__all__ = [
    "CLASS_NAMES",
    "CROP_CLASSES",
    "RARE_CLASS",
    "RareClassCrops",
    "SegmentationFolder",
    "SeriesCrops",
    "SeriesFolder",
    "Standardized",
    "StandardizedSeries",
    "SyntheticLandCover",
    "band_statistics",
    "collate_series",
    "crop_series",
    "series_band_statistics",
]
