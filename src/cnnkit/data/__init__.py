"""Data-set helpers for pixel-wise learning: a user's folder of images and masks (read item by item), standardised
bands with a validity band for missing pixels (statistics in one streaming pass), rare-class crops, image time
series with clouds, and the seeded synthetic data sets of ``cnnkit demo``."""

from cnnkit.data.crops import RareClassCrops
from cnnkit.data.dates import SeriesDates, series_dates
from cnnkit.data.folder import SegmentationFolder
from cnnkit.data.pastis import PastisDataset
from cnnkit.data.series import (
                                SeriesBatch,
                                SeriesCrops,
                                SeriesFolder,
                                SeriesItem,
                                SeriesWindows,
                                StandardizedSeries,
                                collate_series,
                                open_series,
                                read_series,
                                series_band_statistics,
)
from cnnkit.data.standardize import DataStatistics, Standardized, StatisticsPass, band_statistics, data_statistics
from cnnkit.data.synthetic import (
                                CLASS_NAMES,
                                PATTERNS,
                                RARE_CLASS,
                                TEXTURE_NAMES,
                                SyntheticLandCover,
                                SyntheticTextures,
                                texture_pattern,
)
from cnnkit.data.synthetic_series import CROP_CLASSES, crop_series

__all__ = [
    "CLASS_NAMES",
    "CROP_CLASSES",
    "PATTERNS",
    "RARE_CLASS",
    "TEXTURE_NAMES",
    "DataStatistics",
    "PastisDataset",
    "RareClassCrops",
    "SegmentationFolder",
    "SeriesBatch",
    "SeriesCrops",
    "SeriesDates",
    "SeriesFolder",
    "SeriesItem",
    "SeriesWindows",
    "Standardized",
    "StandardizedSeries",
    "StatisticsPass",
    "SyntheticLandCover",
    "SyntheticTextures",
    "band_statistics",
    "collate_series",
    "crop_series",
    "data_statistics",
    "open_series",
    "read_series",
    "series_band_statistics",
    "series_dates",
    "texture_pattern",
]
