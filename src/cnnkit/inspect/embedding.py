"""t-SNE of learned features: do samples of one class end up near each other in feature space?

:func:`tsne_plot` embeds feature vectors in 2-D with scikit-learn's :class:`~sklearn.manifold.TSNE`
(van der Maaten & Hinton, 2008) and draws them with matplotlib, coloured by class with the same fixed
palette as :func:`cnnkit.render.colorize`. Feature maps (N, C, *spatial) are global-average-pooled to
(N, C) first. matplotlib is driven through its object API with the Agg canvas: no window, no pyplot
global state, no change of the user's backend.

scikit-learn and matplotlib are imported when the function runs, so ``import cnnkit.inspect`` does not
need them.

References:
    L. van der Maaten, G. Hinton, "Visualizing Data using t-SNE", JMLR 9 (2008) 2579–2605.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnkit.errors import ArgumentTypeError, ShapeError
from cnnkit.render.labels import DEFAULT_PALETTE

__all__ = ["pool_features", "sample_pixels", "tsne_plot"]


def pool_features(features: Tensor | np.ndarray) -> np.ndarray:
    """(N, D) features as float64 NumPy; (N, C, *spatial) feature maps are averaged over space first.

    Examples:
        >>> pool_features(torch.ones(2, 3, 4, 4)).shape
        (2, 3)
    """
    if isinstance(features, Tensor):
        arr = features.detach().to("cpu", torch.float64).numpy()
    elif isinstance(features, np.ndarray):
        arr = features.astype(np.float64)
    else:
        raise ArgumentTypeError(
            f"features must be a torch.Tensor or a numpy.ndarray. Received {type(features).__name__}.")
    if arr.ndim < 2:
        raise ShapeError(
            f"features must have shape (N, D) or (N, C, *spatial). Received features with shape {arr.shape}."
        )
    if arr.size == 0:
        raise ShapeError(f"features must not be empty. Received features with shape {arr.shape}.")
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1).mean(axis=2)
    if not np.isfinite(arr).all():
        raise ShapeError("features must be finite. Received features with NaN or infinite values.")
    return arr


def sample_pixels(
    features: Sequence[Tensor | np.ndarray],
    labels: Sequence[Tensor | np.ndarray],
    per_class: int = 500,
    *,
    ignore_index: int = -100,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level feature vectors sampled per class (stratified) from several feature maps.

    Every labelled pixel (label != ``ignore_index``) of every map is a candidate; for each class up to
    ``per_class`` of its pixels are drawn without replacement (all of them when it has fewer), so a rare
    class is not drowned by the common ones.

    Args:
        features: Per sample a (C, H, W) feature map at the label's resolution.
        labels: Per sample an (H, W) integer label map.
        per_class: Pixels drawn per class.
        ignore_index: The label of pixels left out (unlabelled, no data).
        seed: Seed of the draw.

    Returns:
        ``(x, y)``: (M, C) float64 features and (M,) int64 classes, classes in ascending order.

    Examples:
        >>> f = [np.arange(8.0).reshape(2, 2, 2)]
        >>> x, y = sample_pixels(f, [np.array([[0, 0], [1, -100]])], per_class=1)
        >>> y.tolist(), x.shape
        ([0, 1], (2, 2))
    """
    if len(features) != len(labels) or not features:
        raise ShapeError(f"features and labels must be non-empty and of equal length. Received {len(features)} "
                         f"feature maps and {len(labels)} label maps.")
    # Two passes, so that memory follows the sample, not the scenes: count each class's pixels per map, draw
    # the global positions of the sample among them, then gather only those pixels' feature vectors.
    maps = []
    for i, (feat, lab) in enumerate(zip(features, labels)):
        y = lab.detach().cpu().numpy() if isinstance(lab, Tensor) else np.asarray(lab)
        if len(feat.shape) != 3 or y.shape != tuple(feat.shape[1:]):
            raise ShapeError(f"features[{i}] must be (C, H, W) with labels[{i}] (H, W) of the same size. Received "
                             f"{tuple(feat.shape)} and {y.shape}.")
        maps.append(y.reshape(-1))
    classes = np.unique(np.concatenate([np.unique(y[y != ignore_index]) for y in maps])).astype(np.int64)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in classes:
        positions = [np.flatnonzero(y == k) for y in maps]  # this class's pixels, map by map
        counts = np.array([len(where) for where in positions])
        total = int(counts.sum())
        drawn = np.sort(rng.choice(total, size=min(per_class, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(counts)])
        for i, pixels in enumerate(positions):
            local = drawn[(drawn >= starts[i]) & (drawn < starts[i + 1])] - starts[i]
            if not len(local):
                continue
            where = pixels[local]
            feat = features[i]
            flat = feat.detach().reshape(feat.shape[0], -1)[:, torch.from_numpy(where)].to("cpu", torch.float64) \
                if isinstance(feat, Tensor) else np.asarray(feat).reshape(feat.shape[0], -1)[:, where]
            xs.append(np.asarray(flat, dtype=np.float64).T)
            ys.append(np.full(len(where), k, dtype=np.int64))
    if not xs:
        return np.zeros((0, int(features[0].shape[0]))), np.zeros(0, dtype=np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def tsne_plot(
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[int] | None,
    path: str | Path | None,
    *,
    perplexity: float = 30.0,
    seed: int = 0,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    title: str | None = None,
    point_size: float = 12.0,
    pca_components: int | None = None,
    max_iter: int | None = None,
    angle: float = 0.5,
    threads: int | None = None,
) -> np.ndarray:
    """Embed features in 2-D with t-SNE and save a scatter plot coloured by class as PNG.

    Args:
        features: (N, D) vectors, or (N, C, *spatial) feature maps (global-average-pooled).
        labels: (N,) integer classes (colour ``k`` of :data:`cnnkit.render.DEFAULT_PALETTE`), or None.
        path: PNG file to write, or None to only compute the coordinates.
        perplexity: t-SNE perplexity; must be less than N (typical 5–50).
        seed: ``random_state`` of the t-SNE; the same seed gives the same coordinates.
        class_names: Legend entries by class (sequence or mapping); default the class numbers.
        title: Figure title.
        point_size: Marker area in points².
        pca_components: If given (and below D), features are first reduced to this many principal
            components (cheaper t-SNE on wide features; 50 is the usual choice).
        max_iter: t-SNE iterations (scikit-learn's default 1000 when None; at least 250).
        angle: Barnes-Hut trade-off (0.5 default; up to 0.8 is faster and still faithful for a picture).
        threads: OpenMP / BLAS threads scikit-learn may use (default: its own choice, every core). On a shared
            machine, spinning threads cost more CPU time than they save: pass ``torch.get_num_threads()``.

    Returns:
        The (N, 2) embedding coordinates.

    Shape:
        - features: (N, D) or (N, C, *spatial); labels: (N,)
        - Output: (N, 2), float64.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> feats = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(8, 1, (20, 5))])
        >>> xy = tsne_plot(feats, [0] * 20 + [1] * 20, None, perplexity=5)
        >>> xy.shape
        (40, 2)

    References:
        L. van der Maaten, G. Hinton, "Visualizing Data using t-SNE", JMLR 2008.
    """
    from sklearn.manifold import TSNE

    x = pool_features(features)
    n = x.shape[0]
    if isinstance(perplexity, bool) or not isinstance(perplexity, (int, float)) or not 0 < perplexity < n:
        raise ShapeError(
            f"perplexity must be a number in (0, N) with N = {n} samples (typical 5–50). "
            f"Received perplexity={perplexity!r}."
        )
    if labels is not None:
        lab = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
        if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer) or (lab < 0).any():
            raise ShapeError(
                f"labels must be {n} integer classes >= 0, one per sample. Received labels with shape {lab.shape} "
                f"and dtype {lab.dtype}."
            )
    from contextlib import nullcontext

    from threadpoolctl import threadpool_limits

    options = {} if max_iter is None else {"max_iter": int(max_iter)}
    with threadpool_limits(limits=threads) if threads is not None else nullcontext():
        if pca_components is not None and pca_components < x.shape[1]:
            from sklearn.decomposition import PCA

            # at most as many components as points (a handful of labelled pixels is still a picture)
            x = PCA(n_components=min(pca_components, x.shape[0]), random_state=seed).fit_transform(x)
        coords = TSNE(n_components=2, perplexity=float(perplexity), random_state=seed, init="pca",
                      learning_rate="auto", angle=angle, **options).fit_transform(x)
    if path is not None:
        _plot(coords, None if labels is None else lab, Path(path), class_names, title, point_size)
    return coords


def _plot(coords, labels, path, class_names, title, point_size) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = np.asarray(DEFAULT_PALETTE, dtype=np.float64) / 255.0
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=point_size, color=palette[0])
    else:
        names = dict(enumerate(class_names)) if isinstance(class_names, Sequence) else dict(class_names or {})
        for k in np.unique(labels):
            sel = labels == k
            ax.scatter(coords[sel, 0], coords[sel, 1], s=point_size, color=palette[k % len(palette)],
                       label=str(names.get(int(k), int(k))))
        ax.legend(loc="best", fontsize="small", markerscale=1.5, frameon=False)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
