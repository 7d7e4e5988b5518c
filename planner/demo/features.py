"""The digits feature network as an FID/KID feature extractor ("digits"), and its classifier head.

The shipped DigitsFeatureNet gives 64-d pre-activation features of 16x16 grey digits, divided by one
constant so that the held-out digits have mean per-dimension variance 1 (raw features have variance ~35
per dimension, which would put FID on an arbitrary scale). Registered by planner/demo as "digits"; the
default features of the demo models.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ground.errors import PlannerError
from planner.quality.features import FeatureExtractor, file_digest, prepare

DIGITS_WEIGHTS = Path(__file__).resolve().parent / "weights" / "digits-features" / "model.safetensors"


class DigitsFeatures(FeatureExtractor):
    name = "digits"
    channels = 1

    def __init__(self, weights: Path = DIGITS_WEIGHTS) -> None:
        from safetensors.torch import load_file

        from planner.demo.architectures import DigitsFeatureNet
        from planner.demo.data import RESOLUTION

        if not Path(weights).exists():
            raise PlannerError(f"digits feature network weights missing at {weights}; reinstall the package "
                               "or retrain with `python -m planner.demo.train features`")
        self.net = DigitsFeatureNet()
        self.net.load_state_dict(load_file(str(weights)))
        self.net.eval()
        self.input_size = (RESOLUTION, RESOLUTION)
        self.ident = f"digits:{file_digest(Path(weights))}:unitvar"
        self.scale = 1.0
        self.scale = self._unit_variance_scale()

    @torch.no_grad()
    def _unit_variance_scale(self) -> float:
        from planner.demo.data import digits_split

        images, _ = digits_split("held_out")
        feats = self.net.features(images).double()
        return float(feats.var(dim=0).mean().rsqrt())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x * 2 - 1) * self.scale

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        x = prepare(images, self.input_size, self.channels)
        return torch.cat([self.net(x[i:i + self.batch_size] * 2 - 1) for i in range(0, len(x), self.batch_size)])
