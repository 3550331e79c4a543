"""Variable-size batches with exact masks: padding, bucketing, masked execution, missing-data masks."""

from cnnkit.masking.batch import IGNORE_INDEX, PaddedBatch, collate_padded, extent_mask, pad_batch

__all__ = ["IGNORE_INDEX", "PaddedBatch", "collate_padded", "extent_mask", "pad_batch"]
