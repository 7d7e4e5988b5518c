"""FLUX.1: FluxTransformer2DModel, double-stream blocks then single-stream blocks, flow matching.

Guidance is distilled into the model (`guidance_embeds`) or, with `true_cfg_scale`, run as separate
denoiser calls: no batched CFG. Without `guidance_embeds` (FLUX.1-schnell) the model is also
timestep-distilled to a few steps.
"""
from __future__ import annotations

from ground.anatomy.base import Anatomy, register_adapter


@register_adapter
class FluxAnatomy(Anatomy):
    family = "flux"
    priority = 10

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__.startswith("Flux") and \
            type(getattr(pipe, "transformer", None)).__name__ == "FluxTransformer2DModel"

    def distilled(self) -> str | None:
        reason = super().distilled()
        config = getattr(self.denoiser, "config", None)
        if reason is None and config is not None and config.get("guidance_embeds") is False:
            reason = "its transformer has no guidance embedding (FLUX.1-schnell: timestep-distilled to a few steps)"
        return reason
