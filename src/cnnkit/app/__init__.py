"""The applications: whole workflows that use every other room (the top floor, below only the command line).

* :mod:`cnnkit.app.train` — data → trained, evaluated network → report and run manifest (``cnnkit train``);
* :mod:`cnnkit.app.demo` — the same on built-in data, and the seed questions' shapes (``cnnkit demo``);
* :mod:`cnnkit.app.settings` — how a run trains (:class:`TrainSettings`), one object for images and series;
* :mod:`cnnkit.app.weights` — where a run's first weights come from (``--weights``);
* :mod:`cnnkit.app.predict` — a run → predictions for new images and whole scenes (``cnnkit predict``);
* :mod:`cnnkit.app.threads` — how many threads a command uses on a shared machine;
* :mod:`cnnkit.app.timeseries` — image time series with clouds → trained series network → report (``cnnkit
  train`` on a series folder; ``cnnkit demo --time-series`` runs it on built-in series).
* :mod:`cnnkit.app.pastis` — the PASTIS benchmark's folders (published folds) through the same series pipeline;
* :mod:`cnnkit.app.workflow` — the steps both share (one evaluation, one majority baseline, class counts, the
  held-out split, the device and network choice): images and series differ only by what an item is (``Kind``).

Names are imported on first use: ``cnnkit predict`` does not load Lightning, training does.
"""

from __future__ import annotations

from cnnkit._lazy import lazy_names

_NAMES = {
    "SEED_QUESTIONS": "cnnkit.app.demo",
    "run_demo": "cnnkit.app.demo",
    "run_training_demo": "cnnkit.app.demo",
    "train_demo": "cnnkit.app.demo",
    "PredictionRun": "cnnkit.app.predict",
    "expand_inputs": "cnnkit.app.predict",
    "load_predictor": "cnnkit.app.predict",
    "predict_files": "cnnkit.app.predict",
    "predict_series": "cnnkit.app.predict",
    "predict_pastis": "cnnkit.app.pastis",
    "train_pastis": "cnnkit.app.pastis",
    "SegmentationRun": "cnnkit.app.train",
    "TrainSettings": "cnnkit.app.settings",
    "evaluate": "cnnkit.app.workflow",
    "majority_baseline": "cnnkit.app.workflow",
    "train_folder": "cnnkit.app.train",
    "train_segmentation": "cnnkit.app.train",
    "busy_cores": "cnnkit.app.threads",
    "choose_threads": "cnnkit.app.threads",
    "usable_cores": "cnnkit.app.threads",
    "SeriesRun": "cnnkit.app.timeseries",
    "run_series_demo": "cnnkit.app.demo",
    "series_demo": "cnnkit.app.demo",
    "train_series": "cnnkit.app.timeseries",
    "train_series_folder": "cnnkit.app.timeseries",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_names(__name__, _NAMES, globals())
