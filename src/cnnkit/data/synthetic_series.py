"""Seeded cloudy crop-type time series whose classes only time can separate (``cnnkit demo --time-series``).

Every scene is a season of ``T`` dates (6–24, at random days) over fields of one crop each. A crop is
known by its *rhythm*: its six bands swing through the season as the phases of one cycle, so that the
bands peak one after the other — in one order for wheat and rapeseed, in the reverse order for maize and
grassland (``f`` = +1, −1, +2, −2 cycles a season: one or two growth cycles, and which band leads) — and
fallow land, the rare class, does not cycle at all (``f = 0``). Each field starts its cycle at a phase of
its own, so at any one date a field's band values have the same distribution whatever its crop (every
class is ``sin`` of a uniform angle): a single date cannot tell the crops apart, a series can. Each frame
carries a seventh band, the date's position in the season (0–1), as acquisition dates do in real series.

About 30 % of each date is under cloud (stored as NaN, the usual way), field borders and one field in ten
have no label (−100), and fallow covers a few percent of the labelled pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from cnnkit._checks import check_int
from cnnkit.masking.batch import IGNORE_INDEX

__all__ = ["CROP_CLASSES", "FREQUENCIES", "crop_series"]

CROP_CLASSES = ("wheat", "maize", "rapeseed", "grassland", "fallow")
FREQUENCIES = (1.0, -1.0, 2.0, -2.0, 0.0)
"""Cycles per season of each class (the sign: which way round the bands take turns); the last class is the rare one."""
SHARES = (0.32, 0.28, 0.22, 0.15, 0.03)
BANDS = 6


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: int) -> np.ndarray:
    """A smooth random field in [0, 1]: coarse noise, upsampled bilinearly."""
    coarse = rng.random((height // scale + 2, width // scale + 2))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    return ((1 - fy) * (1 - fx) * c[y0][:, x0] + (1 - fy) * fx * c[y0][:, x0 + 1]
            + fy * (1 - fx) * c[y0 + 1][:, x0] + fy * fx * c[y0 + 1][:, x0 + 1])


def crop_series(
    count: int,
    seed: int = 0,
    *,
    steps: tuple[int, int] = (6, 24),
    sides: tuple[int, int] = (32, 64),
    cloud_share: float = 0.3,
    noise: float = 0.25,
    frequencies: tuple[float, ...] = FREQUENCIES,
    shares: tuple[float, ...] = SHARES,
    with_days: bool = False,
) -> list[tuple[Tensor, ...]]:
    """``count`` scenes as ``(series (T, 7, H, W) float32 with NaN under clouds, labels (H, W) int64)``.

    With ``with_days=True`` each scene also has its acquisition days third, ``(T,)`` int64: the date's position in
    the season (the seventh band) × 365, rounded — what :class:`~cnnkit.models.utae.UTAE` encodes.

    Args:
        count: Number of scenes.
        seed: Seed of everything (the same seed gives the same scenes).
        steps: Smallest and largest number of dates.
        sides: Smallest and largest height and width.
        cloud_share: Mean share of each date under cloud.
        noise: Standard deviation of the per-pixel noise (the signal's amplitude is about 1).
        frequencies: Oscillations per season of each class (a negative one turns the other way round).
        shares: Share of the fields of each class (summing to 1).
        with_days: Return the days too (the scenes are the same: no random number is drawn for them).

    Examples:
        >>> series, labels = crop_series(1, seed=3)[0]
        >>> series.shape[1], series.dtype, labels.dtype
        (7, torch.float32, torch.int64)
        >>> series, labels, days = crop_series(1, seed=3, with_days=True)[0]
        >>> days.shape == (series.shape[0],) and bool((days[1:] >= days[:-1]).all())
        True
        >>> 6 <= series.shape[0] <= 24 and 32 <= labels.shape[0] <= 64
        True
    """
    check_int(count, "count")
    rng = np.random.default_rng(seed)
    # how the bands respond to the crop's cycle is a property of the sensor, the same in every split
    sensor = np.random.default_rng(BANDS)
    band_phase = sensor.uniform(0, 2 * math.pi, BANDS)
    band_amplitude = sensor.uniform(0.6, 1.2, BANDS)
    scenes = []
    for _ in range(count):
        t = int(rng.integers(steps[0], steps[1] + 1))
        height, width = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        dates = np.sort(rng.uniform(0, 1, t))
        # fields: Voronoi cells of random seeds, one crop and one phase each
        fields = max(3, height * width // 180)
        centres = rng.uniform(0, 1, (fields, 2)) * (height, width)
        yy, xx = np.mgrid[:height, :width]
        dist = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
        field = dist.argmin(-1)
        crop = rng.choice(len(frequencies), size=fields, p=shares)
        phase = rng.uniform(0, 2 * math.pi, fields)
        amplitude = rng.uniform(0.8, 1.2, fields)
        freq = np.asarray(frequencies)[crop][field]
        angle = 2 * math.pi * freq[None] * dates[:, None, None] + phase[field][None]  # (T, H, W)
        series = (band_amplitude[None, :, None, None] * amplitude[field][None, None]
                  * np.sin(angle[:, None] + band_phase[None, :, None, None]))
        series = series + rng.normal(0, noise, series.shape)
        cloud = np.stack([_smooth_noise(rng, height, width, 8) for _ in range(t)])
        cloud = cloud < np.quantile(cloud, cloud_share, axis=(1, 2), keepdims=True) * rng.uniform(0.5, 1.5, (t, 1, 1))
        series[np.broadcast_to(cloud[:, None], series.shape)] = np.nan
        date_band = np.broadcast_to(dates[:, None, None, None], (t, 1, height, width))
        frames = np.concatenate([series, date_band], axis=1).astype(np.float32)
        labels = crop[field].astype(np.int64)
        border = np.zeros_like(field, dtype=bool)
        border[1:] |= field[1:] != field[:-1]
        border[:, 1:] |= field[:, 1:] != field[:, :-1]
        unlabelled_fields = rng.random(fields) < 0.1
        labels[border | unlabelled_fields[field]] = IGNORE_INDEX
        scene = (torch.from_numpy(frames), torch.from_numpy(labels))
        scenes.append((*scene, torch.from_numpy(np.rint(dates * 365).astype(np.int64))) if with_days else scene)
    return scenes
