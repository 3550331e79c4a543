"""``cnnkit models``: the networks a run may name, and whether cnnkit's two exactness promises hold on each.

The promises are checked by running them, never read from a list: :func:`check_exactness` builds a small
random-weight network of the architecture (float64) and compares

* **padded == alone**: :func:`cnnkit.masked` on a padded batch of two images of different sizes against the network
  run on each image alone (eval mode: batch-norm running statistics, so each result depends on its image only);
* **tiled == whole**: :meth:`cnnkit.predict.Predictor.predict_scene` on a small scene cut into tiles against
  :meth:`~cnnkit.predict.Predictor.predict_image` on the whole scene (labels where the top two scores differ by
  more than 1e-4, probabilities within 1e-5).

Results are kept in memory for the process only (:func:`check_exactness` is cached per spec).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.errors import CnnkitError, UnsupportedError
from cnnkit.models import ModelSpec, build, parse_spec

__all__ = ["Exactness", "check_exactness"]


@dataclass(frozen=True)
class Exactness:
    """What :func:`check_exactness` found for one network.

    Attributes:
        masked: ``masked()`` on a padded batch equals each image alone (largest difference ≤ ``1e-9``, float64).
        tiled: Tiled prediction equals the whole-image one.
        masked_error: Largest absolute difference of the logits, padded vs alone.
        note: Why a check could not run (empty otherwise).
    """

    masked: bool | None
    tiled: bool | None
    masked_error: float = float("nan")
    note: str = ""


def _multiple(spec: ModelSpec) -> int:
    from cnnkit.app.train import size_multiple

    return size_multiple(spec)


def check_exactness(spec: ModelSpec | dict, *, seed: int = 0) -> Exactness:
    """Run both exactness checks on a random-weight network of ``spec`` (3 data bands + validity, 3 classes)."""
    spec = parse_spec(spec)
    return _check(spec.library, spec.architecture, spec.encoder, repr(sorted(spec.args.items())), seed)


@functools.lru_cache(maxsize=64)
def _check(library: str, architecture: str, encoder: str | None, args_key: str, seed: int) -> Exactness:
    import ast

    from cnnkit.masking import collate_padded, masked

    spec = ModelSpec(library, architecture, encoder, dict(ast.literal_eval(args_key)))
    m = _multiple(spec)
    torch.manual_seed(seed)
    try:
        net = build(spec, in_channels=4, num_classes=3).double().eval()
    except CnnkitError as error:
        return Exactness(None, None, note=str(error).splitlines()[0])
    g = torch.Generator().manual_seed(seed)
    sizes = [(2 * m, 2 * m), (m, 2 * m)] if m >= 16 else [(4 * m, 6 * m), (2 * m, 3 * m)]
    images = [torch.randn(4, h, w, generator=g, dtype=torch.float64) for h, w in sizes]
    for image in images:
        image[3] = 1.0  # the validity band
    with torch.no_grad():
        batch = collate_padded(list(images))
        padded = masked(net)(batch)
        padded = padded.data if hasattr(padded, "sizes") else padded
        error = max(float((padded[i, :, :h, :w] - net(image[None])[0]).abs().max())
                    for i, (image, (h, w)) in enumerate(zip(images, sizes)))
    try:
        tiled, note = _tiled(net.float(), m), ""
    except UnsupportedError as refused:  # the tiler refuses what tiles cannot reproduce (group norm, global pooling)
        tiled, note = False, str(refused).split(":")[0]
    return Exactness(error <= 1e-9, tiled, error, note)


def _tiled(net: torch.nn.Module, multiple: int) -> bool:
    import tifffile

    from cnnkit.predict import Predictor, Preprocessing
    from cnnkit.predict.scene import open_scene

    side = 4 * max(multiple, 16)
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (3, side + multiple, side - multiple)).astype(np.float32)
    image[:, :5, :7] = np.nan
    predictor = Predictor(net, Preprocessing(mean=(0.0,) * 3, std=(1.0,) * 3, multiple_of=multiple),
                          ["a", "b", "c"])
    whole = predictor.predict_image(torch.from_numpy(image))
    with tempfile.TemporaryDirectory(prefix="cnnkit-check-") as folder:
        path = Path(folder) / "scene.tif"
        tifffile.imwrite(path, image, photometric="minisblack", planarconfig="separate")
        scene = open_scene(path, 3)
        try:
            labels = np.empty(image.shape[1:], np.int16)
            scores = np.empty((*image.shape[1:], 3), np.float32)
            predictor.predict_scene(scene, tile=side // 2, labels_out=labels, probabilities_out=scores)
        finally:
            scene.close()
    probabilities = whole.probabilities.permute(1, 2, 0).numpy()
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0] > 1e-4) & whole.valid.numpy()
    same = np.array_equal(labels[clear], whole.labels.numpy()[clear])
    close = float(np.abs(scores - probabilities)[whole.valid.numpy()].max()) <= 1e-5
    return bool(same and close)
