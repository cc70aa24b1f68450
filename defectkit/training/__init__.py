"""Training utilities shared by every trainable head: the Lightning loop and in-memory image datasets.

Example:
    >>> from defectkit.training import ImageTensorDataset, fit_head
"""

from defectkit.training.loop import HeadModule, ImageTensorDataset, fit_head

__all__ = ["HeadModule", "ImageTensorDataset", "fit_head"]
