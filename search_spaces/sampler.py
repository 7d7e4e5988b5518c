"""Sampler, step count and spacing: the first decision, since cache schedules are indexed by step."""
from __future__ import annotations

from backends.sampler import SamplerConfig, available_samplers

STEP_CHOICES = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30)


def suggest_sampler(trial, profile, pipe, max_steps: int = 50) -> SamplerConfig:
    names = available_samplers(pipe)
    name = trial.suggest_categorical("sampler", list(names))
    steps = trial.suggest_categorical("steps", [s for s in STEP_CHOICES if s <= max_steps])
    # trailing spacing is what makes few-step sampling work (leading wastes the last step near t=0);
    # searching it costs a dimension that rarely pays, so it is fixed unless asked for.
    spacing = "trailing"
    return SamplerConfig(name=name, steps=steps, spacing=spacing)
