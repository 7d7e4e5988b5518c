"""Demo pipelines for backend tests: trained weights when shipped, else the same architectures at random init."""
from __future__ import annotations

import torch

from ground.errors import PlannerError


def demo_pipeline(name: str):
    from planner.models import load_pipeline

    try:
        return load_pipeline(name)
    except PlannerError:
        pass
    from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DModel

    from planner.demo.architectures import dit_config, scheduler_config, unet_config
    from planner.demo.pipeline import DigitsDiTPipeline, DigitsUNetPipeline

    torch.manual_seed(0)
    if name == "digits-unet":
        pipe = DigitsUNetPipeline(UNet2DModel(**unet_config()), DDIMScheduler(**scheduler_config()))
    elif name == "digits-dit":
        pipe = DigitsDiTPipeline(DiTTransformer2DModel(**dit_config()), DDIMScheduler(**scheduler_config()))
    else:
        raise ValueError(name)
    pipe.set_progress_bar_config(disable=True)
    pipe.denoiser.eval()
    return pipe.to("cpu")


def sd_like_unet(sample_size: int = 16, cross_dim: int = 32):
    """A small SD-like UNet2DConditionModel (BasicTransformerBlocks at two levels), random init."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_dim,
        attention_head_dim=8, norm_num_groups=8,
    ).eval()


class UNetHolder:
    """Minimal 'pipeline' exposing a denoiser as `.unet` (what the techniques look up)."""

    def __init__(self, unet) -> None:
        self.unet = unet


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))
