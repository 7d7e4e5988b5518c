"""Precision / quantisation: the modes this device supports, and which layer groups stay in full precision.

Left out on their own: fp16 on CPU (no fast kernels: slower than fp32), fp8 without a CUDA GPU of
compute capability >= 8.9, torchao modes without torchao; see `backends.quantization.mode_unsupported`.
Parameter names are fixed (`quant.mode`, `quant.exclude`): a study reads the same on every machine. The
choices of `quant.mode` are this device's modes; workers of one study share their device kind and name,
and their supported modes (checked when they join).
"""
from __future__ import annotations

from backends.quantization import QuantizeConfig, supported_modes
from ground.anatomy import anatomy_of

EXCLUDE_PRESETS = {
    "none": (),
    "io": ("io",),
    "ends": ("first_block", "last_block"),
    "ends_io": ("first_block", "last_block", "io"),
    "attention": ("attention",),
}
MODE_PARAM, EXCLUDE_PARAM = "quant.mode", "quant.exclude"


def available_modes(pipe) -> list[str]:
    """The precision modes other than fp32 that this pipeline's device supports."""
    return [m for m in supported_modes(anatomy_of(pipe).device) if m != "fp32"]


def suggest_quantization(trial, profile, pipe, *, whole_graph: bool = False) -> QuantizeConfig | None:
    """`whole_graph`: the trial compiles the whole denoiser, which excluded groups would break up."""
    modes = available_modes(pipe)
    if not modes:
        return None
    mode = trial.suggest_categorical(MODE_PARAM, ["none", *modes])
    if mode == "none":
        return None
    preset = "none" if whole_graph else trial.suggest_categorical(EXCLUDE_PARAM, list(EXCLUDE_PRESETS))
    return QuantizeConfig(mode=mode, exclude=EXCLUDE_PRESETS[preset])
