"""Pixel-wise losses (cross-entropy, focal, soft Dice) and class weights estimated from label maps.

All losses take logits (N, C, *spatial) or a :class:`~cnnkit.PaddedBatch`, integer or one-hot targets,
class and sample weights, and leave out ignored, unlabelled and padded pixels; see :mod:`cnnkit.losses.pixel`.
"""

from cnnkit.losses.class_weights import CLASS_WEIGHT_METHODS, class_weights
from cnnkit.losses.pixel import DiceLoss, FocalLoss, PixelCrossEntropy, dice_loss, focal_loss, pixel_cross_entropy

__all__ = [
    "CLASS_WEIGHT_METHODS",
    "DiceLoss",
    "FocalLoss",
    "PixelCrossEntropy",
    "class_weights",
    "dice_loss",
    "focal_loss",
    "pixel_cross_entropy",
]
