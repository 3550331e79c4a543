"""A trained segmentation network with its preprocessing: images in, label maps and probabilities out.

:class:`Predictor` applies exactly what training applied to the data (:class:`Preprocessing`: band selection,
standardisation with the training statistics, the validity band for missing pixels, sizes rounded up to the
network's multiple), then runs the network in eval mode:

* :meth:`Predictor.predict_image` — one image, whole;
* :meth:`Predictor.predict_images` — many images of mixed sizes, grouped by size and run as padded batches
  through :func:`cnnkit.masked`, each result equal to that image run alone;
* :meth:`Predictor.predict_scene` — a scene larger than memory, read, run and written tile by tile with
  :func:`~cnnkit.predict.tiled_forward`, equal to the whole-image result.

Pixels without data (NaN, ±inf or the nodata value in any band) get ``ignore_value`` in the label map and
zero probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from cnnkit._checks import check_int
from cnnkit._tensors import argmax
from cnnkit.data.standardize import missing_pixels
from cnnkit.errors import ShapeError
from cnnkit.masking import BucketBatchSampler, masked, pad_batch
from cnnkit.predict.memory import return_large_buffers
from cnnkit.predict.scene import Scene
from cnnkit.predict.tiling import Tile, TileGeometry, plan_tiles, tile_geometry, tiled_forward
from cnnkit.rasters import BackgroundWriter, prefetch

__all__ = ["Prediction", "Predictor", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """What training did to every image, as numbers (see :class:`cnnkit.data.Standardized`).

    Attributes:
        mean, std: Per-band statistics of the training split (after ``bands`` selection).
        nodata: A band value meaning "no data" (besides NaN and ±inf).
        bands: Band indices kept, in order (``None``: all).
        multiple_of: Sizes are padded at the bottom and right to a multiple of this (as missing pixels).
        validity_band: Whether a validity band (1 = data) is appended as the last channel.

    Examples:
        >>> prep = Preprocessing(mean=(3.0,), std=(1.0,), nodata=0.0, multiple_of=2)
        >>> x, valid = prep(torch.tensor([[[0.0, 2.0, 4.0]]]))
        >>> x
        tensor([[[ 0., -1.,  1.,  0.],
                 [ 0.,  0.,  0.,  0.]],
        <BLANKLINE>
                [[ 0.,  1.,  1.,  0.],
                 [ 0.,  0.,  0.,  0.]]])
        >>> valid
        tensor([[False,  True,  True]])
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    nodata: float | None = None
    bands: tuple[int, ...] | None = None
    multiple_of: int = 1
    validity_band: bool = True

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ShapeError(f"std must be positive and as long as mean. Received mean={self.mean}, std={self.std}.")
        check_int(self.multiple_of, "multiple_of")

    @property
    def in_channels(self) -> int:
        """Channels the network sees: the kept bands, plus the validity band."""
        return len(self.mean) + int(self.validity_band)

    def select(self, image: Tensor) -> Tensor:
        """The kept bands of a raw ``(C, H, W)`` image, as float32."""
        image = torch.as_tensor(image)
        if image.ndim != 3:
            raise ShapeError(f"image must be (C, H, W). Received shape {tuple(image.shape)}.")
        if self.bands is not None:
            if max(self.bands) >= image.shape[0]:
                raise ShapeError(f"The network was trained on bands {list(self.bands)} (counted from 0); the image "
                                 f"has {image.shape[0]}.")
            image = image[list(self.bands)]
        if image.shape[0] != len(self.mean):
            raise ShapeError(f"The network was trained on {len(self.mean)} bands. Received an image with "
                             f"{image.shape[0]} (shape {tuple(image.shape)}).")
        return image.float()

    def standardize(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(cat([bands, validity]) (C+1, H, W), valid (H, W))`` of a raw image, without padding."""
        image = self.select(image)
        missing = missing_pixels(image, self.nodata)
        mean = torch.tensor(self.mean, dtype=torch.float64).float()[:, None, None]
        std = torch.tensor(self.std, dtype=torch.float64).float()[:, None, None]
        bands = ((image - mean) / std).masked_fill(missing, 0.0)
        if self.validity_band:
            bands = torch.cat([bands, (~missing).float()[None]])
        return bands, ~missing

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """The network's input (padded to ``multiple_of``) and the ``(H, W)`` validity of the raw pixels."""
        x, valid = self.standardize(image)
        height, width = valid.shape
        canvas = [math.ceil(v / self.multiple_of) * self.multiple_of for v in (height, width)]
        if canvas != [height, width]:
            padded = x.new_zeros(len(x), *canvas)
            padded[:, :height, :width] = x
            x = padded
        return x, valid


@dataclass
class Prediction:
    """One image's result.

    Attributes:
        labels: ``(H, W)`` int64 class per pixel; ``ignore_value`` where the image has no data.
        probabilities: ``(K, H, W)`` float32 softmax over the classes; 0 where the image has no data.
        valid: ``(H, W)`` bool, where the image has data.
    """

    labels: Tensor
    probabilities: Tensor
    valid: Tensor
    ignore_value: int = 255
    name: str = ""

    @property
    def confidence(self) -> Tensor:
        """``(H, W)`` the winning class's probability (0 where no data)."""
        return self.probabilities.max(dim=0).values

    def class_pixels(self, num_classes: int) -> Tensor:
        """Pixels predicted per class (no-data pixels not counted)."""
        return torch.bincount(self.labels[self.valid].flatten(), minlength=num_classes)


@dataclass
class Predictor:
    """A segmentation network and its preprocessing.

    Args:
        model: The network: ``(N, in_channels, H, W)`` → ``(N, K, H, W)`` logits. Put in eval mode.
        preprocessing: What training did to the images.
        class_names: One name per class (``K``).
        palette: RGB colour per class (default: cnnkit's palette).
        ignore_value: Label written where an image has no data (255 fits a ``uint8`` label map).
        device: Where the network runs.

    Examples:
        >>> from cnnkit.models import TinySegNet
        >>> prep = Preprocessing(mean=(0.0, 0.0), std=(1.0, 1.0), multiple_of=4)
        >>> predictor = Predictor(TinySegNet(3, 4), prep, ("a", "b", "c", "d"))
        >>> p = predictor.predict_image(torch.randn(2, 30, 21))
        >>> p.labels.shape, p.probabilities.shape
        (torch.Size([30, 21]), torch.Size([4, 30, 21]))
    """

    model: nn.Module
    preprocessing: Preprocessing
    class_names: Sequence[str]
    palette: Sequence[Sequence[int]] | None = None
    ignore_value: int = 255
    device: str | torch.device = "cpu"
    _geometry: TileGeometry | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.model = self.model.eval().to(self.device)
        self.class_names = tuple(self.class_names)
        if isinstance(self.ignore_value, bool) or not -(2**15) <= self.ignore_value < 2**15:
            raise ShapeError(f"ignore_value must fit an int16 label map. Received ignore_value={self.ignore_value}.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _finish(self, logits: Tensor, valid: Tensor, name: str = "") -> Prediction:
        height, width = valid.shape
        logits = logits[:, :height, :width].float()
        if logits.shape[0] != self.num_classes:
            raise ShapeError(f"The network returned {logits.shape[0]} classes; the run names {self.num_classes}.")
        probabilities = torch.softmax(logits, dim=0).masked_fill(~valid, 0.0)
        labels = argmax(logits, 0).masked_fill(~valid, self.ignore_value)
        return Prediction(labels, probabilities, valid, self.ignore_value, name)

    def predict_image(self, image: Tensor | np.ndarray, name: str = "") -> Prediction:
        """Run one raw ``(C, H, W)`` image whole."""
        x, valid = self.preprocessing(torch.as_tensor(image))
        with torch.no_grad():
            logits = self.model(x[None].to(self.device))[0].cpu()
        return self._finish(logits, valid, name)

    def predict_images(self, images: Sequence, batch_size: int = 8, names: Sequence[str] | None = None,
                       on_image: Callable[[Prediction], None] | None = None) -> list[Prediction]:
        """Run raw images of any sizes as padded batches of similar sizes through :func:`cnnkit.masked`.

        Each result equals :meth:`predict_image` of that image alone. ``images`` may be tensors or a
        function-free sequence of arrays; ``on_image`` is called as each result is ready (a progress bar).
        """
        check_int(batch_size, "batch_size")
        names = list(names) if names is not None else [""] * len(images)
        prepared = [self.preprocessing(torch.as_tensor(image)) for image in images]
        sizes = [tuple(x.shape[1:]) for x, _ in prepared]
        results: list[Prediction | None] = [None] * len(prepared)
        runner = masked(self.model)
        with torch.no_grad():
            for batch in BucketBatchSampler(sizes, batch_size, shuffle=False):
                padded = pad_batch([prepared[i][0] for i in batch]).to(self.device)
                out = runner(padded)
                pieces = out.unpad() if hasattr(out, "unpad") else list(out)  # a tensor when nothing was padded
                for i, logits in zip(batch, pieces):
                    results[i] = self._finish(logits.cpu(), prepared[i][1], names[i])
                    if on_image is not None:
                        on_image(results[i])
        return results  # type: ignore[return-value]

    def geometry(self) -> TileGeometry:
        """The network's tile geometry (found once, then kept)."""
        if self._geometry is None:
            self._geometry = tile_geometry(self.model, self.preprocessing.in_channels)
        return self._geometry

    def predict_scene(self, scene: Scene, *, tile: int = 1024, labels_out=None, probabilities_out=None,
                      confidence_out=None, on_tile: Callable[[int], None] | None = None,
                      on_read: Callable[[slice, slice, np.ndarray], None] | None = None,
                      queue_depth: int = 2) -> tuple[np.ndarray, Tensor]:
        """Predict a scene tile by tile; the result equals :meth:`predict_image` of the whole scene.

        Windows (a tile plus its halo) are read by a background thread up to ``queue_depth`` tiles ahead, and
        finished tiles are written by another, so file work overlaps the network's; memory holds at most
        ``queue_depth`` windows waiting on each side. Each tile's labels go into the returned ``(H, W)`` label array
        (``labels_out`` if given), its probabilities into ``probabilities_out`` (``(H, W, K)``) and its confidence
        (the largest probability) into ``confidence_out`` (``(H, W)``) when given — arrays, or window writers such as
        :class:`cnnkit.rasters.CogWriter`. Labels always come from the network's float32 scores. Where the scene's
        file is tiled, tiles are cut along its blocks (``tile`` rounded down to a multiple of the block and the
        network's stride) so that each block is decoded once. Memory stays flat from tile to tile: buffers of 1 MB
        and more are handed back to the system when freed (:func:`~cnnkit.predict.memory.return_large_buffers`).

        Args:
            scene: From :func:`~cnnkit.predict.scene.open_scene`.
            tile: Interior side of a tile in pixels (rounded up to the network's multiple).
            labels_out: An ``(H, W)`` integer array or writer to fill (default: a new ``int16`` array).
            probabilities_out: An ``(H, W, K)`` array or writer to fill, or ``None``.
            confidence_out: An ``(H, W)`` array or writer to fill, or ``None``.
            on_tile: Called with the number of scene pixels each finished tile covered.
            on_read: Called in the reading thread with the rows, columns and raw ``(C, h, w)`` pixels of each tile's
                interior (the halo left out), e.g. to draw a preview without reading the scene twice.
            queue_depth: Windows read ahead, and finished tiles waiting to be written, at most.

        Returns:
            ``(labels, class_pixels)``: the label array and the count of pixels predicted per class.
        """
        check_int(tile, "tile")
        check_int(queue_depth, "queue_depth")
        return_large_buffers()  # freed windows and activations go back to the system, not to fragmented heaps
        geometry = self.geometry()
        multiple = math.lcm(self.preprocessing.multiple_of, *geometry.multiple)
        height, width = scene.height, scene.width
        canvas = tuple(math.ceil(v / multiple) * multiple for v in (height, width))
        sides = _tile_sides(tile, multiple, scene.block_shape, (height, width))
        labels = labels_out if labels_out is not None else np.empty((height, width), np.int16)
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        prep = self.preprocessing
        last: dict = {}  # the validity of the window read last, for the write that follows it

        def load(t: Tile) -> np.ndarray:
            (r0, r1), (c0, c1) = t.read
            raw = scene.read(slice(r0, min(r1, height)), slice(c0, min(c1, width)))
            if on_read is not None:
                (w0, w1), (v0, v1) = ((a, min(b, size)) for (a, b), size in zip(t.write, (height, width)))
                if w1 > w0 and v1 > v0:
                    on_read(slice(w0, w1), slice(v0, v1), raw[:, w0 - r0:w1 - r0, v0 - c0:v1 - c0])
            return raw

        tiles = plan_tiles(canvas, geometry, sides)
        loaded = prefetch(tiles, load, depth=queue_depth)

        def read(window: tuple[slice, slice]) -> Tensor:
            t, raw = next(loaded)
            if t.read_slices != tuple(window):
                raise RuntimeError(f"tiles read out of order: {t.read_slices} for {window}")
            rows, cols = window
            x, last["valid"] = prep.standardize(torch.from_numpy(raw))
            last["origin"] = (rows.start, cols.start)
            full = x.new_zeros(len(x), rows.stop - rows.start, cols.stop - cols.start)
            full[:, :x.shape[1], :x.shape[2]] = x  # the canvas's padding: missing pixels, as in training
            return full[None].to(self.device)

        def store(rows: slice, cols: slice, tile_labels, tile_probabilities, tile_confidence) -> None:
            labels[rows, cols] = tile_labels
            if tile_probabilities is not None:
                probabilities_out[rows, cols, :] = tile_probabilities
            if tile_confidence is not None:
                confidence_out[rows, cols] = tile_confidence

        def write(window: tuple[slice, slice], out: Tensor) -> None:
            rows, cols = window
            rows, cols = slice(rows.start, min(rows.stop, height)), slice(cols.start, min(cols.stop, width))
            if rows.start >= rows.stop or cols.start >= cols.stop:
                return
            top, left = last["origin"]
            valid = last["valid"][rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
            result = self._finish(out[0].cpu(), valid)
            writer.submit(store, rows, cols, result.labels.numpy().astype(labels.dtype, copy=False),
                          result.probabilities.permute(1, 2, 0).numpy() if probabilities_out is not None else None,
                          result.confidence.numpy() if confidence_out is not None else None)
            counts.add_(result.class_pixels(self.num_classes))
            del result, out
            if on_tile is not None:
                on_tile(int(valid.numel()))

        try:
            with BackgroundWriter(queue_depth) as writer:
                tiled_forward(self.model, read, geometry, tile=sides, size=canvas, write=write)
        finally:
            loaded.close()
        return labels, counts


def _tile_sides(tile: int, multiple: int, block: tuple[int, int] | None, size: tuple[int, int]) -> tuple[int, int]:
    """The tile's interior side per axis: a multiple of the network's stride and, where the file is cut in blocks no
    larger than the tile (and smaller than the scene), of the block too, so tiles start on block boundaries.

    Examples:
        >>> _tile_sides(1000, 4, (512, 512), (10980, 10980)), _tile_sides(500, 4, (512, 512), (10980, 10980))
        ((512, 512), (500, 500))
        >>> _tile_sides(512, 4, (1, 10980), (10980, 10980))  # strips: rows already aligned, columns not cut in blocks
        (512, 512)
    """
    sides = []
    for axis, length in enumerate(size):
        side = math.ceil(tile / multiple) * multiple
        if block is not None and block[axis] < length:
            step = math.lcm(block[axis], multiple)
            if step <= side:
                side = side // step * step
        sides.append(side)
    return sides[0], sides[1]
