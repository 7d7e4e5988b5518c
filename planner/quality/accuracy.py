"""Label accuracy: does a classifier read the class that was asked for? In percent.

Defined for class-conditional models whose pipeline family brings a classifier
(`Anatomy.label_classifier`: the demo's digits classifier); elsewhere the metric is unavailable.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ground.errors import PlannerError
from planner.quality.bootstrap import DEFAULT_BOOT, DEFAULT_SEED, MetricResult, mean_metric

Classifier = Callable[[torch.Tensor], torch.Tensor]   # images (N, C, H, W) in [0, 1] -> logits (N, classes)


def labels_of(conditions) -> torch.Tensor:
    try:
        return torch.as_tensor([int(c) for c in conditions], dtype=torch.long)
    except (TypeError, ValueError):
        raise PlannerError("acc needs class-label conditions; this model's conditions are not class labels") from None


def per_image_correct(images: torch.Tensor, conditions, classifier: Classifier) -> np.ndarray:
    """1.0 where the classifier's prediction equals the requested label, else 0.0."""
    labels = labels_of(conditions)
    if len(labels) != len(images):
        raise PlannerError(f"{len(images)} images but {len(labels)} conditions")
    logits = classifier(images)
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise PlannerError(f"acc: class labels go beyond the classifier's {logits.shape[1]} classes")
    return (logits.argmax(1) == labels).double().numpy()


def accuracy(images: torch.Tensor, conditions, classifier: Classifier, n_boot: int = DEFAULT_BOOT,
             seed: int = DEFAULT_SEED) -> MetricResult:
    return mean_metric("acc", 100.0 * per_image_correct(images, conditions, classifier), n_boot, seed)
