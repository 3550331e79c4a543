"""The conversion report: what :func:`cnnkit.keras.load` did for each layer, and the model's totals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cnnkit.keras.model import KerasModel, format_shape

__all__ = ["ConversionReport", "LayerConversion", "LoadedModel"]

Shape = tuple  # Keras shape without the batch dimension; entries int or None

# --- the report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerConversion:
    """What was done for one Keras layer.

    Attributes:
        name: The Keras layer name (also its key in :attr:`KerasModel.layers`, made a valid attribute).
        keras_class: The Keras ``class_name``.
        module: The PyTorch module built for it, as its repr's first line.
        input_shapes / output_shape: Keras shapes (channels last, ``None`` = any, batch left out).
        keras_weights / torch_weights: Name → shape on both sides of the layout conversion.
        notes: Every semantic or layout conversion made, in plain words.
        num_params: Parameters of the module (buffers such as BatchNorm's running statistics not counted).
        keras_trainable / keras_non_trainable: Keras's own count of the layer's stored values, as
            ``model.summary()`` gives it (moving statistics and a Normalization's mean, variance and count
            are non-trainable, and every weight of a layer saved with ``trainable=False``).
    """

    name: str
    keras_class: str
    module: str
    input_shapes: tuple[Shape, ...]
    output_shape: Shape
    keras_weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    torch_weights: dict[str, tuple[int, ...]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    num_params: int = 0
    keras_trainable: int = 0
    keras_non_trainable: int = 0


@dataclass(frozen=True)
class ConversionReport:
    """Every layer converted, with the layout conversions made; ``str(report)`` shows them as text."""

    path: str
    format: str
    keras_version: str
    model_class: str
    layers: tuple[LayerConversion, ...]
    input_shapes: tuple[Shape, ...]
    output_shapes: tuple[Shape, ...]
    channels_last: bool

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    @property
    def keras_trainable(self) -> int:
        return sum(layer.keras_trainable for layer in self.layers)

    @property
    def keras_non_trainable(self) -> int:
        return sum(layer.keras_non_trainable for layer in self.layers)

    @property
    def keras_total(self) -> int:
        return self.keras_trainable + self.keras_non_trainable

    def totals(self) -> list[str]:
        """Keras's totals beside torch's, and why they differ (one line each)."""
        lines = [f"  Keras (model.summary()): trainable {self.keras_trainable:,}, non-trainable "
                 f"{self.keras_non_trainable:,}, total {self.keras_total:,}",
                 f"  torch: parameters {self.num_params:,} (BatchNorm's running statistics and other buffers "
                 "are not parameters)"]
        if self.num_params != self.keras_total:
            extra = self.num_params - self.keras_total
            why = []
            stats = [layer for layer in self.layers if layer.keras_non_trainable]
            if stats:
                why.append(f"Keras counts {self.keras_non_trainable:,} non-trainable values (moving statistics, "
                           f"a Normalization's mean/variance/count, frozen layers) in {len(stats)} layers; torch keeps "
                           "moving statistics as buffers, not parameters")
            doubled = [layer.name for layer in self.layers if layer.keras_class in ("LSTM", "Bidirectional")
                       and layer.num_params > layer.keras_trainable + layer.keras_non_trainable]
            if doubled:
                why.append("torch's LSTM keeps two biases (bias_ih, bias_hh) where Keras keeps one, in "
                           + ", ".join(doubled[:5]))
            frozen = sum(layer.keras_non_trainable for layer in self.layers if layer.num_params
                         and layer.keras_trainable == 0)
            if frozen:
                why.append(f"{frozen:,} values of layers saved with trainable=False are torch parameters")
            lines.append(f"  they differ by {extra:+,} parameters: " + ("; ".join(why) or "see the layers") + ".")
        return lines

    def __str__(self) -> str:
        fmt = format_shape
        kind = {"keras": "Keras 3 archive", "h5": "legacy HDF5"}[self.format]
        io = "channels-last" if self.channels_last else "channels-first (PyTorch)"
        lines = [
            f"{self.path}: {self.model_class} from a {kind}, Keras {self.keras_version}",
            f"  inputs  (Keras) {', '.join(fmt(s) for s in self.input_shapes)}",
            f"  outputs (Keras) {', '.join(fmt(s) for s in self.output_shapes)}",
            f"  the module takes and returns {io} tensors; parameters: {self.num_params:,}",
            *self.totals(),
        ]
        for layer in self.layers:
            lines.append(f"- {layer.name} ({layer.keras_class}) → {layer.module}  output {fmt(layer.output_shape)}")
            if layer.keras_weights:
                keras = ", ".join(f"{k} {fmt(v)}" for k, v in layer.keras_weights.items())
                torch_side = ", ".join(f"{k} {fmt(v)}" for k, v in layer.torch_weights.items())
                lines.append(f"    Keras {keras}  →  torch {torch_side}")
            lines += [f"    {note}" for note in layer.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load` returns: the module and the report. Unpacks as ``module, report = load(path)``."""

    module: KerasModel
    report: ConversionReport

    def __iter__(self) -> Iterator:
        return iter((self.module, self.report))

