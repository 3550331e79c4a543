"""A built-in, seeded synthetic "land cover" data set: variable-size multi-band images with clouds.

Each image mimics a small satellite scene:

* **size**: height and width drawn independently and log-uniformly from ``[min_size, max_size]`` (multiples
  of 4, so that :class:`~cnnkit.models.TinySegNet`'s two stride-2 stages divide them), e.g. 32–96 px: sizes
  vary three-fold in both dimensions, which is what :class:`~cnnkit.masking.BucketBatchSampler` is for;
* **labels**: smooth random regions of the four common classes (``water``, ``forest``, ``cropland``,
  ``urban``) — the arg-max of four low-frequency noise fields — and small blobs (radius 1.5–2.5 px) of the
  rare class ``greenhouse`` in about 60 % of the images, under 3 % of the labelled pixels overall;
* **bands**: ``bands`` (default 4) spectral bands = the class's mean spectrum (:data:`SPECTRA`) + a smooth
  per-image illumination offset + Gaussian pixel noise; the classes overlap pixel by pixel, so
  neighbourhood context helps;
* **clouds**: in about 60 % of the images, thresholded low-frequency noise marks 5–30 % of the pixels
  as invalid. Under a cloud the bands are 0 and the label is −100 (unlabelled);
* **unlabelled pixels**: besides clouds, about a third of the images have a rectangle without labels
  (the image is valid there): the network sees it, the loss and the metrics ignore it.

How clouds reach the model: the image an item returns has ``bands + 1`` channels, the spectral bands
(zeroed under clouds) followed by a **validity band** (1 = clear, 0 = cloud). A plain CNN can thus tell
"no data" from "dark pixel"; the padding added by :func:`~cnnkit.masking.collate_padded` is handled
separately and exactly by :func:`cnnkit.masked` (it is not data at all).

Everything is generated at construction from ``seed`` (per image from ``(seed, index)``), so the data
set is identical on every machine and run.

:class:`SyntheticTextures` is a second data set, where colour tells nothing: every class has the same mean
colour and the same distribution of pixel values; textures (speckle, stripes of two orientations and
frequencies) and shapes (discs and squares filled with one checkerboard) separate the classes — what a
network with a wide receptive field learns and a per-pixel classifier cannot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from cnnkit._tensors import argmax
from cnnkit.errors import ShapeError
from cnnkit.masking import IGNORE_INDEX

__all__ = ["CLASS_NAMES", "PATTERNS", "RARE_CLASS", "SPECTRA", "TEXTURE_NAMES", "SyntheticLandCover",
           "SyntheticTextures", "texture_pattern"]

CLASS_NAMES = ("water", "forest", "cropland", "urban", "greenhouse")
"""Class names by label index."""

RARE_CLASS = 4
"""Label of the rare class (``greenhouse``)."""

SPECTRA = torch.tensor([
    [0.20, 0.15, 0.10, 0.05],  # water: dark, darkest in the near infrared
    [0.10, 0.30, 0.15, 0.70],  # forest: bright near infrared
    [0.30, 0.40, 0.30, 0.45],  # cropland
    [0.45, 0.40, 0.45, 0.35],  # urban: bright and flat
    [0.60, 0.60, 0.60, 0.50],  # greenhouse: brightest
])
"""Mean reflectance of each class in the four bands (blue, green, red, near infrared)."""


def _smooth_noise(channels: int, height: int, width: int, cell: int, g: torch.Generator) -> Tensor:
    """(channels, height, width) low-frequency noise: a coarse random grid upsampled bicubically."""
    coarse = torch.randn(1, channels, math.ceil(height / cell) + 1, math.ceil(width / cell) + 1, generator=g)
    fine = F.interpolate(coarse, scale_factor=cell, mode="bicubic", align_corners=False)
    return fine[0, :, :height, :width]


class _InMemoryScenes(Dataset):
    """What both seeded data sets share: ``images`` and ``labels`` built in ``__init__``, items as pairs."""

    images: list[Tensor]
    labels: list[Tensor]
    num_classes: int

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def class_counts(self) -> Tensor:
        """(num_classes,) number of labelled pixels of each class over the whole data set."""
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        for label in self.labels:
            counts += torch.bincount(label[label >= 0], minlength=self.num_classes)
        return counts


class SyntheticLandCover(_InMemoryScenes):
    """Seeded synthetic land-cover scenes of varying size with clouds, unlabelled pixels and a rare class.

    See the module documentation for how scenes are made.

    Args:
        num_images: Number of scenes (>= 1).
        seed: Seed of everything random; the same seed gives the same data set.
        min_size: Smallest height/width (>= 8, rounded down to a multiple of 4).
        max_size: Largest height/width (>= min_size, rounded down to a multiple of 4).
        bands: Spectral bands (1 to 4; the first ``bands`` columns of :data:`SPECTRA`).
        noise: Standard deviation of the per-pixel band noise.

    Attributes:
        sizes: List of (H, W) per image, for :class:`~cnnkit.masking.BucketBatchSampler`.
        clouds: List of (H, W) bool tensors, True where the pixel is cloudy (invalid).
        class_names: :data:`CLASS_NAMES`.

    Shape:
        - item: ``(image (bands + 1, H, W) float32, label (H, W) int64)``; the last image channel is the
          validity band, labels are in ``[0, 5)`` or −100.

    Examples:
        >>> data = SyntheticLandCover(8, seed=0)
        >>> image, label = data[0]
        >>> image.shape[0], image.dtype, label.dtype, len(data)
        (5, torch.float32, torch.int64, 8)
        >>> bool((label[data.clouds[0]] == -100).all())     # no label under a cloud
        True
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, num_images: int, seed: int = 0, min_size: int = 32, max_size: int = 96, bands: int = 4,
                 noise: float = 0.12) -> None:
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise ShapeError(f"num_images must be an integer >= 1. Received num_images={num_images!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ShapeError(f"seed must be an integer. Received seed={seed!r}.")
        if not isinstance(min_size, int) or not isinstance(max_size, int) or min_size < 8 or max_size < min_size:
            raise ShapeError("min_size and max_size must be integers with 8 <= min_size <= max_size. "
                             f"Received min_size={min_size!r}, max_size={max_size!r}.")
        if not isinstance(bands, int) or not 1 <= bands <= SPECTRA.shape[1]:
            raise ShapeError(f"bands must be an integer in [1, {SPECTRA.shape[1]}]. Received bands={bands!r}.")
        if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise < math.inf:
            raise ShapeError(f"noise must be a finite number >= 0. Received noise={noise!r}.")
        self.seed, self.bands, self.noise = seed, bands, float(noise)
        self.min_size, self.max_size = min_size // 4 * 4, max_size // 4 * 4
        self.images: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.clouds: list[Tensor] = []
        for index in range(num_images):
            image, label, cloud = self._scene(index)
            self.images.append(image)
            self.labels.append(label)
            self.clouds.append(cloud)
        self.sizes = [tuple(label.shape) for label in self.labels]

    def _scene(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        lo, hi = math.log(self.min_size), math.log(self.max_size + 4)
        h, w = (min(self.max_size, int(math.exp(lo + (hi - lo) * float(u))) // 4 * 4)
                for u in torch.rand(2, generator=g))
        # land cover: arg-max of four smooth fields, then small rare-class blobs
        label = argmax(_smooth_noise(RARE_CLASS, h, w, 16, g), 0)
        if float(torch.rand((), generator=g)) < 0.6:
            ys, xs = torch.arange(h).view(-1, 1), torch.arange(w).view(1, -1)
            for _ in range(int(torch.randint(1, 4, (), generator=g))):
                cy, cx = int(torch.randint(h, (), generator=g)), int(torch.randint(w, (), generator=g))
                radius = 1.5 + float(torch.rand((), generator=g))
                label[(ys - cy) ** 2 + (xs - cx) ** 2 <= radius ** 2] = RARE_CLASS
        # bands: class spectra + smooth illumination + pixel noise
        spectra = SPECTRA[:, : self.bands]
        bands = spectra[label].permute(2, 0, 1)
        bands = bands + 0.05 * _smooth_noise(1, h, w, 32, g) + self.noise * torch.randn(self.bands, h, w, generator=g)
        # clouds: invalid pixels, zero bands, no labels
        cloud = torch.zeros(h, w, dtype=torch.bool)
        if float(torch.rand((), generator=g)) < 0.6:
            field = _smooth_noise(1, h, w, 12, g)[0]
            share = 0.05 + 0.25 * float(torch.rand((), generator=g))
            cloud = field > torch.quantile(field.flatten(), 1.0 - share)
        label = label.masked_fill(cloud, IGNORE_INDEX)
        bands = bands.masked_fill(cloud, 0.0)
        # an unlabelled rectangle (valid image, no labels)
        if float(torch.rand((), generator=g)) < 0.35 and min(h, w) // 2 > 4:  # too small a scene keeps its labels
            rh, rw = int(torch.randint(4, h // 2, (), generator=g)), int(torch.randint(4, w // 2, (), generator=g))
            y0, x0 = int(torch.randint(h - rh + 1, (), generator=g)), int(torch.randint(w - rw + 1, (), generator=g))
            label[y0 : y0 + rh, x0 : x0 + rw] = IGNORE_INDEX
        validity = (~cloud).float().unsqueeze(0)
        return torch.cat([bands, validity]).float(), label.long(), cloud


    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_images={len(self)}, seed={self.seed}, min_size={self.min_size}, "
                f"max_size={self.max_size}, bands={self.bands}, noise={self.noise})")


TEXTURE_NAMES = ("speckle", "horizontal stripes", "vertical stripes", "discs", "squares")
"""Class names of :class:`SyntheticTextures` by label index."""

PATTERNS = {"speckle": 1, "horizontal stripes": 4, "vertical stripes": 6, "checkerboard": 8}
"""The ±1 patterns of :func:`texture_pattern` and their periods in pixels (speckle: none)."""

_CLASS_PATTERNS = ("speckle", "horizontal stripes", "vertical stripes", "checkerboard", "checkerboard")


def texture_pattern(name: str, height: int, width: int, phase: tuple[int, int] = (0, 0),
                    generator: torch.Generator | None = None) -> Tensor:
    """(height, width) pattern of ±1, half +1 and half −1: one of :data:`PATTERNS`.

    With ``(y, x)`` shifted by ``phase`` and ``h`` half the pattern's period:

    - ``"speckle"``: independent ±1 per pixel (from ``generator``);
    - ``"horizontal stripes"``: ``+1`` where ``(y // h) % 2 == 0`` (constant along a row), period 4;
    - ``"vertical stripes"``: the same along x (constant down a column), period 6;
    - ``"checkerboard"``: ``+1`` where ``(y // h + x // h) % 2 == 0``, 4-px cells.

    Examples:
        >>> texture_pattern("horizontal stripes", 4, 3)
        tensor([[ 1.,  1.,  1.],
                [ 1.,  1.,  1.],
                [-1., -1., -1.],
                [-1., -1., -1.]])
        >>> texture_pattern("checkerboard", 2, 9)[0]
        tensor([ 1.,  1.,  1.,  1., -1., -1., -1., -1.,  1.])
    """
    if name not in PATTERNS:
        raise ShapeError(f"Unknown pattern {name!r}. Expected one of {tuple(PATTERNS)}.")
    ys = torch.arange(height).view(-1, 1) + phase[0]
    xs = torch.arange(width).view(1, -1) + phase[1]
    half = PATTERNS[name] // 2
    if name == "speckle":
        bits = torch.randint(0, 2, (height, width), generator=generator)
    elif name == "horizontal stripes":
        bits = (ys // half % 2).expand(height, width)
    elif name == "vertical stripes":
        bits = (xs // half % 2).expand(height, width)
    else:
        bits = (ys // half + xs // half) % 2
    return 1.0 - 2.0 * bits.float()


class SyntheticTextures(_InMemoryScenes):
    """Seeded scenes whose classes differ by texture and shape only: one mean colour, one set of pixel values.

    Each scene is a map of smooth random regions (the arg-max of three low-frequency noise fields, regions of
    about ``size / 4`` px) of three **textures** — ``speckle``, ``horizontal stripes`` (period 4), ``vertical
    stripes`` (period 6) — on which non-overlapping objects of two **shapes** are drawn: ``discs`` (radius
    ``r``) and axis-aligned ``squares`` of the same area (side ``r √π``), ``r`` from ``radius``, both filled
    with the same checkerboard (4-px cells). Texture tells regions from objects; only the outline tells a disc
    from a square, and a pixel deep inside either sees the same checkerboard: a network must see the whole
    object (a receptive field of ~``2 r``) to tell them apart.

    A pixel of every class is ``mean + amplitude × t`` in each band, ``t = ±1`` from :func:`texture_pattern`
    (a random phase per scene and pattern), plus Gaussian noise: every class takes the values ``mean ±
    amplitude`` half the time each, so a pixel's colour — or any per-pixel statistic — says nothing of its
    class. Every pixel is labelled; there is no validity band.

    Args:
        num_images: Number of scenes (>= 1).
        seed: Seed of everything random; the same seed gives the same data set.
        size: Height and width of every scene (>= 16).
        bands: Number of bands (>= 1), all carrying the same pattern (a grey texture) with their own noise.
        mean: The mean colour of every band and class.
        amplitude: Half the contrast of the patterns (> 0).
        noise: Standard deviation of the per-pixel noise (>= 0).
        radius: Smallest and largest disc radius ``(low, high)``, ``2 <= low <= high``; objects are placed
            (up to ``size² / (10 high²)`` of them) where they do not overlap.

    Attributes:
        sizes: List of (H, W) per image. class_names: :data:`TEXTURE_NAMES`.

    Shape:
        - item: ``(image (bands, size, size) float32, label (size, size) int64)``, labels in ``[0, 5)``.

    Examples:
        >>> data = SyntheticTextures(4, seed=0, size=32)
        >>> image, label = data[0]
        >>> image.shape, label.dtype, data.num_classes
        (torch.Size([3, 32, 32]), torch.int64, 5)
    """

    num_classes = len(TEXTURE_NAMES)
    class_names = TEXTURE_NAMES

    def __init__(self, num_images: int, seed: int = 0, size: int = 64, bands: int = 3, mean: float = 0.5,
                 amplitude: float = 0.2, noise: float = 0.1, radius: tuple[float, float] = (6.0, 10.0)) -> None:
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise ShapeError(f"num_images must be an integer >= 1. Received num_images={num_images!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ShapeError(f"seed must be an integer. Received seed={seed!r}.")
        if not isinstance(size, int) or isinstance(size, bool) or size < 16:
            raise ShapeError(f"size must be an integer >= 16. Received size={size!r}.")
        if not isinstance(bands, int) or isinstance(bands, bool) or bands < 1:
            raise ShapeError(f"bands must be an integer >= 1. Received bands={bands!r}.")
        for name, value, rule in (("mean", mean, "finite"), ("amplitude", amplitude, "> 0"), ("noise", noise, ">= 0")):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or (rule == "> 0" and value <= 0) or (rule == ">= 0" and value < 0):
                raise ShapeError(f"{name} must be a finite number ({rule}). Received {name}={value!r}.")
        ok = isinstance(radius, (tuple, list)) and len(radius) == 2 and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in radius)
        if not ok or not 2 <= radius[0] <= radius[1] or 2 * radius[1] >= size:
            raise ShapeError("radius must be a pair (low, high) with 2 <= low <= high < size / 2. "
                             f"Received radius={radius!r} with size={size}.")
        self.seed, self.size, self.bands = seed, size, bands
        self.mean, self.amplitude, self.noise = float(mean), float(amplitude), float(noise)
        self.radius = (float(radius[0]), float(radius[1]))
        self.images: list[Tensor] = []
        self.labels: list[Tensor] = []
        for index in range(num_images):
            image, label = self._scene(index)
            self.images.append(image)
            self.labels.append(label)
        self.sizes = [(size, size)] * num_images

    def _scene(self, index: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        size = self.size
        label = argmax(_smooth_noise(3, size, size, max(4, size // 4), g), 0)
        ys, xs = torch.arange(size).view(-1, 1).float(), torch.arange(size).view(1, -1).float()
        taken = torch.zeros(size, size, dtype=torch.bool)
        low, high = self.radius
        for _ in range(max(1, int(size * size / (10 * high * high)))):
            for _attempt in range(10):
                r = low + (high - low) * float(torch.rand((), generator=g))
                cy, cx = (r + (size - 2 * r) * torch.rand(2, generator=g)).tolist()
                if float(torch.rand((), generator=g)) < 0.5:
                    shape, c = (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r, 3
                else:
                    half = r * math.sqrt(math.pi) / 2
                    shape, c = ((ys - cy).abs() <= half) & ((xs - cx).abs() <= half), 4
                near = F.max_pool2d(shape[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0  # 2-px margin
                if not bool((near & taken).any()):
                    label[shape] = c
                    taken |= shape
                    break
        texture = torch.zeros(size, size)
        for name in dict.fromkeys(_CLASS_PATTERNS):
            period = PATTERNS[name]
            phase = (int(torch.randint(period, (), generator=g)), int(torch.randint(period, (), generator=g)))
            where = torch.zeros_like(taken)
            for c, pattern in enumerate(_CLASS_PATTERNS):
                if pattern == name:
                    where |= label == c
            texture = torch.where(where, texture_pattern(name, size, size, phase, g), texture)
        image = self.mean + self.amplitude * texture + self.noise * torch.randn(self.bands, size, size, generator=g)
        return image.float(), label.long()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_images={len(self)}, seed={self.seed}, size={self.size}, "
                f"bands={self.bands}, mean={self.mean}, amplitude={self.amplitude}, noise={self.noise}, "
                f"radius={self.radius})")
