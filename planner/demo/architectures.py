"""Configurations of the shipped demo models and of the digits feature network."""
from __future__ import annotations

import torch
from torch import nn

from planner.demo.data import NUM_CLASSES, RESOLUTION


def unet_config() -> dict:
    # ~2.6 M parameters; attention at the 8x8 level, where most of the semantic mixing happens.
    return dict(
        sample_size=RESOLUTION,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        norm_num_groups=16,
        num_class_embeds=NUM_CLASSES + 1,  # + the null class for classifier-free guidance
    )


def dit_config() -> dict:
    # 8 blocks of width 128 on 2x2 patches: 64 tokens; ~2.4 M parameters.
    return dict(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=1,
        out_channels=1,
        num_layers=8,
        sample_size=RESOLUTION,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,  # the label embedding adds the null class itself
        norm_type="ada_norm_zero",
        norm_num_groups=32,
    )


def scheduler_config() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="epsilon",
        clip_sample=False,
    )


class DigitsFeatureNet(nn.Module):
    """Small CNN classifier of 16x16 digits in [-1, 1].

    `features()` returns the 64-d output of a linear layer *before* any activation, so no dimension
    is dead on real digits and the reference covariance is full rank (needed for a stable FID).
    """

    FEATURE_DIM = 64

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),  # 8x8
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),  # 4x4
            nn.Flatten(),
        )
        self.embed = nn.Linear(64 * 4 * 4, self.FEATURE_DIM)
        self.head = nn.Sequential(nn.GELU(), nn.Dropout(0.2), nn.Linear(self.FEATURE_DIM, NUM_CLASSES))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
