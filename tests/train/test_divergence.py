"""DivergenceStop: a non-finite training loss, or a validation loss a hundred times the lowest so far, stops the
run with what to change; a loss that falls, or rises a little, trains on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.train.callbacks import DivergenceStop


def _trainer(**metrics) -> SimpleNamespace:
    return SimpleNamespace(callback_metrics={k: torch.tensor(v) for k, v in metrics.items()}, sanity_checking=False,
                           current_epoch=0, global_step=7)


def test_a_non_finite_training_loss_stops_with_a_smaller_learning_rate_to_try():
    stop = DivergenceStop(lr=0.01)
    stop.on_train_batch_end(_trainer(), None, {"loss": torch.tensor(0.5)}, None, 0)  # finite: nothing happens
    with pytest.raises(CnnkitError, match=r"training loss of step 7 is nan.*--lr 0\.001"):
        stop.on_train_batch_end(_trainer(), None, {"loss": torch.tensor(float("nan"))}, None, 0)


def test_a_validation_loss_far_above_the_lowest_so_far_stops():
    stop = DivergenceStop(lr=0.5, factor=100.0)
    stop.on_validation_epoch_end(_trainer(**{"val/loss": 1.2}), None)   # first validation: the reference
    stop.on_validation_epoch_end(_trainer(**{"val/loss": 0.9}), None)   # lower: the new reference
    stop.on_validation_epoch_end(_trainer(**{"val/loss": 80.0}), None)  # 89x the lowest: still under 100x
    with pytest.raises(CnnkitError, match=r"validation loss of epoch 1 is 91, over 100 times 0\.9.*--lr 0\.05"):
        stop.on_validation_epoch_end(_trainer(**{"val/loss": 91.0}), None)
    with pytest.raises(CnnkitError, match="validation loss of epoch 1 is inf"):
        stop.on_validation_epoch_end(_trainer(**{"val/loss": float("inf")}), None)


def test_the_first_epochs_training_loss_is_the_reference_and_sanity_checks_do_not_count():
    stop = DivergenceStop(lr=0.01, factor=10.0)
    stop.on_train_epoch_end(_trainer(**{"train/loss_epoch": 2.0}), None)
    sanity = _trainer(**{"val/loss": 1e9})
    sanity.sanity_checking = True
    stop.on_validation_epoch_end(sanity, None)  # Lightning's sanity check runs before training: ignored
    stop.on_validation_epoch_end(_trainer(**{"val/loss": 19.0}), None)
    with pytest.raises(CnnkitError, match="over 10 times 2"):
        stop.on_validation_epoch_end(_trainer(**{"val/loss": 21.0}), None)
