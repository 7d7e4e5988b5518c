"""One trial -> the ordered list of technique configs it proposes.

Families are asked in the order that matters (ANCHORS: steps and sampler first, since cache schedules
are indexed by step; then precision; then tokens; then the cache, calibrated on the profile taken at
the trial's own sampler and steps; compilation last). A family that cannot apply to the pipeline, or
is not installed, contributes nothing: the search space simply leaves it out.
"""
from __future__ import annotations

import importlib
from typing import Callable, Mapping, Sequence

from planner.errors import PlannerError

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


class RestrictedTrial:
    """An Optuna trial whose parameters named in `space` may only take the listed values.

    `space` maps a parameter name (as the families suggest it: "sampler", "steps", "deepcache.interval",
    `quantization.mode_param(pipe)`, ...) to its allowed values; each such parameter becomes a
    categorical over them, the rest keep their full range. A benchmark or a user can thus search a
    reduced space (or enumerate it exhaustively) without any family knowing about it.
    """

    def __init__(self, trial, space: Mapping[str, Sequence]) -> None:
        self._trial, self._space = trial, space

    def _allowed(self, name: str, admits: Callable[[object], bool]) -> list:
        values = list(self._space[name])
        bad = [v for v in values if not admits(v)]
        if bad or not values:
            raise PlannerError(f"space.{name}: {bad[0] if bad else 'no values'!r} is not a value "
                               f"this parameter can take")
        return values

    def suggest_categorical(self, name, choices):
        if name in self._space:
            choices = self._allowed(name, lambda v: v in choices)
        return self._trial.suggest_categorical(name, list(choices))

    def suggest_int(self, name, low, high, step=1, log=False):
        if name in self._space:
            return self._trial.suggest_categorical(name, self._allowed(name, lambda v: low <= v <= high))
        return self._trial.suggest_int(name, low, high, step=step, log=log)

    def suggest_float(self, name, low, high, step=None, log=False):
        if name in self._space:
            return self._trial.suggest_categorical(name, self._allowed(name, lambda v: low <= v <= high))
        return self._trial.suggest_float(name, low, high, step=step, log=log)

    def __getattr__(self, name):
        return getattr(self._trial, name)


def within_space(params: Mapping, space: Mapping[str, Sequence] | None) -> bool:
    """True when every value in `params` that `space` restricts is one it allows (e.g. an anchor trial)."""
    return space is None or all(k not in space or v in space[k] for k, v in params.items())


def suggest_configs(trial, pipe, families: list[str], profile_for: Callable[[object], object] | None,
                    space: Mapping[str, Sequence] | None = None) -> list:
    """`profile_for(sampler_config)` returns the profile at that sampler (or None): called lazily.
    `space` restricts parameters to listed values (see `RestrictedTrial`)."""
    if space:
        trial = RestrictedTrial(trial, space)
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
