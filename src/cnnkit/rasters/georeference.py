"""Where a raster lies on the Earth: its coordinate reference system and its affine pixel-to-map transform."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Georeference"]


@dataclass(frozen=True)
class Georeference:
    """A raster's CRS and transform, as GDAL states them (never as raw TIFF tags).

    Attributes:
        crs: A :class:`rasterio.crs.CRS`, or ``None`` when the file declares none.
        transform: The :class:`affine.Affine` from pixel (column, row) to map coordinates, or ``None`` when the file
            has no georeferencing (GDAL then reports the identity).

    Examples:
        >>> from affine import Affine
        >>> Georeference(None, Affine(10, 0, 500000, 0, -10, 4000000)).profile()
        {'transform': Affine(10.0, 0.0, 500000.0,
               0.0, -10.0, 4000000.0)}
        >>> Georeference(None, None).profile()
        {}
    """

    crs: Any = None
    transform: Any = None

    @classmethod
    def of(cls, dataset) -> Georeference:
        """The georeference of an open rasterio dataset (``None`` parts where it declares none)."""
        transform = dataset.transform
        if transform is not None and transform.is_identity and dataset.crs is None and not dataset.gcps[0]:
            transform = None
        return cls(dataset.crs, transform)

    @property
    def is_set(self) -> bool:
        """Whether the raster lies anywhere (a CRS or a transform)."""
        return self.crs is not None or self.transform is not None

    def profile(self) -> dict[str, Any]:
        """The ``crs`` and ``transform`` entries of a rasterio profile (only those that are set)."""
        profile: dict[str, Any] = {}
        if self.crs is not None:
            profile["crs"] = self.crs
        if self.transform is not None:
            profile["transform"] = self.transform
        return profile
