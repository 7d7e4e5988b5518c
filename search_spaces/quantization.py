"""Precision / quantisation: the modes this device supports, and which layer groups stay in full precision.

Left out on their own: fp16 on CPU (no fast kernels: slower than fp32), fp8 without a CUDA GPU of
compute capability >= 8.9, torchao modes without torchao; see `backends.quantization.mode_unsupported`.
"""
from __future__ import annotations

import torch

from backends.quantization import QuantizeConfig, supported_modes

EXCLUDE_PRESETS = {
    "none": (),
    "io": ("io",),
    "ends": ("first_block", "last_block"),
    "ends_io": ("first_block", "last_block", "io"),
    "attention": ("attention",),
}


def _device(pipe) -> torch.device:
    from planner.models import denoiser_of

    for p in denoiser_of(pipe).parameters():
        return p.device
    return torch.device("cpu")


def available_modes(pipe) -> list[str]:
    """The precision modes other than fp32 that this pipeline's device supports."""
    return [m for m in supported_modes(_device(pipe)) if m != "fp32"]


def mode_param(pipe) -> str:
    """The Optuna parameter name of the mode: one per device and set of modes (a fixed distribution per name)."""
    return f"quant_mode_{_device(pipe).type}_" + "_".join(available_modes(pipe))


def suggest_quantization(trial, profile, pipe) -> QuantizeConfig | None:
    modes = available_modes(pipe)
    if not modes:
        return None
    mode = trial.suggest_categorical(mode_param(pipe), ["none", *modes])
    if mode == "none":
        return None
    preset = trial.suggest_categorical("quant_exclude", list(EXCLUDE_PRESETS))
    return QuantizeConfig(mode=mode, exclude=EXCLUDE_PRESETS[preset])
