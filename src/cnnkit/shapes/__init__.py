"""Shape arithmetic: output sizes, padding amounts and receptive fields (pure integer functions)."""

from cnnkit.shapes.arithmetic import (
    PADDING_MODES,
    ReceptiveField,
    conv_output_size,
    conv_transpose_output_size,
    describe_conv_size,
    describe_pool_size,
    padding_amounts,
    pool_output_size,
    receptive_fields,
    tf_same_padding,
)

__all__ = [
    "PADDING_MODES",
    "ReceptiveField",
    "conv_output_size",
    "conv_transpose_output_size",
    "describe_conv_size",
    "describe_pool_size",
    "padding_amounts",
    "pool_output_size",
    "receptive_fields",
    "tf_same_padding",
]
