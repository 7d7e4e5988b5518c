"""One trial -> the ordered list of technique configs it proposes.

Families are asked in the order that matters (ANCHORS: steps and sampler first, since cache schedules
are indexed by step; then precision; then tokens; then the cache, calibrated on the profile taken at
the trial's own sampler and steps; compilation last). A family that cannot apply to the pipeline, or
is not installed, contributes nothing: the search space simply leaves it out.
"""
from __future__ import annotations

import importlib
from typing import Callable

FAMILIES = {
    # name: (module, function)
    "sampler": ("search_spaces.sampler", "suggest_sampler"),
    "quant": ("search_spaces.quantization", "suggest_quantization"),
    "tokens": ("search_spaces.tokens", "suggest_tokens"),
    "cache": ("search_spaces.caching", "suggest_cache"),
    "compile": ("search_spaces.compile", "suggest_compile"),
}
DEFAULT_FAMILIES = ("sampler", "quant", "tokens", "cache")  # compile: opt in (minutes of warm-up per trial on CPU)


def available_families() -> list[str]:
    out = []
    for name, (module, fn) in FAMILIES.items():
        try:
            getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError):
            continue
        out.append(name)
    return out


def suggest_configs(trial, pipe, families: list[str], profile_for: Callable[[object], object] | None) -> list:
    """`profile_for(sampler_config)` returns the profile at that sampler (or None): called lazily."""
    configs = []
    sampler_config = None
    for name in FAMILIES:
        if name not in families:
            continue
        module, fn = FAMILIES[name]
        try:
            suggest = getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError):
            continue
        if name == "sampler":
            sampler_config = suggest(trial, None, pipe)
            configs.append(sampler_config)
            continue
        profile = profile_for(sampler_config) if (name == "cache" and profile_for is not None) else None
        config = suggest(trial, profile, pipe)
        if config is not None:
            configs.append(config)
    return configs
