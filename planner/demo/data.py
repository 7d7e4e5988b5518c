"""scikit-learn's bundled digits as a 16x16, [-1, 1] image set with a fixed, seeded split.

The held-out part never touches training: it is the FID reference set of the demo models.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0
HELD_OUT = 360  # 20% of the 1,797 digits
RESOLUTION = 16
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # index of the "no label" embedding used for classifier-free guidance


def _load() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [0, 1], 8x8
    images = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    return images, torch.tensor(bunch.target, dtype=torch.long)


def digits_split(part: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images in [-1, 1] of shape (N, 1, 16, 16), labels) for part "train" or "held_out"."""
    if part not in ("train", "held_out"):
        raise ValueError(f"part must be 'train' or 'held_out', got {part!r}")
    images, labels = _load()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    idx = order[:HELD_OUT] if part == "held_out" else order[HELD_OUT:]
    idx = torch.as_tensor(np.sort(idx))
    return images[idx], labels[idx]
