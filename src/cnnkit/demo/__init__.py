"""``cnnkit demo``: a mask-aware segmentation network trained on a built-in data set, and its report.

See ``docs/demo.md``.
"""

from cnnkit.demo.dataset import CLASS_NAMES, RARE_CLASS, SyntheticLandCover
from cnnkit.demo.pipeline import train_demo
from cnnkit.demo.run import SEED_QUESTIONS, run_demo, run_training_demo
from cnnkit.models import TinyResNet, TinySegNet

__all__ = [
    "CLASS_NAMES",
    "RARE_CLASS",
    "SEED_QUESTIONS",
    "SyntheticLandCover",
    "TinyResNet",
    "TinySegNet",
    "run_demo",
    "run_training_demo",
    "train_demo",
]
