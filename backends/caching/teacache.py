"""TeaCache (Liu et al. 2024) for transformer denoisers, calibrated from the profile.

Indicator: the rel-L1 change, from the previous step, of the first block's timestep-modulated input, as
the pipeline's anatomy defines it (`watch_modulated_input`: the output of `norm1`, which is AdaLayerNormZero
in DiT, SD3 and Flux; PixArt's modulation computed from its `scale_shift_table`): the very quantity the
profiler fits its polynomial on, from one definition. It is rescaled by the polynomial the profiler fitted from this
indicator to the change of the model output (`coefficients`, highest degree first, `numpy.polyval`
convention; no profile: identity), and accumulated. While the accumulated value stays below
`threshold`, later blocks are skipped with their cached residuals; when it crosses, the step runs in full
and the accumulator restarts. The first and last steps always run, and at most `max_skips` consecutive
steps are skipped. `threshold = 0` never skips.

Deviation from the paper: the first block itself runs on every step (its modulated input is observed
with a forward hook while it runs, so no architecture-specific code recomputes the modulation); the saving
is therefore (L-1)/L of the stack per skipped step.
"""
from __future__ import annotations

import numpy as np
from pydantic import Field

from backends.caching.common import FirstBlockDecidesRuntime, needs_transformer_blocks, rel_l1, transformer_blocks
from backends.technique import STAGE_CACHE, Handle, TechniqueConfig, register


class TeaCacheConfig(TechniqueConfig):
    type = "teacache"
    version = 1
    stage = STAGE_CACHE

    threshold: float = Field(0.1, ge=0.0, le=10.0)
    max_skips: int = Field(3, ge=1, le=100)
    coefficients: list[float] | None = Field(None, min_length=1, max_length=8)


class _TeaCache(FirstBlockDecidesRuntime):
    hook_name = "planner.teacache"

    def __init__(self, pipe, config: TeaCacheConfig) -> None:
        super().__init__(pipe, transformer_blocks(pipe))
        self.config = config
        self.poly = None if config.coefficients is None else np.asarray(config.coefficients, dtype=np.float64)
        self._captured = None
        self.source, undo = self.anatomy.watch_modulated_input(self._capture, self.hook_name)
        self._undo.append(undo)

    def _capture(self, tensor) -> None:
        self._captured = tensor

    def on_denoiser_call(self, args, kwargs) -> None:
        super().on_denoiser_call(args, kwargs)
        self._captured = None

    def rescale(self, x: float) -> float:
        return x if self.poly is None else max(float(np.polyval(self.poly, x)), 0.0)

    def after_compute(self, k: int, inputs: dict, residual) -> None:
        if k != 0:
            return
        indicator = self._captured if self._captured is not None else inputs.get("h")
        self._captured = None
        state = self.state.setdefault(self.slot, {"prev": None, "acc": 0.0, "skips": 0})
        prev = state["prev"]
        state["prev"] = indicator
        last = self.tracker.num_steps - 1
        skip = False
        if (self.step > 0 and self.step != last and prev is not None and indicator is not None
                and prev.shape == indicator.shape and self.config.threshold > 0):
            state["acc"] += self.rescale(rel_l1(indicator, prev))
            skip = state["acc"] < self.config.threshold and state["skips"] < self.config.max_skips
        if not skip:
            state["acc"] = 0.0
        self.record(state, skip)


@register(TeaCacheConfig, applicable=needs_transformer_blocks)
def apply_teacache(pipe, config: TeaCacheConfig) -> Handle:
    runtime = _TeaCache(pipe, config)
    return Handle(config, runtime.remove, info={"runtime": runtime})
