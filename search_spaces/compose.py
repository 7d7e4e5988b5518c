"""One trial -> the ordered list of technique configs it proposes.

Families are asked in the order that matters (ANCHORS: steps and sampler first, since cache schedules
are indexed by step; then the compilation backend, which decides what may go inside the graph; then
precision, tokens, and the cache, calibrated on the profile taken at the trial's own sampler and steps).
The order of *application* is the techniques' stages (backends.technique), not this one. A family that
cannot act on the pipeline contributes nothing: the search space simply leaves it out.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from ground.errors import PlannerError
from search_spaces.caching import suggest_cache
from search_spaces.compile import EXPORTERS, suggest_compile
from search_spaces.quantization import suggest_quantization
from search_spaces.sampler import suggest_sampler
from search_spaces.tokens import suggest_tokens

FAMILIES = ("sampler", "compile", "quant", "tokens", "cache")
DEFAULT_FAMILIES = FAMILIES   # compile included: its setup time is spread over --calls production calls


def available_families() -> list[str]:
    return list(FAMILIES)


class RestrictedTrial:
    """An Optuna trial whose parameters named in `space` may only take the listed values.

    `space` maps a parameter name (as the families suggest it: "sampler", "steps", "deepcache.interval",
    "quant.mode", ...) to its allowed values; each such parameter becomes a
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
                    space: Mapping[str, Sequence] | None = None, amortize_calls: int = 100,
                    baseline_steps: int = 50) -> list:
    """`profile_for(sampler_config)` returns the profile at that sampler (or None): called lazily.
    `space` restricts parameters to listed values (see `RestrictedTrial`)."""
    if space:
        trial = RestrictedTrial(trial, space)
    configs = [suggest_sampler(trial, None, pipe, baseline_steps)] if "sampler" in families else []
    compiled = suggest_compile(trial, None, pipe, amortize_calls) if "compile" in families else None
    backend = compiled.backend if compiled is not None else "eager"
    if backend not in EXPORTERS:          # an exported graph takes nothing of these inside it
        if "quant" in families:
            configs.append(suggest_quantization(trial, None, pipe, whole_graph=backend == "torch_whole"))
        if backend != "torch_whole":      # their hooks would be traced into a whole-model graph
            if "tokens" in families:
                configs.append(suggest_tokens(trial, None, pipe))
            if "cache" in families:
                sampler = configs[0] if configs and configs[0] is not None and configs[0].type == "sampler" else None
                profile = profile_for(sampler) if profile_for is not None else None
                configs.append(suggest_cache(trial, profile, pipe))
    configs.append(compiled)
    return [c for c in configs if c is not None]
