"""DeepCache for UNets (Ma et al. 2023): reuse the deep features, recompute only the shallow path.

With `branch = i`, the shallow path is `down_blocks[:i+1]` and `up_blocks[-(i+1):]`; everything between
(`down_blocks[i+1:]`, `mid_block`, `up_blocks[:-(i+1)]`) is the deep path. On full steps the whole UNet
runs and each deep module's output is kept; on the other steps every deep module returns its kept output
without running, so `up_blocks[-(i+1)]` receives the deep feature of the last full step alongside fresh
skip connections from `down_blocks[:i+1]`. Full steps are every `interval`-th step, or an explicit list
(non-uniform: denser where the profile shows fast change). Step 0 is always full.

Not applicable to transformers: they have no skip branch to feed (use block_schedule, first_block_cache,
teacache or taylorseer there).
"""
from __future__ import annotations

from pydantic import Field, field_validator

from backends.caching.common import CacheRuntime, is_unet, needs_denoiser
from backends.technique import STAGE_CACHE, ConfigError, Handle, TechniqueConfig, register
from ground.anatomy import denoiser_of


class DeepCacheConfig(TechniqueConfig):
    type = "deepcache"
    version = 1
    stage = STAGE_CACHE

    branch: int = Field(0, ge=0, le=16)
    interval: int = Field(3, ge=1, le=1000)
    full_steps: list[int] | None = Field(None, min_length=1, max_length=1000)

    @field_validator("full_steps")
    @classmethod
    def _sorted(cls, value):
        if value is None:
            return value
        if any(b <= a for a, b in zip(value, value[1:])) or value[0] != 0:
            raise ValueError("must be strictly increasing and start at step 0")
        return value


def _applicable(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    denoiser = denoiser_of(pipe)
    if not is_unet(pipe):
        return f"{type(denoiser).__name__} is not a UNet: DeepCache needs down/up blocks with skip branches"
    return None


class _DeepCache(CacheRuntime):
    hook_name = "planner.deepcache"

    def __init__(self, pipe, config: DeepCacheConfig) -> None:
        self.cache: dict[int, dict[int, object]] = {}   # slot -> {deep module index: output}
        self.reusing = False
        super().__init__(pipe)
        self.config = config
        self._full_steps = frozenset(config.full_steps or ())
        unet = self.denoiser
        n = len(unet.down_blocks)
        if config.branch >= n or len(unet.up_blocks) != n:
            self.remove()
            raise ConfigError(f"params.branch: must be below {n} for {type(unet).__name__} "
                              f"with {n} down blocks")
        i = config.branch
        deep = list(unet.down_blocks[i + 1:])
        if getattr(unet, "mid_block", None) is not None:
            deep.append(unet.mid_block)
        deep += list(unet.up_blocks[:n - (i + 1)])
        self.deep = deep
        for k, module in enumerate(deep):
            self.intercept(module, self._make(k))

    def reset(self) -> None:
        self.cache.clear()
        self.reusing = False

    def _full(self, step: int) -> bool:
        if self.config.full_steps is not None:
            return step in self._full_steps
        return step % self.config.interval == 0

    def on_denoiser_call(self, args, kwargs) -> None:
        sample = kwargs.get("sample", args[0] if args else None)
        kept = self.cache.get(self.slot)
        batch = getattr(sample, "shape", (None,))[0]
        self.reusing = (self.step > 0 and not self._full(self.step) and kept is not None
                        and kept.get("batch") == batch and all(k in kept for k in range(len(self.deep))))
        if self.reusing:
            self.stats["reused"] += 1
        else:
            self.stats["computed"] += 1
            self.cache[self.slot] = {"batch": batch}

    def _make(self, k: int):
        def deep_call(call, *args, **kwargs):
            if self.reusing:
                return self.cache[self.slot][k]
            out = call(*args, **kwargs)
            self.cache[self.slot][k] = out
            return out
        return deep_call


@register(DeepCacheConfig, applicable=_applicable)
def apply_deepcache(pipe, config: DeepCacheConfig) -> Handle:
    runtime = _DeepCache(pipe, config)
    return Handle(config, runtime.remove, info={"runtime": runtime, "deep_modules": len(runtime.deep)})
