"""The layer graph of a Keras model config: untrusted JSON in, plain tuples out (no torch, no h5py).

* :func:`parse_graph` checks every layer entry (built-in classes only: ``Lambda``, custom objects and nested
  models are refused by name) and lists the layer calls of a Sequential or functional model.
* :func:`topological_order` orders the calls so that every call comes after the calls producing its
  inputs, in time linear in the number of calls and references (a heap keeps the file's order among the
  calls that are ready, so a config already in order runs in that order).

Everything here is linear in the size of the config; nothing recurses on the config's nesting.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence

from cnnkit.errors import UnsupportedError
from cnnkit.keras.reader import KerasFileError

__all__ = ["Ref", "input_shape", "parse_graph", "topological_order"]

_MAX_INT = 2**31 - 1
Shape = tuple  # Keras shape without the batch dimension; entries int or None
Ref = tuple  # (layer_name, node_index, tensor_index)

_MODEL_CLASSES = ("Sequential", "Functional", "Model")
_SAFE_MODULES = ("keras.layers", "keras.src.layers", "tensorflow.keras.layers", "tf_keras.layers")


# keras.ops calls Keras 3 records in functional graphs (x + 3.0, x * (1 / 6) in MobileNetV3's hard_swish).
_OPS = ("Add", "Subtract", "Multiply", "Divide", "TrueDivide")

# tf-keras records a TensorFlow function called on a symbolic tensor (x + 3.0, tf.math.multiply(x, y)) as a
# TFOpLambda naming the function: these, which cnnkit computes itself, are converted.
_TF_OPS = {"__operators__.add": "Add", "math.add": "Add", "__operators__.sub": "Subtract",
           "math.subtract": "Subtract", "math.multiply": "Multiply", "__operators__.mul": "Multiply",
           "math.truediv": "TrueDivide", "__operators__.truediv": "TrueDivide", "math.divide": "TrueDivide"}

# Layer classes defined inside keras.applications (not in keras.layers), by (module, class_name): the
# builder class they map to, or "!reason" for a refusal.
_INTERNAL = {
    ("keras.src.applications.convnext", "LayerScale"): "LayerScale",
    ("keras.applications.convnext", "LayerScale"): "LayerScale",
    ("tf_keras.src.applications.convnext", "LayerScale"): "LayerScale",
    ("keras.src.applications.inception_resnet_v2", "CustomScaleLayer"): "CustomScaleLayer",
    ("keras.applications.inception_resnet_v2", "CustomScaleLayer"): "CustomScaleLayer",
    ("tf_keras.src.applications.inception_resnet_v2", "CustomScaleLayer"): "CustomScaleLayer",
}
# The config keys of those classes, which identify them in a legacy .h5 (which records no module).
_INTERNAL_KEYS = {"LayerScale": {"init_values", "projection_dim"}, "CustomScaleLayer": {"scale"}}


def _check_safe(entry: dict, where: str, supported: Collection[str]) -> tuple[str, dict]:
    if not isinstance(entry, dict):
        raise KerasFileError(f"{where}: a layer entry must be a JSON object. Received {entry!r:.80}.")
    cls = entry.get("class_name")
    config = entry.get("config")
    if not isinstance(cls, str) or not isinstance(config, dict):
        raise KerasFileError(f"{where}: a layer entry needs a string 'class_name' and an object 'config'. "
                             f"Received class_name={cls!r:.80}.")
    name = config.get("name", entry.get("name"))
    label = f"Layer {name!r} ({cls})"
    if cls == "Lambda":
        raise UnsupportedError(
            f"{label}: Lambda layers hold Python code (a marshalled function) and cnnkit never runs code "
            "from a file. Replace the Lambda with built-in layers, or rebuild that part in PyTorch."
        )
    module = entry.get("module")
    registered = entry.get("registered_name")
    if isinstance(module, str) and module.startswith("keras.src.ops.") and registered == cls:
        # Keras 3 records a keras.ops call on a symbolic tensor (x + 3.0, x * y) as an operation entry.
        if cls not in _OPS:
            raise UnsupportedError(f"{label}: the operation keras.ops.{cls} is not supported. Supported "
                                   f"operations: {', '.join(sorted(_OPS))}.")
        return f"ops.{cls}", config
    if cls == "TFOpLambda" and (module is None or module.startswith(("keras.", "tf_keras."))) and (
            registered in (None, cls)):
        function = config.get("function")
        if function not in _TF_OPS:
            raise UnsupportedError(f"{label}: the TensorFlow function {function!r:.80} is not supported. "
                                   f"Supported: {', '.join(sorted(_TF_OPS))}.")
        return f"ops.{_TF_OPS[function]}", config
    internal = _INTERNAL.get((module, cls))
    # A legacy .h5 keeps no module: recognised by name and exactly its config keys. tf-keras writes a class
    # registered with register_keras_serializable() under its registered name ("Custom>CustomScaleLayer").
    bare = cls.removeprefix("Custom>")
    if internal is None and module is None and registered is None and bare in _INTERNAL_KEYS and set(config) <= (
            _INTERNAL_KEYS[bare] | {"name", "trainable", "dtype"}):
        internal = bare
    if internal is not None:
        if internal.startswith("!"):
            raise UnsupportedError(f"{label}: {internal[1:]}")
        return internal, config
    if cls == "Sequential" and module in (None, "keras", "keras.models", "keras.src.models.sequential") and (
            registered in (None, cls)) and "Sequential" in supported:
        return cls, config
    if (module is not None and not (isinstance(module, str) and any(
            module == m or module.startswith(m + ".") for m in _SAFE_MODULES))) or (
            registered is not None and registered != cls):
        raise UnsupportedError(
            f"{label}: a custom object (module={module!r}, registered_name={registered!r}); cnnkit only "
            "converts built-in Keras layers and never runs code from a file."
        )
    if cls in _MODEL_CLASSES:
        raise UnsupportedError(f"{label}: nested models are not supported; flatten the model into one graph.")
    if cls != "InputLayer" and cls not in supported:
        raise UnsupportedError(f"{label}: unknown or unsupported layer class. Supported: "
                               f"{', '.join(sorted({*supported, 'InputLayer'}))}.")
    return cls, config


def input_shape(entry_config: dict, where: str) -> Shape:
    for key in ("batch_shape", "batch_input_shape"):
        if entry_config.get(key) is not None:
            shape = entry_config[key]
            if isinstance(shape, list) and shape:
                shape = shape[1:]
                break
            raise KerasFileError(f"{where}: {key} must be a non-empty list. Received {shape!r:.80}.")
    else:
        shape = entry_config.get("shape")
        if not isinstance(shape, list):
            raise KerasFileError(f"{where}: cannot tell the input shape (no batch_shape, batch_input_shape "
                                 "or shape in the config).")
    if not all(s is None or (isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= _MAX_INT) for s in shape):
        raise KerasFileError(
            f"{where}: input shape entries must be positive integers or null. Received {shape!r:.120}.")
    if entry_config.get("sparse") or entry_config.get("ragged"):
        raise UnsupportedError(f"{where}: sparse or ragged inputs are not supported.")
    return tuple(shape)


def _ref(obj, where: str) -> tuple[str, int, int]:
    if (isinstance(obj, (list, tuple)) and len(obj) >= 3 and isinstance(obj[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in obj[1:3])):
        return obj[0], obj[1], obj[2]
    raise KerasFileError(f"{where}: a tensor reference must be [layer_name, node_index, tensor_index]. "
                         f"Received {obj!r:.120}.")


def _is_tensor_like(value) -> bool:
    return (isinstance(value, dict) and value.get("class_name") == "__keras_tensor__") or (
        isinstance(value, (list, tuple)) and any(_is_tensor_like(v) for v in value))


def _parse_node(node, where: str, op: bool = False):
    """One call of a layer → a ref or a list of refs (Keras 3 dict syntax or Keras 2 list syntax)."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        if op and isinstance(args, list) and len(args) == 2 and isinstance(kwargs, dict) and not kwargs:
            tensors = [_is_tensor_like(a) for a in args]
            if all(tensors):
                return [_parse_node({"args": [[a]]}, where, False)[0] for a in args]
            if any(tensors):
                value = args[1] if tensors[0] else args[0]
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    ref = _parse_node({"args": [args[0] if tensors[0] else args[1]]}, where, False)
                    return ref, (float(value), tensors[0])
            raise UnsupportedError(f"{where}: an operation on {args!r:.120} is not supported (one tensor and "
                                   "a finite number, or two tensors).")
        if not isinstance(args, list) or len(args) != 1 or not isinstance(kwargs, dict):
            raise UnsupportedError(f"{where}: layers called with one tensor or one list of tensors are "
                                   f"supported. Received args={args!r:.120}.")
        for key, value in kwargs.items():
            if _is_tensor_like(value) or key not in ("mask", "training"):
                raise UnsupportedError(f"{where}: call argument {key}={value!r:.60} is not supported.")

        def one(t):
            if isinstance(t, dict) and t.get("class_name") == "__keras_tensor__" and isinstance(t.get("config"), dict):
                return _ref(t["config"].get("keras_history"), where)
            raise KerasFileError(f"{where}: expected a Keras tensor. Received {t!r:.120}.")

        arg = args[0]
        return [one(t) for t in arg] if isinstance(arg, list) else one(arg)
    if isinstance(node, list) and node:  # Keras 2: [[name, node_index, tensor_index, kwargs], ...]
        refs = []
        for item in node:
            ref = _ref(item, where)
            kwargs = item[3] if len(item) > 3 else {}
            if not isinstance(kwargs, dict) or any(_is_tensor_like(v) or isinstance(v, list) for v in kwargs.values()):
                raise UnsupportedError(f"{where}: call arguments {kwargs!r:.80} are not supported.")
            refs.append(ref)
        return refs[0] if len(refs) == 1 else refs
    raise KerasFileError(f"{where}: malformed inbound node {node!r:.120}.")


def layer_cls_raw(entry: dict):
    return entry.get("class_name")


def _tf_op_node(node, where: str):
    """A tf-keras TFOpLambda node ``[[name, i, j, {"y": ref or number, "name": ...}]]`` in Keras 3's form."""
    if isinstance(node, list) and len(node) == 4 and isinstance(node[0], str):
        node = [node]
    if not (isinstance(node, list) and len(node) == 1 and isinstance(node[0], list) and len(node[0]) == 4
            and isinstance(node[0][3], dict) and set(node[0][3]) <= {"y", "name"} and "y" in node[0][3]):
        raise UnsupportedError(f"{where}: a TFOpLambda call must read one tensor and a 'y' argument. "
                               f"Received {node!r:.160}.")
    x = _ref(node[0][:3], where)
    y = node[0][3]["y"]
    tensor = {"class_name": "__keras_tensor__", "config": {"keras_history": list(x)}}
    if isinstance(y, list):
        y = {"class_name": "__keras_tensor__", "config": {"keras_history": list(_ref(y, where))}}
    return {"args": [tensor, y], "kwargs": {}}


def _ref_list(obj, what: str) -> list[tuple[str, int, int]]:
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, list) and len(obj) >= 3 and isinstance(obj[0], str):
        return [_ref(obj, what)]
    if not isinstance(obj, list) or not obj:
        raise KerasFileError(f"{what} must be a non-empty list of [layer, node, tensor]. Received {obj!r:.120}.")
    return [_ref(o, what) for o in obj]


def _first_node_index(layer_cls: str, layer_config: dict, keras_major: int) -> int:
    """The node index Keras 2 gives a layer's first saved call: 1 for a nested model built from an Input.

    tf-keras's ``_should_skip_first_node``: a nested Sequential whose first layer is an ``InputLayer`` already
    has a node (its own input to its output) when the outer model calls it, and that node is not saved, so the
    saved calls are referred to as nodes 1, 2, … (ConvNeXt's stem and downsampling blocks). Keras 3 numbers a
    nested Sequential's calls from 0.
    """
    if keras_major >= 3 or layer_cls != "Sequential":
        return 0
    layers = layer_config.get("layers")
    first = layers[0] if isinstance(layers, list) and layers else None
    return int(isinstance(first, dict) and first.get("class_name") == "InputLayer")


def parse_graph(model_config: dict, path: str, supported: Collection[str], keras_major: int = 3):
    """(layer entries, calls, input refs, output refs, model class) of a Sequential or functional config.

    Layer entries are ``(name, class_name, config)``; calls ``(name, node_index, ref or list of refs)``; refs
    ``(layer_name, node_index, tensor_index)``. ``supported`` holds the layer classes that can be built;
    ``keras_major`` is the writer's Keras version (2 for tf-keras: see :func:`_first_node_index`).
    Linear in the size of the config.
    """
    cls = model_config.get("class_name")
    config = model_config.get("config")
    if cls not in _MODEL_CLASSES:
        if isinstance(cls, str) and (model_config.get("registered_name") or model_config.get("module", "keras")
                                     not in (None, "keras", "keras.models", "keras.src.models.functional",
                                             "keras.src.models.sequential")):
            raise UnsupportedError(f"{path}: the model is a custom class {cls!r}; only Sequential and functional "
                                   "models are converted (cnnkit never runs code from a file).")
        raise UnsupportedError(f"{path}: the model class {cls!r} is not supported. Expected one of {_MODEL_CLASSES}.")
    if cls == "Sequential" and isinstance(config, list):  # very old Keras 2
        config = {"layers": config}
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise KerasFileError(f"{path}: the model config has no 'layers' list.")
    entries = config["layers"]
    if cls == "Sequential":
        return _sequential_graph(config, entries, path, supported)
    layers, calls = [], []
    names = set()
    for i, entry in enumerate(entries):
        layer_cls, layer_config = _check_safe(entry, f"{path}: layer {i}", supported)
        name = entry.get("name", layer_config.get("name"))
        if not isinstance(name, str) or not name or name in names:
            raise KerasFileError(f"{path}: layer {i} needs a unique, non-empty name. Received {name!r}.")
        names.add(name)
        layers.append((name, layer_cls, layer_config))
        nodes = entry.get("inbound_nodes", [])
        if not isinstance(nodes, list):
            raise KerasFileError(f"{path}: inbound_nodes of layer {name!r} must be a list.")
        if layer_cls == "InputLayer":
            continue
        if layer_cls in _OPS and entry.get("module") is None and any(
                isinstance(n, dict) and isinstance(n.get("args"), list) and len(n["args"]) == 2 for n in nodes):
            layer_cls = f"ops.{layer_cls}"  # a keras.ops call saved by Keras 3 to a legacy .h5 (no module)
            layers[-1] = (name, layer_cls, layer_config)
        if layer_cls.startswith("ops.") and layer_cls_raw(entry) == "TFOpLambda":
            nodes = [_tf_op_node(n, f"{path}: layer {name!r}") for n in nodes]
        op = layer_cls.startswith("ops.")
        constants = set()
        for index, node in enumerate(nodes, start=_first_node_index(layer_cls, layer_config, keras_major)):
            structure = _parse_node(node, f"{path}: layer {name!r}", op)
            if op and isinstance(structure, tuple) and len(structure) == 2 and isinstance(structure[1], tuple):
                structure, constant = structure
                constants.add(constant)
                layers[-1] = (name, layer_cls, {**layer_config, "constant": constant[0],
                                                "tensor_first": constant[1]})
            calls.append((name, index, structure))
        if len(constants) > 1:
            raise UnsupportedError(f"{path}: operation {name!r} is called with different constants {constants}.")
    inputs = _ref_list(config.get("input_layers"), f"{path}: input_layers")
    outputs = _ref_list(config.get("output_layers"), f"{path}: output_layers")
    return layers, calls, inputs, outputs, cls


def _sequential_graph(config: dict, entries: list, path: str, supported: Collection[str]):
    layers, calls = [], []
    names: set[str] = set()
    prev = None
    for i, entry in enumerate(entries):
        layer_cls, layer_config = _check_safe(entry, f"{path}: layer {i}", supported)
        name = layer_config.get("name", f"layer_{i}")
        if not isinstance(name, str) or not name or name in names:
            raise KerasFileError(f"{path}: layer {i} needs a unique, non-empty name. Received {name!r}.")
        names.add(name)
        if prev is None:
            if layer_cls != "InputLayer":
                # Keras 2 keeps the input shape on the first layer; Keras 3 may keep it on the model.
                source = layer_config if any(layer_config.get(k) is not None for k in (
                    "batch_input_shape", "batch_shape")) else {"batch_shape": config.get("build_input_shape")}
                if source.get("batch_shape") is None and source is not layer_config:
                    raise KerasFileError(f"{path}: the Sequential model does not record its input shape.")
                layers.append(("input", "InputLayer", source))
                names.add("input")
                prev = ("input", 0, 0)
            else:
                layers.append((name, layer_cls, layer_config))
                prev = (name, 0, 0)
                continue
        elif layer_cls == "InputLayer":
            raise KerasFileError(f"{path}: an InputLayer may only come first in a Sequential model.")
        layers.append((name, layer_cls, layer_config))
        calls.append((name, 0, prev))
        prev = (name, 0, 0)
    if prev is None or len(layers) < 2:
        raise KerasFileError(f"{path}: the Sequential model has no layers.")
    return layers, calls, [(layers[0][0], 0, 0)], [prev], "Sequential"


def call_refs(structure) -> list[Ref]:
    """The refs one call reads: its single ref, or its list of refs."""
    return [tuple(r) for r in structure] if isinstance(structure, list) else [tuple(structure)]


def topological_order(calls: Sequence[tuple], available: Collection[Ref]) -> tuple[list[int], list[int]]:
    """Indices of ``calls`` in an order where each runs after the calls that produce its inputs.

    A call ``(name, node_index, structure)`` produces the tensor ``(name, node_index, 0)``; ``available``
    holds the tensors there from the start (the input layers'). Kahn's algorithm over a heap of call
    indices: O((calls + references) · log calls), where the old pass-until-no-progress loop was quadratic
    (16,000 layers listed in reverse took minutes).

    Returns:
        ``(order, stuck)``: the calls that can run, in order, and those that never can (they wait for a
        tensor that no call produces: a cycle, or a reference to a missing layer or node).
    """
    waiting: dict[Ref, list[int]] = {}
    missing = [0] * len(calls)
    ready: list[int] = []
    have = set(available)
    for i, (_, _, structure) in enumerate(calls):
        for ref in set(call_refs(structure)):
            if ref not in have:
                waiting.setdefault(ref, []).append(i)
                missing[i] += 1
        if not missing[i]:
            ready.append(i)
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in waiting.pop((calls[i][0], calls[i][1], 0), ()):
            missing[j] -= 1
            if not missing[j]:
                heapq.heappush(ready, j)
    stuck = [i for i, m in enumerate(missing) if m]
    return order, stuck
