"""The label PNG of a tiled scene, written strip by strip, equals the PNG of the whole array; the overlay's labels
gathered subsampled equal the whole array's every step-th pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnkit.errors import CnnkitError
from cnnkit.predict.memory import release_free_memory, return_large_buffers
from cnnkit.predict.outputs import Fanout, PalettePngWriter, Subsampled, palette_png, side_by_side
from cnnkit.render import NODATA_COLOR, UNLABELLED_COLOR, legend


def _bands(height: int, step: int):
    return [(top, min(top + step, height)) for top in range(0, height, step)]


def test_strip_png_equals_whole_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (37, 53)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.1] = 255
    palette = [(10, 20, 30), (0, 255, 0), (0, 0, 255), (200, 100, 0), (9, 9, 9)]
    whole = palette_png(tmp_path / "whole.png", labels, 5, palette)
    small = Subsampled(labels.shape, 4, np.uint8)
    with PalettePngWriter(tmp_path / "strips.png", labels.shape, 5, palette) as png:
        sink = Fanout(png, small, None)
        for r0, r1 in _bands(37, 8):  # tiles row by row, columns in uneven widths, right to left
            for c0, c1 in reversed([(0, 11), (11, 30), (30, 53)]):
                sink[slice(r0, r1), slice(c0, c1)] = labels[r0:r1, c0:c1]
            assert not (tmp_path / "strips.png").exists()  # renamed into place when complete
    ours, reference = Image.open(tmp_path / "strips.png"), Image.open(whole)
    assert ours.mode == reference.mode == "P"
    np.testing.assert_array_equal(np.array(ours), labels)
    np.testing.assert_array_equal(np.array(ours), np.array(reference))
    assert ours.getpalette()[:15] == reference.getpalette()[:15] == [v for c in palette for v in c]
    np.testing.assert_array_equal(small.array, labels[::4, ::4])


def test_strip_png_refusals_leave_no_file(tmp_path):
    with pytest.raises(CnnkitError, match=r"300 classes.*x\.png"):
        PalettePngWriter(tmp_path / "x.png", (4, 4), 300)
    png = PalettePngWriter(tmp_path / "y.png", (6, 4), 3)
    png[0:3, 0:4] = 1
    with pytest.raises(CnnkitError, match=r"rows 2:5 straddles"):
        png[2:5, 0:4] = 1
    with pytest.raises(CnnkitError, match=r"only rows 0:3 of 6"):
        png.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), PalettePngWriter(tmp_path / "z.png", (2, 2), 3) as out:
        out[0:2, 0:2] = 0
        raise RuntimeError("the network failed")
    assert list(tmp_path.iterdir()) == []


def test_return_large_buffers_is_idempotent():
    first = return_large_buffers()
    assert isinstance(first, bool) and return_large_buffers() == first


def test_release_free_memory_hands_back_freed_heap_pages():
    """Buffers below the mmap threshold, every other one freed, leave holes in the heap that free() does not hand
    back; malloc_trim does, on glibc. Elsewhere it does nothing and says so."""
    glibc = return_large_buffers()  # the threshold fixed at 1 MB: 400 kB buffers come from the heap
    buffers = [np.ones(50_000) for _ in range(200)]
    kept = buffers[1::2]
    del buffers
    released = release_free_memory()
    assert released is glibc
    del kept


def test_overlay_draws_no_data_in_the_nodata_colour():
    """The overlay's label map paints the no-data label NODATA_COLOR (not black, the unlabelled colour), and its
    legend is the one with a "no data" row of that colour."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (12, 10)).astype(np.uint8)
    labels[2:5, 3:7] = 255
    image = rng.normal(100, 20, (3, 12, 10)).astype(np.float32)
    palette = [(10, 20, 30), (0, 255, 0), (0, 0, 255)]
    picture = side_by_side(image, labels, ["a", "b", "c"], palette, 255)
    mask = picture[:12, 10 + 8:2 * 10 + 8]  # the label map, right of the composite and the 8-px gap
    nodata = labels == 255
    assert (mask[nodata] == NODATA_COLOR).all() and NODATA_COLOR != UNLABELLED_COLOR
    np.testing.assert_array_equal(mask[~nodata], np.asarray(palette, np.uint8)[labels[~nodata]])
    key = legend(["a", "b", "c"], palette, nodata_name="no data")
    np.testing.assert_array_equal(picture[12 + 8:12 + 8 + key.shape[0], :key.shape[1]], key)
