"""cnnkit.keras.graph on hand-written configs (torch-free): how each Keras numbers calls and names classes."""

from __future__ import annotations

import pytest

from cnnkit.errors import UnsupportedError
from cnnkit.keras.graph import parse_graph, topological_order

SUPPORTED = {"Conv2D", "Add", "Sequential", "CustomScaleLayer"}


def _nested_twice(first_node: int) -> dict:
    """tf-keras's config of ``y = block(block(x)) + block(x)`` where ``block`` is a Sequential with an Input."""
    block = {"class_name": "Sequential", "config": {"name": "block", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 6, 6, 3], "name": "block_input"}},
        {"class_name": "Conv2D", "config": {"name": "conv", "filters": 3, "kernel_size": [3, 3]}}]},
        "name": "block", "inbound_nodes": [[["input_1", 0, 0, {}]], [["block", first_node, 0, {}]]]}
    return {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 6, 6, 3], "name": "input_1"},
         "name": "input_1", "inbound_nodes": []},
        block,
        {"class_name": "Add", "config": {"name": "add"}, "name": "add",
         "inbound_nodes": [[["block", first_node, 0, {}], ["block", first_node + 1, 0, {}]]]}],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["add", 0, 0]]}}


def test_tf_keras_numbers_a_nested_models_calls_from_one():
    """tf-keras skips the node a nested Sequential built from an Input already has (ConvNeXt's stem)."""
    _, calls, inputs, _, _ = parse_graph(_nested_twice(1), "m.h5", SUPPORTED, keras_major=2)
    assert [(name, index) for name, index, _ in calls] == [("block", 1), ("block", 2), ("add", 0)]
    order, stuck = topological_order(calls, set(inputs))
    assert len(order) == 3 and not stuck


def test_keras3_numbers_a_nested_models_calls_from_zero():
    _, calls, inputs, _, _ = parse_graph(_nested_twice(0), "m.keras", SUPPORTED, keras_major=3)
    assert [(name, index) for name, index, _ in calls] == [("block", 0), ("block", 1), ("add", 0)]
    assert not topological_order(calls, set(inputs))[1]
    # The same tf-keras file read with Keras 3's numbering cannot run: the old refusal.
    _, calls, inputs, _, _ = parse_graph(_nested_twice(1), "m.h5", SUPPORTED, keras_major=3)
    assert topological_order(calls, set(inputs))[1]


def _scale_layer(class_name: str, **extra) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "name": "x"}, "name": "x",
         "inbound_nodes": []},
        {"class_name": class_name, "config": {"name": "s", "trainable": True, "dtype": "float32", "scale": 0.17,
                                              **extra}, "name": "s", "inbound_nodes": [[["x", 0, 0, {}],
                                                                                         ["x", 0, 0, {}]]]}],
        "input_layers": [["x", 0, 0]], "output_layers": [["s", 0, 0]]}}


def test_registered_name_of_custom_scale_layer_in_a_legacy_h5():
    layers, *_ = parse_graph(_scale_layer("Custom>CustomScaleLayer"), "m.h5", SUPPORTED, keras_major=2)
    assert layers[1][1] == "CustomScaleLayer"


@pytest.mark.parametrize("class_name", ["Custom>CustomScaleLayer", "Custom>Evil", "Other>CustomScaleLayer"])
def test_other_registered_names_are_refused(class_name):
    extra = {"code": "import os"} if class_name == "Custom>CustomScaleLayer" else {}
    with pytest.raises(UnsupportedError, match="unknown or unsupported layer class"):
        parse_graph(_scale_layer(class_name, **extra), "m.h5", SUPPORTED, keras_major=2)
