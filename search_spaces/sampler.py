"""Sampler, step count and spacing: the first decision, since cache schedules are indexed by step.

The samplers are the ones this pipeline can run (noise-prediction or flow matching), plus "keep": the
pipeline's own scheduler at fewer steps, the first knob any user tries. The step choices are the usual
few-step counts below the baseline's, plus the baseline's own count (where caching alone can win).
"""
from __future__ import annotations

from backends.sampler import KEEP, SamplerConfig, available_samplers

STEP_CHOICES = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)


def sampler_choices(pipe) -> list[str]:
    return [*available_samplers(pipe), KEEP]


def step_choices(baseline_steps: int) -> list[int]:
    return [s for s in STEP_CHOICES if s < baseline_steps] + [baseline_steps]


def suggest_sampler(trial, profile, pipe, max_steps: int = 50) -> SamplerConfig:
    name = trial.suggest_categorical("sampler", sampler_choices(pipe))
    steps = trial.suggest_categorical("steps", step_choices(max_steps))
    # trailing spacing is what makes few-step sampling work (leading wastes the last step near t=0);
    # searching it costs a dimension that rarely pays, so it is fixed unless asked for.
    return SamplerConfig(name=name, steps=steps, spacing="trailing")
