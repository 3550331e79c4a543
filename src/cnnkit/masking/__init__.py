"""Variable-size batches with exact masks: padding, bucketing, masked execution, missing-data masks."""

from cnnkit.masking.batch import IGNORE_INDEX, PaddedBatch, collate_padded, extent_mask, pad_batch
from cnnkit.masking.bridge import feature_sizes, from_packed_sequence, to_packed_sequence
from cnnkit.masking.masked_model import (
    MaskedContext,
    MaskedModel,
    masked,
    register_masked_op,
    register_per_sample_module,
)
from cnnkit.masking.norm import masked_batch_norm, masked_group_norm
from cnnkit.masking.partial_conv import PartialConv1d, PartialConv2d, PartialConv3d, partial_conv
from cnnkit.masking.sampler import BucketBatchSampler, padding_fraction, spatial_sizes

__all__ = [
    "IGNORE_INDEX",
    "BucketBatchSampler",
    "MaskedContext",
    "MaskedModel",
    "PaddedBatch",
    "PartialConv1d",
    "PartialConv2d",
    "PartialConv3d",
    "collate_padded",
    "extent_mask",
    "feature_sizes",
    "from_packed_sequence",
    "masked",
    "masked_batch_norm",
    "masked_group_norm",
    "pad_batch",
    "padding_fraction",
    "partial_conv",
    "register_masked_op",
    "register_per_sample_module",
    "spatial_sizes",
    "to_packed_sequence",
]
