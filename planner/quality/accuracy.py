"""Label accuracy of generated digits: does the digits classifier read the digit that was asked for?

Defined for class-conditional models whose conditions are digit labels 0-9 and whose images are digits
(the demo models); reported in percent.
"""
from __future__ import annotations

import numpy as np
import torch

from planner.errors import PlannerError
from planner.quality.bootstrap import DEFAULT_BOOT, DEFAULT_SEED, MetricResult, mean_metric


def labels_of(conditions) -> torch.Tensor:
    try:
        labels = torch.as_tensor([int(c) for c in conditions], dtype=torch.long)
    except (TypeError, ValueError):
        raise PlannerError("acc needs class-label conditions (digit labels 0-9); this model's conditions "
                           "are not class labels") from None
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise PlannerError("acc needs digit labels 0-9; this model's class labels go beyond that")
    return labels


def per_image_correct(images: torch.Tensor, conditions, classifier=None) -> np.ndarray:
    """1.0 where the digits net's prediction equals the requested label, else 0.0."""
    from planner.quality.features import DigitsFeatures

    labels = labels_of(conditions)
    if len(labels) != len(images):
        raise PlannerError(f"{len(images)} images but {len(labels)} conditions")
    classifier = classifier or DigitsFeatures()
    pred = classifier.logits(images).argmax(1)
    return (pred == labels).double().numpy()


def accuracy(images: torch.Tensor, conditions, classifier=None, n_boot: int = DEFAULT_BOOT,
             seed: int = DEFAULT_SEED) -> MetricResult:
    return mean_metric("acc", 100.0 * per_image_correct(images, conditions, classifier), n_boot, seed)
