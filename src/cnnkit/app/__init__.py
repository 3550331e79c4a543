"""The applications: whole workflows that use every other room (the top floor, below only the command line).

* :mod:`cnnkit.app.train` — data → trained, evaluated network → report and run manifest (``cnnkit train``);
* :mod:`cnnkit.app.demo` — the same on built-in data, and the seed questions' shapes (``cnnkit demo``);
* :mod:`cnnkit.app.predict` — a run → predictions for new images and whole scenes (``cnnkit predict``).

Importing this package loads Lightning.
"""

from cnnkit.app.demo import SEED_QUESTIONS, run_demo, run_training_demo, train_demo
from cnnkit.app.predict import PredictionRun, expand_inputs, load_predictor, predict_files
from cnnkit.app.train import SegmentationRun, evaluate, majority_baseline, train_folder, train_segmentation

__all__ = [
    "SEED_QUESTIONS",
    "PredictionRun",
    "SegmentationRun",
    "evaluate",
    "expand_inputs",
    "load_predictor",
    "majority_baseline",
    "predict_files",
    "run_demo",
    "run_training_demo",
    "train_demo",
    "train_folder",
    "train_segmentation",
]
