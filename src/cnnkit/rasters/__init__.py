"""Rasters as the geospatial world stores them: every GDAL read and write of cnnkit, through rasterio.

* :class:`Raster` (``reading.py``) reads any raster GDAL opens — GeoTIFF/COG, JPEG2000, VRT, ENVI, netCDF — one
  window at a time, assembled from the file's own blocks (each decoded once in a row-by-row sweep), with its CRS,
  transform, nodata, scale/offset, band descriptions and colour interpretation; :func:`read_stack` reads every page
  of a TIFF stack (an image time series) whole, each page decoded once, as one array;
* :class:`CogWriter` and :func:`write_cog` (``writing.py``) write Cloud-Optimized GeoTIFFs window by window (tiled,
  deflate with a predictor, internal overviews, colour table, nodata, metadata), renamed into place when complete;
* :func:`prefetch` and :class:`BackgroundWriter` (``streaming.py``) read ahead and write behind in background
  threads with bounded queues;
* :func:`stack_vrt` (``vrt.py``) stacks bands kept in separate files as one raster (``gdalbuildvrt -separate``);
* :func:`raster_errors` (``boundary.py``): the one place where whatever a decoder (GDAL, Pillow, zlib) or the file
  system raises becomes :class:`~cnnkit.errors.CnnkitError`;
* ``plausibility.py``: an untrusted file's declared sizes checked against its bytes and a memory budget before
  decoding (:func:`~cnnkit.rasters.plausibility.tiff_blocks`, :func:`~cnnkit.rasters.plausibility.check_png`);
  :func:`read_picture` (``pictures.py``) reads PNG/JPEG with Pillow after those checks; :func:`check_vrt_sources`
  keeps a VRT to its own folder;
* :func:`prepare_folder`, :class:`FolderLock`, :class:`Staging` (``destination.py``): output folders checked before
  computing, locked while written, files staged under temporary names and renamed into place together.

PNG and JPEG stay with Pillow (:mod:`cnnkit.predict.scene`).
"""

from cnnkit.rasters.boundary import raster_errors
from cnnkit.rasters.destination import FolderLock, Staging, prepare_folder
from cnnkit.rasters.georeference import Georeference
from cnnkit.rasters.pictures import read_picture
from cnnkit.rasters.reading import (
    RASTER_EXTENSIONS,
    PageStack,
    Raster,
    Stack,
    is_subdataset_name,
    parse_subdataset,
    read_georeference,
    read_stack,
    subdataset_stem,
)
from cnnkit.rasters.streaming import BackgroundWriter, prefetch
from cnnkit.rasters.vrt import check_vrt_sources, stack_vrt
from cnnkit.rasters.writing import CogWriter, write_cog

__all__ = [
    "RASTER_EXTENSIONS",
    "BackgroundWriter",
    "CogWriter",
    "FolderLock",
    "Georeference",
    "PageStack",
    "Raster",
    "Stack",
    "Staging",
    "check_vrt_sources",
    "is_subdataset_name",
    "parse_subdataset",
    "prefetch",
    "prepare_folder",
    "raster_errors",
    "read_georeference",
    "read_picture",
    "read_stack",
    "stack_vrt",
    "subdataset_stem",
    "write_cog",
]
