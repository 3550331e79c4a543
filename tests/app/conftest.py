"""Helpers the application tests share: a generated data set written as a user's folder of TIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cnnkit.data import SyntheticLandCover


def write_tiff_scenes(root: Path, data: SyntheticLandCover, *, name: str = "scene_{:02d}", held_from: int | None = None,
                      odd_sizes: bool = False, scale: float = 1.0, offset: float = 0.0) -> dict[str, np.ndarray]:
    """``data``'s scenes as ``cnnkit train`` reads them: ``root/images`` (4-band float32 TIFFs, ``bands · scale +
    offset``, NaN under clouds) and ``root/masks`` (uint8, 255 = not labelled), file names from ``name``.

    Scenes from index ``held_from`` on go to ``root/held/images`` and ``root/held/masks`` instead; ``odd_sizes``
    crops scene ``i`` by ``i % 3`` rows and ``i % 2`` columns. Returns the held-out scenes' labels by file stem
    (−1 where not labelled).
    """
    for split in (root, root / "held") if held_from is not None else (root,):
        (split / "images").mkdir(parents=True)
        (split / "masks").mkdir()
    truth = {}
    for i, ((image, label), cloud) in enumerate(zip(data, data.clouds)):
        held = held_from is not None and i >= held_from
        split = root / "held" if held else root
        h, w = (label.shape[0] - i % 3, label.shape[1] - i % 2) if odd_sizes else label.shape
        bands = (image[:4, :h, :w].numpy() * scale + offset).astype(np.float32)
        bands[:, cloud[:h, :w].numpy()] = np.nan
        mask = label[:h, :w].numpy().copy()
        mask[mask < 0] = 255
        stem = name.format(i)
        tifffile.imwrite(split / "images" / f"{stem}.tif", bands, photometric="minisblack", planarconfig="separate")
        tifffile.imwrite(split / "masks" / f"{stem}.tif", mask.astype(np.uint8))
        if held:
            truth[stem] = np.where(mask == 255, -1, mask).astype(np.int64)
    return truth


@pytest.fixture(scope="session")
def tiff_scenes():
    """:func:`write_tiff_scenes`, for tests and fixtures of any scope."""
    return write_tiff_scenes
