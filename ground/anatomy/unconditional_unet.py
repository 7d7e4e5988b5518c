"""Pixel-space unconditional UNets (DDPMPipeline, DDIMPipeline): no conditioning, no guidance."""
from __future__ import annotations

from ground.anatomy.base import Anatomy, register_adapter


@register_adapter
class UnconditionalUNetAnatomy(Anatomy):
    family = "unconditional-unet"
    priority = 10

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__ in ("DDPMPipeline", "DDIMPipeline")

    @property
    def conditioning(self) -> str:
        return "unconditional"
