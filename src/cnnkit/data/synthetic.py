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
colour and the same distribution of pixel values, and only the arrangement of neighbouring pixels (stripes of
two orientations and two frequencies, a checkerboard, speckle) separates the classes — what a network with a
wide receptive field learns and a per-pixel classifier cannot.
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

__all__ = ["CLASS_NAMES", "RARE_CLASS", "SPECTRA", "TEXTURE_NAMES", "SyntheticLandCover", "SyntheticTextures",
           "texture_pattern"]

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


class SyntheticLandCover(Dataset):
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

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_images={len(self)}, seed={self.seed}, min_size={self.min_size}, "
                f"max_size={self.max_size}, bands={self.bands}, noise={self.noise})")


TEXTURE_NAMES = ("speckle", "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard")
"""Class names of :class:`SyntheticTextures` by label index."""

_TEXTURE_PERIODS = (1, 4, 4, 6, 8)  # speckle: no period; stripes 2 px on / 2 off, 3 / 3; checker cells 4 px


def texture_pattern(label: int, height: int, width: int, phase: tuple[int, int] = (0, 0),
                    generator: torch.Generator | None = None) -> Tensor:
    """(height, width) pattern of ±1 of texture class ``label`` (:data:`TEXTURE_NAMES`), half +1 and half −1.

    With ``(y, x)`` shifted by ``phase`` and ``p`` the class's period:

    - 0 speckle: independent ±1 per pixel (from ``generator``);
    - 1 horizontal stripes: ``+1`` where ``(y // (p/2)) % 2 == 0`` (constant along a row), p = 4;
    - 2 vertical stripes: the same along x (constant down a column), p = 4;
    - 3 diagonal stripes: the same of ``(x + y) // (p/2)``, p = 6;
    - 4 checkerboard: ``+1`` where ``(y // (p/2) + x // (p/2)) % 2 == 0``, 4-px cells.

    Examples:
        >>> texture_pattern(1, 4, 3)
        tensor([[ 1.,  1.,  1.],
                [ 1.,  1.,  1.],
                [-1., -1., -1.],
                [-1., -1., -1.]])
        >>> texture_pattern(4, 2, 9)[0]
        tensor([ 1.,  1.,  1.,  1., -1., -1., -1., -1.,  1.])
    """
    if not isinstance(label, int) or not 0 <= label < len(TEXTURE_NAMES):
        raise ShapeError(f"label must be an integer in [0, {len(TEXTURE_NAMES)}). Received label={label!r}.")
    ys = torch.arange(height).view(-1, 1) + phase[0]
    xs = torch.arange(width).view(1, -1) + phase[1]
    half = _TEXTURE_PERIODS[label] // 2
    if label == 0:
        bits = torch.randint(0, 2, (height, width), generator=generator)
    elif label == 1:
        bits = (ys // half % 2).expand(height, width)
    elif label == 2:
        bits = (xs // half % 2).expand(height, width)
    elif label == 3:
        bits = (ys + xs) // half % 2
    else:
        bits = (ys // half + xs // half) % 2
    return 1.0 - 2.0 * bits.float()


class SyntheticTextures(Dataset):
    """Seeded scenes whose classes differ by texture only: the same mean colour, the same pixel values.

    Each scene is a map of smooth random regions (the arg-max of five low-frequency noise fields, regions of
    about ``size / 4`` px) of the five textures of :data:`TEXTURE_NAMES`. A pixel of every class is
    ``mean + amplitude × t`` in each band, ``t = ±1`` from :func:`texture_pattern` (a random phase per scene and
    class), plus Gaussian noise: every class takes the two values ``mean ± amplitude`` half the time each, so a
    pixel's colour — or any per-pixel statistic — says nothing of its class; only the arrangement of its
    neighbours (orientation, frequency) does. Every pixel is labelled; there is no validity band.

    Args:
        num_images: Number of scenes (>= 1).
        seed: Seed of everything random; the same seed gives the same data set.
        size: Height and width of every scene (>= 8).
        bands: Number of bands (>= 1), all carrying the same texture (a grey pattern) with their own noise.
        mean: The mean colour of every band and class.
        amplitude: Half the contrast of the textures (> 0).
        noise: Standard deviation of the per-pixel noise (>= 0).

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
                 amplitude: float = 0.2, noise: float = 0.1) -> None:
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise ShapeError(f"num_images must be an integer >= 1. Received num_images={num_images!r}.")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ShapeError(f"seed must be an integer. Received seed={seed!r}.")
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ShapeError(f"size must be an integer >= 8. Received size={size!r}.")
        if not isinstance(bands, int) or isinstance(bands, bool) or bands < 1:
            raise ShapeError(f"bands must be an integer >= 1. Received bands={bands!r}.")
        for name, value, positive in (("mean", mean, False), ("amplitude", amplitude, True), ("noise", noise, False)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or (value <= 0 if positive else (value < 0 and name == "noise")):
                rule = "> 0" if positive else ">= 0" if name == "noise" else "finite"
                raise ShapeError(f"{name} must be a finite number ({rule}). Received {name}={value!r}.")
        self.seed, self.size, self.bands = seed, size, bands
        self.mean, self.amplitude, self.noise = float(mean), float(amplitude), float(noise)
        self.images: list[Tensor] = []
        self.labels: list[Tensor] = []
        for index in range(num_images):
            image, label = self._scene(index)
            self.images.append(image)
            self.labels.append(label)
        self.sizes = [(size, size)] * num_images

    def _scene(self, index: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        n, size = self.num_classes, self.size
        label = argmax(_smooth_noise(n, size, size, max(4, size // 4), g), 0)
        texture = torch.zeros(size, size)
        for c in range(n):
            period = _TEXTURE_PERIODS[c]
            phase = (int(torch.randint(period, (), generator=g)), int(torch.randint(period, (), generator=g)))
            texture = torch.where(label == c, texture_pattern(c, size, size, phase, g), texture)
        image = self.mean + self.amplitude * texture + self.noise * torch.randn(self.bands, size, size, generator=g)
        return image.float(), label.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def class_counts(self) -> Tensor:
        """(num_classes,) number of pixels of each class over the whole data set."""
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        for label in self.labels:
            counts += torch.bincount(label.flatten(), minlength=self.num_classes)
        return counts

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_images={len(self)}, seed={self.seed}, size={self.size}, "
                f"bands={self.bands}, mean={self.mean}, amplitude={self.amplitude}, noise={self.noise})")
