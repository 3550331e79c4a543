"""`cnnkit demo --time-series --model`: the network chosen by the name `cnnkit train --model` uses, recorded in the
run's manifest, and the reported held-out IoU equal to one computed by hand from the saved network called with the
series' acquisition days."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from typer.testing import CliRunner

from cnnkit.app.demo import DEMO_MODEL, DEMO_NETWORKS, series_demo
from cnnkit.cli.main import app
from cnnkit.data import crop_series
from cnnkit.models import spec_for

runner = CliRunner()


def test_model_needs_time_series_and_unknown_names_are_refused(tmp_path):
    result = runner.invoke(app, ["demo", "--model", "UTAE", "--out", str(tmp_path / "a")], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "--model chooses the network of the time-series demo: add --time-series. Received --model UTAE" in \
        result.output
    result = runner.invoke(app, ["demo", "--time-series", "--model", "ConvLSTM", "--out", str(tmp_path / "b")],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "Unknown model 'ConvLSTM'. Expected one of ('SeriesSegNet', 'UTAE')" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert DEMO_MODEL in DEMO_NETWORKS


def _iou_by_hand(predicted: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    labelled = label >= 0
    values = []
    for k in range(num_classes):
        p, t = (predicted == k) & labelled, (label == k) & labelled
        union = (p | t).sum()
        if union:
            values.append((p & t).sum() / union)
    return float(np.mean(values))


def test_a_demo_network_by_name_is_recorded_and_evaluated_with_the_days(tmp_path):
    """One epoch of UTAE on 3 series: the manifest holds its spec (DEMO_NETWORKS' arguments); the held-out IoU the
    run reports equals the IoU by hand of the saved network called with the standardised held-out series and its
    days (crop_series' days, the seventh band × 365) — not with 0 … T−1, which gives other logits."""
    from cnnkit.app.predict import load_series_model

    torch.set_num_threads(1)
    out = tmp_path / "run"
    lines = []
    result = series_demo(out, model="UTAE", epochs=1, n_train=3, n_heldout=1, single_date_baseline=False,
                         progress=False, log=lines.append, crop_size=16, val_every=1)
    manifest = json.loads((out / "manifest.json").read_text())
    args = DEMO_NETWORKS["UTAE"][0]
    assert manifest["model"]["spec"] == spec_for("UTAE", args=args).to_dict()
    assert any("UTAE" in line for line in lines)
    net, manifest = load_series_model(out)
    series, label, days = crop_series(1, seed=1, with_days=True)[0]
    valid = torch.isfinite(series).all(1)
    prep = manifest["input"]
    mean, std = torch.tensor(prep["mean"])[:, None, None], torch.tensor(prep["std"])[:, None, None]
    x = torch.where(valid[:, None], (series - mean) / std, torch.zeros(()))
    with torch.no_grad():
        logits = net(x[None], valid[None], days[None])[0]
        by_index = net(x[None], valid[None], torch.arange(len(days))[None])[0]
    assert (logits - by_index).abs().max() > 1e-3
    by_hand = _iou_by_hand(logits.argmax(0).numpy(), label.numpy(), 5)
    assert math.isclose(result.mean_iou, by_hand, rel_tol=0, abs_tol=1e-6), (result.mean_iou, by_hand)
