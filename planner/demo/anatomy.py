"""The demo pipelines as the planner sees them: class-conditional 16x16 digits, [cond; uncond] batches
with the null class `NULL_CLASS`, the digits feature network for FID, the held-out digits as the FID
reference set, and the digits classifier for label accuracy."""
from __future__ import annotations

import torch

from ground.anatomy import Anatomy, CFGLayout, register_adapter
from planner.demo.data import NULL_CLASS, NUM_CLASSES


@register_adapter
class DigitsAnatomy(Anatomy):
    family = "digits"
    priority = 20
    cfg_layout = CFGLayout(cond_index=0, null_class=NULL_CLASS)
    default_features = "digits"

    @classmethod
    def matches(cls, pipe) -> bool:
        from planner.demo.pipeline import DigitsPipeline

        return isinstance(pipe, DigitsPipeline)

    @property
    def conditioning(self) -> str:
        return "class"

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def reference_images(self) -> torch.Tensor:
        from planner.demo.data import digits_split

        images, _ = digits_split("held_out")
        return (images + 1) / 2

    def label_classifier(self):
        from planner.demo.features import DigitsFeatures

        return DigitsFeatures().logits
