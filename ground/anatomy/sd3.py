"""Stable Diffusion 3: SD3Transformer2DModel (joint blocks return (encoder_hidden_states, hidden_states)),
flow matching, [uncond; cond] batches."""
from __future__ import annotations

from ground.anatomy.base import Anatomy, CFGLayout, register_adapter


@register_adapter
class SD3Anatomy(Anatomy):
    family = "sd3"
    priority = 10
    cfg_layout = CFGLayout(cond_index=1)

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__.startswith("StableDiffusion3")
