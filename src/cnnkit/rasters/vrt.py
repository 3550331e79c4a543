"""Bands kept in separate files, stacked as one multi-band raster: a VRT written by hand (``gdalbuildvrt -separate``).

Sentinel-2 and Landsat ship one file per band. A VRT is a small XML file that GDAL reads as one raster whose bands
are those files' bands: nothing is copied, every reader of cnnkit (training folders, ``cnnkit predict``) reads it as
it reads a GeoTIFF.

Examples:
    >>> import numpy as np, rasterio, tempfile, os
    >>> from affine import Affine
    >>> folder = tempfile.mkdtemp()
    >>> for k, name in enumerate(["B02", "B03"]):
    ...     with rasterio.open(os.path.join(folder, f"{name}.tif"), "w", driver="GTiff", width=4, height=3, count=1,
    ...                        dtype="uint16", crs="EPSG:32633", transform=Affine(10, 0, 6e5, 0, -10, 5e6)) as dst:
    ...         dst.write(np.full((1, 3, 4), k + 1, "uint16"))
    >>> path = stack_vrt([os.path.join(folder, "B02.tif"), os.path.join(folder, "B03.tif")],
    ...                  os.path.join(folder, "stack.vrt"), descriptions=["blue", "green"])
    >>> with rasterio.open(path) as ds:
    ...     ds.count, ds.descriptions, ds.read()[:, 0, 0].tolist(), ds.crs.to_epsg()
    (2, ('blue', 'green'), [1, 2], 32633)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from cnnkit.errors import CnnkitError, ShapeError
from cnnkit.rasters.boundary import raster_errors

__all__ = ["check_vrt_sources", "stack_vrt", "vrt_source_files"]

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
               "int32": "Int32", "float32": "Float32", "float64": "Float64"}

def stack_vrt(band_files: Sequence[str | os.PathLike], path: str | os.PathLike,
              descriptions: Sequence[str] | None = None) -> Path:
    """Write a VRT at ``path`` whose band ``k`` is the first band of ``band_files[k]`` (``gdalbuildvrt -separate``).

    The files must lie on one grid (same size, CRS and transform); their paths are written relative to the VRT.
    Each band keeps its file's nodata; ``descriptions`` (default: each file's own description, else its stem) name
    the bands.

    Raises:
        ShapeError: no file, descriptions of another length, or files on different grids (naming the two files).
        CnnkitError: a file GDAL cannot open, or a dtype a VRT cannot hold.
    """
    import rasterio

    files = [Path(f) for f in band_files]
    path = Path(path)
    if not files:
        raise ShapeError("stack_vrt needs at least one band file. Received band_files=[].")
    if descriptions is not None and len(descriptions) != len(files):
        raise ShapeError(f"descriptions must name each of the {len(files)} files. Received {len(descriptions)}: "
                         f"{list(descriptions)}.")
    bands, first = [], None
    for index, file in enumerate(files):
        with raster_errors(file, "open the raster"), rasterio.open(file) as ds:
            grid = (ds.width, ds.height, ds.crs, ds.transform)
            if first is None:
                first = (file, grid, ds.crs.to_wkt() if ds.crs else None, ds.transform)
            elif grid != first[1]:
                raise ShapeError(f"Band files must lie on one grid: {first[0]} is {first[1][0]}×{first[1][1]} on "
                                 f"{first[1][2]} {tuple(first[1][3])}, {file} is {grid[0]}×{grid[1]} on {grid[2]} "
                                 f"{tuple(grid[3])}.")
            dtype = ds.dtypes[0]
            if dtype not in _GDAL_TYPES:
                raise CnnkitError(f"{file} holds {dtype} values, which this VRT writer does not stack. Expected one "
                                  f"of {tuple(_GDAL_TYPES)}.")
            name = descriptions[index] if descriptions is not None else (ds.descriptions[0] or file.stem)
            bands.append((file, dtype, ds.nodata, str(name), ds.block_shapes[0]))
    width, height = first[1][0], first[1][1]
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if first[2]:
        lines.append(f"  <SRS>{escape(first[2])}</SRS>")
    if not first[3].is_identity:
        lines.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in first[3].to_gdal()) + "</GeoTransform>")
    for band, (file, dtype, nodata, name, (block_rows, block_cols)) in enumerate(bands, start=1):
        source = os.path.relpath(file.resolve(), path.resolve().parent)
        lines += [f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="{band}">',
                  f"    <Description>{escape(name)}</Description>"]
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines += ["    <SimpleSource>",
                  f'      <SourceFilename relativeToVRT="1">{escape(source)}</SourceFilename>',
                  "      <SourceBand>1</SourceBand>",
                  f'      <SourceProperties RasterXSize="{width}" RasterYSize="{height}" '
                  f'DataType="{_GDAL_TYPES[dtype]}" BlockXSize="{block_cols}" BlockYSize="{block_rows}"/>',
                  f'      <SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
                  f'      <DstRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>',
                  "    </SimpleSource>", "  </VRTRasterBand>"]
    lines.append("</VRTDataset>")
    try:
        path.write_text("\n".join(lines) + "\n")
    except OSError as err:
        raise CnnkitError(f"Could not write {path}: {err}.") from err
    return path


MAX_VRT_BYTES = 16 * 2**20
"""A VRT larger than this is refused before it is parsed (VRTs are small XML files)."""

_NESTING = 8


def _sources(path: Path) -> list[tuple[str, bool]]:
    """Every ``SourceFilename`` (and ``SourceDataset``) of a VRT: ``(text, relative to the VRT)``."""
    import xml.etree.ElementTree as ET

    size = path.stat().st_size
    if size > MAX_VRT_BYTES:
        raise CnnkitError(f"{path} is a VRT of {size:,} bytes: more than {MAX_VRT_BYTES:,}. Is it a VRT?")
    try:
        root = ET.fromstring(path.read_bytes())
    except (ET.ParseError, ValueError, RecursionError) as err:
        raise CnnkitError(f"Could not read the VRT {path}: its XML is damaged ({err}).") from err
    found = []
    for element in root.iter():
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag == "PixelFunctionLanguage" and (element.text or "").strip().lower() == "python":
            raise CnnkitError(f"{path}: the VRT asks to run Python code (PixelFunctionLanguage=Python); cnnkit never "
                              "runs code from a file.")
        if tag in ("SourceFilename", "SourceDataset"):
            found.append(((element.text or "").strip(), element.get("relativeToVRT", "0") == "1"))
    return found


def check_vrt_sources(path: str | os.PathLike, allow_outside: bool = False, _depth: int = 0) -> None:
    """Refuse a VRT that reads files outside its own folder (or through GDAL's virtual file systems and connection
    strings), unless ``allow_outside``: a VRT from elsewhere could otherwise read any file the user can.

    Sources that are VRTs themselves are checked the same way. A VRT that asks for Python pixel functions is always
    refused.

    Raises:
        CnnkitError: naming the VRT, the source and the folder it must lie in.

    Examples:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> _ = open(os.path.join(folder, "x.vrt"), "w").write(
        ...     '<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand dataType="Byte" band="1"><SimpleSource>'
        ...     '<SourceFilename relativeToVRT="0">/etc/passwd</SourceFilename></SimpleSource></VRTRasterBand>'
        ...     '</VRTDataset>')
        >>> check_vrt_sources(os.path.join(folder, "x.vrt"))
        Traceback (most recent call last):
        ...
        cnnkit.errors.CnnkitError: .../x.vrt reads /etc/passwd, outside its own folder .... Pass \
--allow-external-vrt-sources (external_sources=True) if you trust it.
    """
    path = Path(path)
    folder = path.resolve().parent
    for text, relative in _sources(path):
        if not text:
            continue
        if allow_outside:
            source = (folder / text) if relative else Path(text)
        else:
            if text.startswith("/vsi") or ":" in text.split("/")[0]:
                raise CnnkitError(f"{path} reads {text!r} through a GDAL connection string or virtual file system; "
                                  f"a VRT may read only files in its own folder ({folder}). Pass "
                                  "--allow-external-vrt-sources (external_sources=True) if you trust it.")
            source = ((folder / text) if relative else Path(text)).resolve()
            if not source.is_relative_to(folder):
                raise CnnkitError(f"{path} reads {text}, outside its own folder {folder}. Pass "
                                  "--allow-external-vrt-sources (external_sources=True) if you trust it.")
        if source.suffix.lower() == ".vrt" and source.is_file():
            if _depth >= _NESTING:
                raise CnnkitError(f"{path}: VRTs nested more than {_NESTING} deep.")
            check_vrt_sources(source, allow_outside, _depth + 1)


def vrt_source_files(path: str | os.PathLike, _depth: int = 0) -> list[Path]:
    """The files a VRT reads (those of nested VRTs included), resolved; GDAL connection strings and ``/vsi`` paths are
    left out (:func:`check_vrt_sources` refuses them unless allowed)."""
    path = Path(path)
    folder = path.resolve().parent
    found = []
    for text, relative in _sources(path):
        if not text or text.startswith("/vsi") or ":" in text.split("/")[0]:
            continue
        source = ((folder / text) if relative else Path(text)).resolve()
        found.append(source)
        if source.suffix.lower() == ".vrt" and source.is_file() and _depth < _NESTING:
            found += vrt_source_files(source, _depth + 1)
    return list(dict.fromkeys(found))
