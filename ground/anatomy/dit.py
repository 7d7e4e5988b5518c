"""DiT (class-conditional ImageNet-style transformer): [cond; uncond] batches, null class 1000.

DiTPipeline hard-codes the unconditional label as 1000 and concatenates it after the real labels.
"""
from __future__ import annotations

from ground.anatomy.base import Anatomy, CFGLayout, register_adapter

DIT_NULL_LABEL = 1000


@register_adapter
class DiTAnatomy(Anatomy):
    family = "dit"
    priority = 10
    cfg_layout = CFGLayout(cond_index=0, null_class=DIT_NULL_LABEL)

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ == "DiTPipeline"

    @property
    def conditioning(self) -> str:
        return "class"

    @property
    def num_classes(self) -> int | None:
        labels = getattr(self.pipe, "labels", None)  # id2label, inverted by the pipeline
        if labels:
            return len(set(labels.values()))
        n = getattr(getattr(self.denoiser, "config", None), "num_embeds_ada_norm", None)
        return int(n) if n else None
