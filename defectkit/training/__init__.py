"""Training utilities shared by every trainable head: the Lightning loop and in-memory image (and box) datasets.

Example:
    >>> from defectkit.training import ImageTensorDataset, fit_head
"""

from defectkit.training.loop import (
    BEST_EPOCH_CRITERIA,
    BoxTensorDataset,
    EpochAware,
    HeadModule,
    ImageTensorDataset,
    ValidationScore,
    collate_boxes,
    fit_head,
    head_loss,
    resize_with_boxes,
    unmatched_prefixes,
)

__all__ = ["BEST_EPOCH_CRITERIA", "BoxTensorDataset", "EpochAware", "HeadModule", "ImageTensorDataset", "ValidationScore",
           "collate_boxes", "fit_head", "head_loss", "resize_with_boxes", "unmatched_prefixes"]
