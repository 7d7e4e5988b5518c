"""TaylorSeer-style forecasting (Liu et al. 2025): extrapolate cached features from the last full steps.

Full steps are every `interval`-th step from 0 (and the first `warmup` steps). Between them nothing deep
runs: with `order = 1` each cached feature f is forecast to first order from its values at the last two
full steps s0 < s1, f(s) = f(s1) + (f(s1) - f(s0)) * (s - s1) / (s1 - s0); `order = 0` reuses f(s1)
(plain interval caching). Until two full steps exist, order 1 falls back to order 0.

Features: for transformer denoisers, each block's residual (output - input), added to the block's current
input; for UNets (no residual chain), the denoiser's output itself. The bound on consecutive skips is
`interval - 1`. `interval = 1` never skips.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from backends.caching.common import (BlockReuseRuntime, CacheRuntime, is_unet, needs_denoiser,
                                     transformer_blocks)
from backends.technique import STAGE_CACHE, Handle, TechniqueConfig, register
from ground.anatomy import denoiser_of


class TaylorSeerConfig(TechniqueConfig):
    type = "taylorseer"
    version = 1
    stage = STAGE_CACHE

    interval: int = Field(3, ge=1, le=100)
    order: Literal[0, 1] = 1
    warmup: int = Field(2, ge=1, le=100)


def _applicable(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    denoiser = denoiser_of(pipe)
    if not transformer_blocks(pipe) and not is_unet(pipe):
        return f"{type(denoiser).__name__} has neither transformer blocks nor a UNet structure"
    return None


def _forecast(entries: list, step: int, order: int):
    s1, f1 = entries[-1]
    if order == 0 or len(entries) < 2:
        return f1
    s0, f0 = entries[-2]
    w = (step - s1) / (s1 - s0)
    return tuple(None if a is None else a + (a - b) * w for a, b in zip(f1, f0))


def _is_full(config: TaylorSeerConfig, step: int) -> bool:
    return step < config.warmup or step % config.interval == 0


class _BlockTaylorSeer(BlockReuseRuntime):
    hook_name = "planner.taylorseer"
    keep = 2

    def __init__(self, pipe, config: TaylorSeerConfig) -> None:
        super().__init__(pipe, transformer_blocks(pipe))
        self.config = config

    def on_denoiser_call(self, args, kwargs) -> None:
        self.stats["computed" if _is_full(self.config, self.step) else "reused"] += 1

    def want_reuse(self, k: int) -> bool:
        return not _is_full(self.config, self.step)

    def reused_residual(self, k: int, entries: list):
        return _forecast(entries, self.step, self.config.order)


def _main_output(out) -> torch.Tensor | None:
    if torch.is_tensor(out):
        return out
    if isinstance(out, tuple) and out and torch.is_tensor(out[0]):
        return out[0]
    sample = getattr(out, "sample", None)
    return sample if torch.is_tensor(sample) else None


def _like(template, tensor: torch.Tensor):
    if torch.is_tensor(template):
        return tensor
    if isinstance(template, tuple):
        return (tensor,) + tuple(template[1:])
    return type(template)(sample=tensor)


class _OutputTaylorSeer(CacheRuntime):
    """UNets: forecast the denoiser output itself on non-full steps (the whole UNet is skipped)."""

    hook_name = "planner.taylorseer"

    def __init__(self, pipe, config: TaylorSeerConfig) -> None:
        super().__init__(pipe)
        self.config = config
        self.history: dict[int, list] = {}
        self.template: dict[int, object] = {}

    def reset(self) -> None:
        self.history.clear()
        self.template.clear()

    def run_denoiser(self, call, args, kwargs):
        sample = kwargs.get("sample", args[0] if args else None)
        entries = self.history.get(self.slot)
        if (not _is_full(self.config, self.step) and entries
                and entries[-1][1][0].shape[:1] == getattr(sample, "shape", (None,))[:1]):
            self.stats["reused"] += 1
            return _like(self.template[self.slot], _forecast(entries, self.step, self.config.order)[0])
        out = call(*args, **kwargs)
        self.stats["computed"] += 1
        main = _main_output(out)
        if main is not None:
            kept = self.history.setdefault(self.slot, [])
            kept.append((self.step, (main,)))
            del kept[:-2]
            self.template[self.slot] = out
        return out


@register(TaylorSeerConfig, applicable=_applicable)
def apply_taylorseer(pipe, config: TaylorSeerConfig) -> Handle:
    if transformer_blocks(pipe):
        runtime: CacheRuntime = _BlockTaylorSeer(pipe, config)
    else:
        runtime = _OutputTaylorSeer(pipe, config)
    return Handle(config, runtime.remove, info={"runtime": runtime, "level": type(runtime).__name__})
