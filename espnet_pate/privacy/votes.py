"""Vote histograms: building them from teachers' outputs, and the plurality class.

A query's histogram has one count per class (PRIVACY.md, "PATE vote aggregation"). Hard votes: each teacher
adds 1 to the class it predicts. Soft votes: each teacher adds its posterior vector, so a histogram still sums
to the number of teachers and one teacher's change still moves it by at most 2 in L1 and sqrt(2) in L2; every
bound here holds for both.

Ties: the plurality class is the lowest index among the maxima, everywhere in this package (the mechanisms'
noisy argmax and the accountants' ``i*``). ``np.argmax`` returns the first maximum, which is that rule.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_histograms", "hard_votes", "plurality", "soft_votes"]


def as_histograms(votes) -> np.ndarray:
    """Votes as a float array [..., classes] with at least one query axis ([classes] becomes [1, classes])."""
    arr = np.asarray(votes, dtype=float)
    if arr.ndim == 0 or arr.shape[-1] < 1:
        raise ValueError(f"vote histograms need a class axis, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("vote counts must be finite and non-negative")
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


def plurality(votes) -> np.ndarray:
    """Index of the largest count along the last axis; ties go to the lowest index."""
    return np.argmax(np.asarray(votes), axis=-1)


def hard_votes(teacher_labels, num_classes: int) -> np.ndarray:
    """Histogram [..., num_classes] of teacher labels [..., K] (integers in [0, num_classes))."""
    labels = np.asarray(teacher_labels)
    if labels.ndim == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("teacher labels must be an integer array [..., teachers]")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"teacher labels must lie in [0, {num_classes})")
    flat = labels.reshape(-1, labels.shape[-1])
    offsets = np.arange(flat.shape[0])[:, None] * num_classes
    counts = np.bincount((flat + offsets).ravel(), minlength=flat.shape[0] * num_classes)
    return counts.reshape(labels.shape[:-1] + (num_classes,)).astype(float)


def soft_votes(teacher_posteriors) -> np.ndarray:
    """Summed posteriors: [..., K, classes] -> [..., classes]. Each teacher's row must be a distribution."""
    post = np.asarray(teacher_posteriors, dtype=float)
    if post.ndim < 2:
        raise ValueError("teacher posteriors must be an array [..., teachers, classes]")
    if np.any(post < 0) or not np.allclose(post.sum(axis=-1), 1.0, atol=1e-6):
        # A teacher contributing more than one unit of mass would break the sensitivity argument.
        raise ValueError("each teacher's posterior must be non-negative and sum to 1")
    return post.sum(axis=-2)
