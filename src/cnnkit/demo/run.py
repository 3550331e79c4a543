"""The two demos behind ``cnnkit demo``.

* :func:`run_training_demo` (``cnnkit demo``): trains a mask-aware segmentation network on the built-in
  data set, prints the held-out mean IoU next to a majority-class baseline, and writes the HTML report
  (see :mod:`cnnkit.demo.pipeline`).
* :func:`run_demo` (``cnnkit demo --shapes``): the seed questions' shapes answered by
  :func:`cnnkit.explainers.explain` and a model summary.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.rule import Rule
from torch import nn

from cnnkit.explainers import explain, summary
from cnnkit.models import TinySegNet
from cnnkit.nn import LocallyConnected2d

__all__ = ["SEED_QUESTIONS", "run_demo", "run_training_demo"]

# (question, layer, input shape without batch) — the shapes people asked about in the seed questions.
SEED_QUESTIONS: list[tuple[str, nn.Module, tuple[int, ...]]] = [
    ("Keras Conv2D(32, (5, 5)) on a 32×32×3 image: what do its filters look like?",
     nn.Conv2d(3, 32, 5), (3, 32, 32)),
    ("Theano tutorial: why is a 28×28 input 24×24 after a 5×5 filter ('valid')?",
     nn.Conv2d(1, 20, 5), (1, 28, 28)),
    ("… and 32×32 with border_mode='full'?", nn.Conv2d(1, 20, 5, padding=4), (1, 28, 28)),
    ("Convolution1D(111, 5) over 300 channels: why is the kernel (5, 300, 111)?",
     nn.Conv1d(300, 111, 5), (300, 300)),
    ("Dense from 2000 to 4800 units: (4800, 2000) or (2000, 4800)?", nn.Linear(2000, 4800), (2000,)),
    ("LocallyConnected2D, 4 filters 3×3 on 6×6×4: why is the kernel (16, 36, 4)?",
     LocallyConnected2d(4, 4, 3, input_size=(6, 6)), (4, 6, 6)),
]


def run_demo(console: Console | None = None, height: int = 64, width: int = 96) -> None:
    """Print the seed answers and the summary of :class:`TinySegNet` on a 4-band ``height×width`` image."""
    console = console or Console(width=max(Console().width, 140))
    console.print(Rule("cnnkit demo — shapes, explained"))
    for question, layer, shape in SEED_QUESTIONS:
        console.print(f"\n[bold]{question}[/bold]")
        console.print(str(explain(layer, shape)), markup=False, highlight=False, soft_wrap=True)
    net = TinySegNet(in_channels=4, num_classes=5)
    console.print(Rule(f"A small segmentation network on a 4-band {height}×{width} image"))
    console.print(summary(net, (4, height, width)))


def run_training_demo(
    out: str | os.PathLike = "cnnkit-demo",
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    console: Console | None = None,
    **kwargs,
):
    """Run :func:`cnnkit.demo.train_demo` and print the report's path, the time and both mean IoUs.

    ``kwargs`` go to ``train_demo`` (``n_train``, ``n_heldout``, ``width``, ``progress`` …). Returns its
    :class:`~cnnkit.train.pipeline.SegmentationRun`.
    """
    from cnnkit.demo.pipeline import DEFAULT_EPOCHS, train_demo

    console = console or Console(width=max(Console().width, 140))
    console.print(Rule("cnnkit demo — a mask-aware segmentation network on synthetic land cover with clouds"))
    result = train_demo(out, epochs=DEFAULT_EPOCHS if epochs is None else epochs, seed=seed, device=device,
                        log=lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True), **kwargs)
    console.print(Rule("result"))
    for line in result.lines():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return result
