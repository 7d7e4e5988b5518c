"""CFG reuse (the FasterCache idea, in its simple sound form) for batched classifier-free guidance.

A batched-CFG pipeline calls the denoiser once per step on [cond; uncond] (DiTPipeline, the demo pipelines)
or [uncond; cond] (the Stable Diffusion family, PixArt, SD3): the pipeline's anatomy says which, and how to
tell a guided call (`ground.anatomy.CFGLayout`). Pipelines that call the denoiser once per branch (Wan,
FLUX's true CFG) have no batched layout: this technique does not apply to them. On full steps the whole batch runs and the guidance delta
eps_cond - eps_uncond is kept. On reuse steps only the conditional half runs (every batch-sized argument
is sliced to it) and the unconditional half is rebuilt as eps_cond - delta. Full steps: the first
`warmup` steps, every `interval`-th step, and the last step, so at most `interval - 1` consecutive steps
reuse. `interval = 1` never reuses. A call whose batch is not a CFG batch runs untouched.
"""
from __future__ import annotations

import torch
from pydantic import Field

from backends.caching.common import CacheRuntime, needs_denoiser
from backends.technique import STAGE_CACHE, Handle, TechniqueConfig, register
from ground.anatomy import anatomy_of


class CFGReuseConfig(TechniqueConfig):
    type = "cfg_reuse"
    version = 1
    stage = STAGE_CACHE

    interval: int = Field(2, ge=1, le=100)
    warmup: int = Field(2, ge=1, le=100)


def _applicable(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    if anatomy_of(pipe).cfg_layout is None:
        return (f"{type(pipe).__name__} is not known to batch classifier-free guidance into one denoiser "
                "call (its adapter declares no CFG layout)")
    return None


def _half(value, batch: int, index: int):
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == 2 * batch:
        return value[index * batch:(index + 1) * batch]
    if isinstance(value, dict):
        return {k: _half(v, batch, index) for k, v in value.items()}
    return value


def _main(out):
    if torch.is_tensor(out):
        return out
    if isinstance(out, tuple):
        return out[0]
    return out.sample


def _like(template_out, tensor):
    if torch.is_tensor(template_out):
        return tensor
    if isinstance(template_out, tuple):
        return (tensor,) + tuple(template_out[1:])
    return type(template_out)(sample=tensor)


class _CFGReuse(CacheRuntime):
    hook_name = "planner.cfg_reuse"

    def __init__(self, pipe, config: CFGReuseConfig) -> None:
        super().__init__(pipe)
        self.config = config
        self.cond_index = self.anatomy.cfg_layout.cond_index
        self.delta: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.delta.clear()

    def _full(self, step: int) -> bool:
        c = self.config
        return step < c.warmup or step % c.interval == 0 or step >= self.tracker.num_steps - 1

    def run_denoiser(self, call, args, kwargs):
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        if not torch.is_tensor(sample) or not self.anatomy.cfg_active(sample, kwargs):
            return call(*args, **kwargs)
        b = sample.shape[0] // 2
        delta = self.delta.get(self.slot)
        if not self._full(self.step) and delta is not None and delta.shape[0] == b:
            half_args = tuple(_half(a, b, self.cond_index) for a in args)
            half_kwargs = {k: _half(v, b, self.cond_index) for k, v in kwargs.items()}
            out = call(*half_args, **half_kwargs)
            cond = _main(out)
            both = [cond, cond - delta] if self.cond_index == 0 else [cond - delta, cond]
            self.stats["reused"] += 1
            return _like(out, torch.cat(both))
        out = call(*args, **kwargs)
        eps = _main(out)
        cond, uncond = (eps[:b], eps[b:]) if self.cond_index == 0 else (eps[b:], eps[:b])
        self.delta[self.slot] = cond - uncond
        self.stats["computed"] += 1
        return out


@register(CFGReuseConfig, applicable=_applicable)
def apply_cfg_reuse(pipe, config: CFGReuseConfig) -> Handle:
    runtime = _CFGReuse(pipe, config)
    return Handle(config, runtime.remove, info={"runtime": runtime})
