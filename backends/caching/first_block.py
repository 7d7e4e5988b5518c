"""First-block cache (ParaAttention / diffusers' FirstBlockCache idea) for transformer denoisers.

The first transformer block always runs. When its residual (output - input) has changed by less than
`threshold` (rel-L1) since the last full step, every later block is skipped: each adds its residual from
the last full step to its input (the sum telescopes to the whole stack's cached residual). At most
`max_skips` consecutive steps are skipped; step 0 always runs. `threshold = 0` never skips.
"""
from __future__ import annotations

from pydantic import Field

from backends.caching.common import FirstBlockDecidesRuntime, needs_transformer_blocks, rel_l1, transformer_blocks
from backends.technique import STAGE_CACHE, Handle, TechniqueConfig, register


class FirstBlockCacheConfig(TechniqueConfig):
    type = "first_block_cache"
    version = 1
    stage = STAGE_CACHE

    threshold: float = Field(0.08, ge=0.0, le=2.0)
    max_skips: int = Field(3, ge=1, le=100)


class _FirstBlockCache(FirstBlockDecidesRuntime):
    hook_name = "planner.first_block_cache"

    def __init__(self, pipe, config: FirstBlockCacheConfig) -> None:
        super().__init__(pipe, transformer_blocks(pipe))
        self.config = config   # state: slot -> {"ref": first residual at last full step, "skips": n}

    def after_compute(self, k: int, inputs: dict, residual) -> None:
        if k != 0:
            return
        state = self.state.setdefault(self.slot, {"ref": None, "skips": 0})
        main = None if residual is None else residual[-1]
        ref = state["ref"]
        skip = (self.step > 0 and main is not None and ref is not None and ref.shape == main.shape
                and state["skips"] < self.config.max_skips and rel_l1(main, ref) < self.config.threshold)
        if not skip:
            state["ref"] = main
        self.record(state, skip)


@register(FirstBlockCacheConfig, applicable=needs_transformer_blocks)
def apply_first_block_cache(pipe, config: FirstBlockCacheConfig) -> Handle:
    runtime = _FirstBlockCache(pipe, config)
    return Handle(config, runtime.remove, info={"runtime": runtime})
