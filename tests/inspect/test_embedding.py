"""t-SNE of digits features: a readable PNG, deterministic coordinates, classes that cluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cnnkit.errors import ShapeError
from cnnkit.inspect import pool_features, tsne_plot

datasets = pytest.importorskip("sklearn.datasets")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def digits300():
    data = datasets.load_digits()
    return data.data[:300] / 16.0, data.target[:300]


def test_tsne_of_digits_clusters_classes_and_writes_a_png(digits300, tmp_path):
    x, y = digits300
    path = tmp_path / "tsne.png"
    coords = tsne_plot(x, y, path, perplexity=20, seed=1, class_names=[str(k) for k in range(10)], title="digits")
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (600, 500)
    # leave-one-out 1-nearest-neighbour accuracy in the 2-D map, computed here with plain NumPy
    d = ((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    accuracy = (y[d.argmin(1)] == y).mean()
    assert accuracy > 0.85
    again = tsne_plot(x, y, None, perplexity=20, seed=1)
    np.testing.assert_array_equal(again, coords)  # same seed, same map


def test_feature_maps_are_average_pooled(digits300):
    x, y = digits300
    maps = torch.tensor(x[:60], dtype=torch.float32).view(60, 1, 8, 8).repeat(1, 4, 1, 1)
    maps = maps * torch.arange(1.0, 5.0).view(1, 4, 1, 1)
    pooled = maps.double().mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(pool_features(maps), pooled)
    a = tsne_plot(maps, torch.tensor(y[:60]), None, perplexity=10, seed=0)
    b = tsne_plot(pooled, y[:60], None, perplexity=10, seed=0)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_embedding_errors(digits300):
    x, y = digits300
    with pytest.raises(ShapeError, match=r"perplexity must be a number in \(0, N\) with N = 20 samples.*perplexity=30"):
        tsne_plot(x[:20], y[:20], None)
    with pytest.raises(ShapeError, match=r"labels must be 20 integer classes >= 0.*shape \(19,\)"):
        tsne_plot(x[:20], y[:19], None, perplexity=5)
    with pytest.raises(ShapeError, match=r"features must not be empty"):
        tsne_plot(np.zeros((0, 4)), None, None)
    with pytest.raises(ShapeError, match=r"features must have shape \(N, D\) or \(N, C, \*spatial\)"):
        pool_features(np.zeros(5))
    with pytest.raises(ShapeError, match=r"features must be finite"):
        pool_features(np.full((3, 2), np.nan))


def test_sample_pixels_draws_per_class_real_pixels():
    from cnnkit.inspect.embedding import sample_pixels

    rng = np.random.default_rng(1)
    features = [rng.normal(size=(3, 6, 7)), rng.normal(size=(3, 4, 5))]
    labels = [rng.integers(0, 2, size=(6, 7)), np.full((4, 5), 2)]
    labels[0][0] = -100
    labels[1][1, 1] = -100
    x, y = sample_pixels(features, labels, per_class=10, seed=3)
    counts = {k: int((labels[0] == k).sum() + (labels[1] == k).sum()) for k in (0, 1, 2)}
    assert {k: int((y == k).sum()) for k in (0, 1, 2)} == {k: min(10, c) for k, c in counts.items()}
    # every drawn row is the feature vector of a distinct pixel of that class (looked up by hand)
    table = {}
    for f, lab in zip(features, labels):
        for i in range(lab.shape[0]):
            for j in range(lab.shape[1]):
                table[tuple(np.round(f[:, i, j], 12))] = int(lab[i, j])
    keys = [tuple(np.round(row, 12)) for row in x]
    assert len(set(keys)) == len(keys)
    assert all(table[key] == cls for key, cls in zip(keys, y.tolist()))
    with pytest.raises(ShapeError, match="non-empty and of equal length"):
        sample_pixels(features, labels[:1])


def test_tsne_options_keep_clusters(digits300):
    x, y = digits300
    xy = tsne_plot(x, y, None, perplexity=15, pca_components=16, max_iter=300, angle=0.7, threads=1)
    from sklearn.neighbors import KNeighborsClassifier

    assert KNeighborsClassifier(5).fit(xy, y).score(xy, y) > 0.9


def test_tsne_with_fewer_points_than_pca_components():
    """12 labelled pixels and pca_components=16: PCA keeps at most one component per point (it raised)."""
    from cnnkit.inspect.embedding import tsne_plot

    x = np.random.default_rng(0).normal(size=(12, 20))
    coords = tsne_plot(x, np.arange(12) % 3, None, perplexity=3, pca_components=16)
    assert coords.shape == (12, 2) and np.isfinite(coords).all()
