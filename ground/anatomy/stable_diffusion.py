"""Stable Diffusion 1.x/2.x and SDXL (text-to-image, img2img, inpainting): UNet2DConditionModel denoisers.

They batch classifier-free guidance as [uncond; cond] in one UNet call while the pipeline's
`do_classifier_free_guidance` property is true.
"""
from __future__ import annotations

from ground.anatomy.base import Anatomy, CFGLayout, register_adapter


@register_adapter
class StableDiffusionAnatomy(Anatomy):
    family = "stable-diffusion"
    priority = 10
    cfg_layout = CFGLayout(cond_index=1)

    @classmethod
    def matches(cls, pipe) -> bool:
        name = type(pipe).__name__
        return name.startswith("StableDiffusion") and not name.startswith("StableDiffusion3") \
            and type(getattr(pipe, "unet", None)).__name__ == "UNet2DConditionModel"
