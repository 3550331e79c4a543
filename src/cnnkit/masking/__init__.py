"""Variable-size batches with exact masks: padding, bucketing, masked execution, missing-data masks."""

from cnnkit.masking.batch import IGNORE_INDEX, PaddedBatch, collate_padded, extent_mask, pad_batch
from cnnkit.masking.masked import MaskedModel, masked
from cnnkit.masking.norm import masked_batch_norm, masked_group_norm

__all__ = [
    "IGNORE_INDEX",
    "MaskedModel",
    "PaddedBatch",
    "collate_padded",
    "extent_mask",
    "masked",
    "masked_batch_norm",
    "masked_group_norm",
    "pad_batch",
]
