"""Sharing one prediction among processes: which inputs and which tiles of a scene each rank takes.

Every function here is deterministic and needs no communication: each rank computes the same plan from the
same inputs, so a rank knows, without asking, what it runs and who runs the rest.

* Images run whole are read in groups (:func:`image_groups`, the groups one process reads), and whole groups are
  shared among ranks by their pixel count (:func:`balance`). A group runs exactly the padded batches it runs in one
  process, so its results are the same numbers, not just equal up to rounding.
* A scene run tile by tile is cut exactly as :meth:`~cnnkit.predict.Predictor.predict_scene` cuts it
  (:func:`scene_tiles`); tile ``i`` of that plan is run by rank ``i mod world_size`` (:func:`tile_owner`), so the
  ranks' tiles interleave and rank 0, which writes the files, receives them nearly in the order it writes them.
  :func:`predict_tiles` runs one rank's tiles and yields each result (:class:`TileResult`): the same windows,
  the same network calls and the same float32 numbers as the one-process pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cnnkit._checks import check_int
from cnnkit.errors import ShapeError
from cnnkit.predict.memory import return_large_buffers
from cnnkit.predict.predictor import Predictor, _tile_sides
from cnnkit.predict.scene import Scene
from cnnkit.predict.tiling import Tile, _output, plan_tiles
from cnnkit.rasters import prefetch

__all__ = ["TileResult", "balance", "image_groups", "predict_tiles", "scene_tiles", "tile_owner"]

READ_GROUP_BATCHES = 4
"""Images are read ``READ_GROUP_BATCHES × batch_size`` at a time by :func:`cnnkit.app.predict.predict_files` (its
``group``); :func:`image_groups` cuts the same groups."""


def _check_world(world_size: int) -> int:
    return check_int(world_size, "world_size", minimum=1)


def image_groups(count: int, batch_size: int) -> list[range]:
    """The groups of consecutive images that one process reads and batches together (``4 × batch_size`` each).

    Examples:
        >>> image_groups(21, 2)
        [range(0, 8), range(8, 16), range(16, 21)]
        >>> image_groups(0, 8)
        []
    """
    check_int(count, "count", minimum=0)
    size = READ_GROUP_BATCHES * check_int(batch_size, "batch_size", minimum=1)
    return [range(first, min(first + size, count)) for first in range(0, count, size)]


def balance(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Indices of ``costs`` shared among ``world_size`` ranks, each rank's total as even as the greedy rule makes it.

    The costliest item goes first, to the rank with the least so far (the lowest rank on a tie); each rank's
    indices are returned in increasing order. Deterministic: every rank computes the same split.

    Args:
        costs: One non-negative cost per item (e.g. the pixels of a group of images).
        world_size: Number of ranks (>= 1).

    Returns:
        ``world_size`` lists of indices; together every index once.

    Examples:
        >>> balance([5, 1, 4, 2, 3], 2)  # 5 → rank 0, 4 → 1, 3 → 1, 2 → 0, 1 → 0 (a tie at 7: the lower rank)
        [[0, 1, 3], [2, 4]]
        >>> balance([1.0], 3)
        [[0], [], []]
    """
    world_size = _check_world(world_size)
    costs = [float(c) for c in costs]
    if any(not math.isfinite(c) or c < 0 for c in costs):
        raise ShapeError(f"costs must be finite and >= 0. Received costs={costs}.")
    loads = [0.0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += costs[index]
        shares[rank].append(index)
    return [sorted(share) for share in shares]


def tile_owner(index: int, world_size: int) -> int:
    """The rank that runs tile ``index`` of a scene's plan: tiles are dealt round the ranks in plan order.

    Examples:
        >>> [tile_owner(i, 3) for i in range(7)]
        [0, 1, 2, 0, 1, 2, 0]
    """
    return check_int(index, "index", minimum=0) % _check_world(world_size)


def scene_tiles(predictor: Predictor, scene: Scene, tile: int) -> list[Tile]:
    """The tiles :meth:`~cnnkit.predict.Predictor.predict_scene` cuts ``scene`` into for ``tile``, in its order."""
    check_int(tile, "tile")
    geometry = predictor.geometry()
    multiple = math.lcm(predictor.preprocessing.multiple_of, *geometry.multiple)
    size = (scene.height, scene.width)
    canvas = tuple(math.ceil(v / multiple) * multiple for v in size)
    return plan_tiles(canvas, geometry, _tile_sides(tile, multiple, scene.block_shape, size))


@dataclass
class TileResult:
    """One tile's part of a scene's outputs, as a rank sends it to the rank that writes them.

    Attributes:
        index: The tile's place in :func:`scene_tiles`.
        rows, cols: The scene pixels it covers (its interior, clipped to the scene), or ``None`` for a tile wholly
            in the padding beyond the scene (nothing to write).
        raw: ``(C, h, w)`` the scene's pixels there as read (for the overlay's preview), or ``None``.
        labels: ``(h, w)`` int16 class per pixel (``ignore_value`` where there is no data).
        probabilities: ``(h, w, K)`` float32 softmax, or ``None`` when not asked for.
        confidence: ``(h, w)`` float32 winning class's probability, or ``None`` when not asked for.
        class_pixels: ``(K,)`` int64 pixels predicted per class.
        pixels: Pixels of the window (what :meth:`~cnnkit.predict.Predictor.predict_scene` reports per tile).
    """

    index: int
    rows: slice | None = None
    cols: slice | None = None
    raw: np.ndarray | None = None
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    confidence: np.ndarray | None = None
    class_pixels: np.ndarray | None = None
    pixels: int = 0


def predict_tiles(predictor: Predictor, scene: Scene, *, tile: int, owned: Callable[[int], bool],
                  probabilities: bool = False, confidence: bool = False,
                  queue_depth: int = 2) -> Iterator[TileResult]:
    """Run the tiles of ``scene`` that ``owned`` accepts (by index in :func:`scene_tiles`), in plan order.

    Each tile is read, standardised, padded and run exactly as :meth:`~cnnkit.predict.Predictor.predict_scene`
    does it (the same window, the same network input, the same float32 scores), so the results are the numbers the
    one-process pass writes. Windows are read by a background thread at most ``queue_depth`` tiles ahead; tiles not
    owned are never read.

    Args:
        predictor: The network and its preprocessing.
        scene: From :func:`~cnnkit.predict.scene.open_scene`.
        tile: As for :meth:`~cnnkit.predict.Predictor.predict_scene`.
        owned: Whether this rank runs tile ``index`` (e.g. ``lambda i: tile_owner(i, world) == rank``).
        probabilities, confidence: Whether to return them.
        queue_depth: Windows read ahead at most.

    Yields:
        One :class:`TileResult` per owned tile.
    """
    check_int(queue_depth, "queue_depth")
    return_large_buffers()
    tiles = scene_tiles(predictor, scene, tile)
    height, width = scene.height, scene.width
    mine = [(index, t) for index, t in enumerate(tiles) if owned(index)]

    def load(item: tuple[int, Tile]) -> np.ndarray:
        (r0, r1), (c0, c1) = item[1].read
        return scene.read(slice(r0, min(r1, height)), slice(c0, min(c1, width)))

    loaded = prefetch(mine, load, depth=queue_depth)
    try:
        for (index, t), raw in loaded:
            x, valid = predictor.preprocessing.standardize(torch.from_numpy(raw))
            rows, cols = t.read_slices
            full = x.new_zeros(len(x), rows.stop - rows.start, cols.stop - cols.start)
            full[:, :x.shape[1], :x.shape[2]] = x  # the canvas's padding: missing pixels, as in training
            with torch.no_grad():
                out = _output(predictor.model(full[None].to(predictor.device)))
            piece = out[(slice(None), slice(None), *t.crop_slices)]
            (w0, w1), (v0, v1) = t.write
            w1, v1 = min(w1, height), min(v1, width)
            if w0 >= w1 or v0 >= v1:
                yield TileResult(index)
                continue
            (r0, _), (c0, _) = t.read
            result = predictor._finish(piece[0].cpu(), valid[w0 - r0:w1 - r0, v0 - c0:v1 - c0])
            yield TileResult(
                index, slice(w0, w1), slice(v0, v1), np.ascontiguousarray(raw[:, w0 - r0:w1 - r0, v0 - c0:v1 - c0]),
                result.labels.numpy().astype(np.int16),
                np.ascontiguousarray(result.probabilities.permute(1, 2, 0).numpy()) if probabilities else None,
                result.confidence.numpy() if confidence else None,
                result.class_pixels(predictor.num_classes).numpy(), int(result.valid.numel()))
            del out, piece, result, full, x
    finally:
        loaded.close()
