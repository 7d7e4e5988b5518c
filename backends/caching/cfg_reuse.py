"""CFG reuse (the FasterCache idea, in its simple sound form) for batched classifier-free guidance.

A batched-CFG pipeline calls the denoiser once per step on [cond; uncond] (demo pipelines, DiTPipeline)
or [uncond; cond] (the Stable Diffusion family). On full steps the whole batch runs and the guidance delta
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


class CFGReuseConfig(TechniqueConfig):
    type = "cfg_reuse"
    version = 1
    stage = STAGE_CACHE

    interval: int = Field(2, ge=1, le=100)
    warmup: int = Field(2, ge=1, le=100)


def _cfg_layout(pipe) -> tuple[int, str] | None:
    """(index of the conditional half, how to tell CFG is on) or None if not a batched-CFG pipeline."""
    from planner.demo.pipeline import _DigitsPipeline

    if isinstance(pipe, _DigitsPipeline):
        return 0, "labels"
    if type(pipe).__name__ == "DiTPipeline":
        return 0, "labels"
    # the Stable Diffusion family exposes whether the running call batches [uncond; cond] as a property
    if isinstance(getattr(type(pipe), "do_classifier_free_guidance", None), property):
        return 1, "property"
    return None


def _applicable(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    if _cfg_layout(pipe) is None:
        return (f"{type(pipe).__name__} does not batch classifier-free guidance in one denoiser call "
                "in a way this cache can detect per call")
    return None


def _null_label(pipe) -> int:
    from planner.demo.data import NULL_CLASS
    from planner.demo.pipeline import _DigitsPipeline

    if isinstance(pipe, _DigitsPipeline):
        return NULL_CLASS
    return 1000   # DiTPipeline's hard-coded null class


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
    def __init__(self, pipe, config: CFGReuseConfig) -> None:
        super().__init__(pipe)
        self.config = config
        self.cond_index, self.detect = _cfg_layout(pipe)
        self.null = _null_label(pipe) if self.detect == "labels" else None
        self.delta: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.delta.clear()

    def _cfg_on(self, args, kwargs, batch2: int) -> bool:
        if batch2 % 2:
            return False
        if self.detect == "property":
            return bool(getattr(self.pipe, "do_classifier_free_guidance", False))
        labels = kwargs.get("class_labels")
        if not torch.is_tensor(labels) or labels.shape[0] != batch2:
            return False
        b = batch2 // 2
        uncond = labels[(1 - self.cond_index) * b:(2 - self.cond_index) * b]
        cond = labels[self.cond_index * b:(self.cond_index + 1) * b]
        return bool((uncond == self.null).all()) and not bool((cond == self.null).any())

    def _full(self, step: int) -> bool:
        c = self.config
        return step < c.warmup or step % c.interval == 0 or step >= self.tracker.num_steps - 1

    def run_denoiser(self, call, args, kwargs):
        sample = kwargs.get("sample", kwargs.get("hidden_states", args[0] if args else None))
        if not torch.is_tensor(sample) or not self._cfg_on(args, kwargs, sample.shape[0]):
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
