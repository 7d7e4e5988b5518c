"""Search spaces of the caching techniques: one or two global scalars each; the rest from the profile.

Every `suggest_*(trial, profile_or_None, pipe) -> TechniqueConfig | None` returns None when its technique
cannot apply to `pipe` (a UNet-only cache on a transformer, a profile-only schedule without a profile).
`suggest_cache` picks at most one cache per trial among those that apply (or none).

Profile-derived scales (thresholds relative to the indicator's typical per-step change, the schedule
solver's delta range) keep the Optuna distributions fixed while their meaning follows the model. The
calibration helpers take plain numpy arrays; `CacheProfile.from_profile` adapts a `profiler.Profile`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from backends.caching import (BlockScheduleConfig, CFGReuseConfig, DeepCacheConfig, FirstBlockCacheConfig,
                              TaylorSeerConfig, TeaCacheConfig)
from backends.technique import why_not_applicable
from ground.anatomy import anatomy_of, denoiser_of
from ground.errors import PlannerError
from search_spaces.schedule_solver import delta_range, full_steps_from_change, solve_schedule

# ----------------------------------------------------------------------------------- calibration (numpy)


def _median_positive(x) -> float | None:
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a) & (a > 0)]
    return float(np.median(a)) if a.size else None


def teacache_step_change(indicator_change, coefficients=None) -> np.ndarray:
    """Per-step rescaled indicator (what TeaCache accumulates): polyval(coefficients, x), or x."""
    x = np.asarray(indicator_change, dtype=np.float64)
    if coefficients is None:
        return x
    return np.clip(np.polyval(np.asarray(coefficients, dtype=np.float64), x), 0.0, None)


def teacache_threshold(scale: float, indicator_change, coefficients=None) -> float:
    """Threshold that lets about `scale` typical steps accumulate before a full step."""
    typical = _median_positive(teacache_step_change(np.asarray(indicator_change, dtype=np.float64)[1:],
                                                    coefficients))
    return float(scale * typical) if typical else float(scale * 0.05)


def first_block_threshold(scale: float, first_block_change) -> float:
    """Threshold as a multiple of the first block residual's typical per-step rel-L1 change."""
    typical = _median_positive(np.asarray(first_block_change, dtype=np.float64)[1:])
    return float(scale * typical) if typical else float(scale * 0.05)


@dataclass
class CacheProfile:
    """What the caches need from a profile, as plain arrays (NaN where unmeasured)."""

    steps: int
    block_names: list[str] = field(default_factory=list)        # per-block rows below
    residual_change: np.ndarray | None = None                   # blocks x steps (rel-L1 vs previous step)
    output_change: np.ndarray | None = None                     # blocks x steps
    block_ms: np.ndarray | None = None                          # blocks (mean per step)
    indicator_change: np.ndarray | None = None                  # steps
    coefficients: list[float] | None = None                     # indicator -> output change polynomial
    first_block_change: np.ndarray | None = None                # steps
    denoiser_change: np.ndarray | None = None                   # steps

    @classmethod
    def from_profile(cls, profile) -> "CacheProfile":
        if isinstance(profile, CacheProfile):
            return profile

        def get(fn, *args):
            try:
                return fn(*args)
            except (KeyError, ValueError, TypeError, AttributeError, LookupError, PlannerError):
                return None   # a profile without that measurement (a fit needs enough steps and samples)

        latency = get(lambda: profile.latency)
        block_ms = None if latency is None else np.nanmean(np.asarray(latency, dtype=np.float64), axis=1)
        poly = get(profile.poly)
        return cls(steps=int(profile.steps), block_names=list(profile.block_names),
                   residual_change=get(profile.redundancy, "residual_rel_l1"),
                   output_change=get(profile.redundancy, "output_rel_l1"),
                   block_ms=block_ms,
                   indicator_change=get(profile.step_series, "indicator_rel_l1"),
                   coefficients=None if poly is None else [float(c) for c in poly],
                   first_block_change=get(profile.step_series, "first_block_residual_rel_l1"),
                   denoiser_change=get(profile.step_series, "denoiser_rel_l1"))

    def rows(self, names: list[str]) -> list[int]:
        index = {n: i for i, n in enumerate(self.block_names)}
        return [index[n] for n in names if n in index]


def _cache_profile(profile) -> CacheProfile | None:
    return None if profile is None else CacheProfile.from_profile(profile)


def _applies(pipe, cls) -> bool:
    return why_not_applicable(pipe, cls) is None


# ------------------------------------------------------------------------------------------ schedules

def schedule_from_profile(profile, pipe, delta: float, max_consecutive: int | None = None) -> BlockScheduleConfig:
    """Solve the block x step reuse schedule of `pipe`'s residual blocks from a profile at budget `delta`."""
    cp = CacheProfile.from_profile(profile)
    names = [n for n, _ in anatomy_of(pipe).residual_blocks()]
    names = [n for n in names if n in set(cp.block_names)]
    if not names or cp.residual_change is None or cp.block_ms is None:
        return BlockScheduleConfig(reuse={}, num_steps=cp.steps)
    rows = cp.rows(names)
    reuse, _ = solve_schedule(cp.residual_change[rows], cp.block_ms[rows], delta, max_consecutive=max_consecutive)
    return BlockScheduleConfig.from_matrix(names, reuse, num_steps=cp.steps)


def _skip_branch_change(cp: CacheProfile, pipe, branch: int) -> np.ndarray | None:
    unet = denoiser_of(pipe)
    n = len(unet.down_blocks)
    feeder = "mid_block" if branch >= n - 1 else f"up_blocks.{n - branch - 2}"
    if cp.output_change is not None and feeder in cp.block_names:
        return cp.output_change[cp.block_names.index(feeder)]
    return cp.denoiser_change


# -------------------------------------------------------------------------------------- suggest_* API

def suggest_deepcache(trial, profile, pipe) -> DeepCacheConfig | None:
    if not _applies(pipe, DeepCacheConfig):
        return None   # transformers: no skip branches
    n = len(denoiser_of(pipe).down_blocks)
    branch = trial.suggest_int("deepcache.branch", 0, n - 1)
    interval = trial.suggest_int("deepcache.interval", 2, 5)
    cp = _cache_profile(profile)
    if cp is not None:
        change = _skip_branch_change(cp, pipe, branch)
        if change is not None and len(change) == cp.steps:
            full = full_steps_from_change(change, math.ceil(cp.steps / interval))
            return DeepCacheConfig(branch=branch, interval=interval, full_steps=full)
    return DeepCacheConfig(branch=branch, interval=interval)


def suggest_block_schedule(trial, profile, pipe) -> BlockScheduleConfig | None:
    if profile is None or not _applies(pipe, BlockScheduleConfig):
        return None   # the schedule is solved from a profile
    cp = CacheProfile.from_profile(profile)
    names = [n for n, _ in anatomy_of(pipe).residual_blocks() if n in set(cp.block_names)]
    if not names or cp.residual_change is None:
        return None
    lo, hi = delta_range(cp.residual_change[cp.rows(names)])
    fraction = trial.suggest_float("block_schedule.delta", 1e-3, 1.0, log=True)
    delta = lo * (hi / lo) ** (math.log10(fraction) / 3 + 1)   # fraction 1e-3 -> lo, 1 -> hi
    return schedule_from_profile(cp, pipe, delta)


def suggest_first_block_cache(trial, profile, pipe) -> FirstBlockCacheConfig | None:
    if not _applies(pipe, FirstBlockCacheConfig):
        return None   # needs a transformer-block chain
    max_skips = trial.suggest_int("first_block_cache.max_skips", 1, 4)
    cp = _cache_profile(profile)
    if cp is not None and cp.first_block_change is not None:
        scale = trial.suggest_float("first_block_cache.threshold_scale", 0.25, 8.0, log=True)
        threshold = first_block_threshold(scale, cp.first_block_change)
    else:
        threshold = trial.suggest_float("first_block_cache.threshold", 0.01, 0.5, log=True)
    return FirstBlockCacheConfig(threshold=min(threshold, 2.0), max_skips=max_skips)


def suggest_teacache(trial, profile, pipe) -> TeaCacheConfig | None:
    if not _applies(pipe, TeaCacheConfig):
        return None   # needs a transformer-block chain
    max_skips = trial.suggest_int("teacache.max_skips", 1, 4)
    cp = _cache_profile(profile)
    if cp is not None and cp.indicator_change is not None:
        scale = trial.suggest_float("teacache.threshold_scale", 0.5, 8.0, log=True)
        threshold = teacache_threshold(scale, cp.indicator_change, cp.coefficients)
        return TeaCacheConfig(threshold=min(threshold, 10.0), max_skips=max_skips, coefficients=cp.coefficients)
    threshold = trial.suggest_float("teacache.threshold", 0.02, 1.0, log=True)
    return TeaCacheConfig(threshold=threshold, max_skips=max_skips)


def suggest_taylorseer(trial, profile, pipe) -> TaylorSeerConfig | None:
    if not _applies(pipe, TaylorSeerConfig):
        return None
    interval = trial.suggest_int("taylorseer.interval", 2, 5)
    order = trial.suggest_categorical("taylorseer.order", [0, 1])
    return TaylorSeerConfig(interval=interval, order=order, warmup=2)


def suggest_cfg_reuse(trial, profile, pipe) -> CFGReuseConfig | None:
    if not _applies(pipe, CFGReuseConfig):
        return None   # no batched classifier-free guidance
    interval = trial.suggest_int("cfg_reuse.interval", 2, 5)
    return CFGReuseConfig(interval=interval, warmup=2)


SUGGESTERS = {
    "deepcache": (DeepCacheConfig, suggest_deepcache),
    "block_schedule": (BlockScheduleConfig, suggest_block_schedule),
    "first_block_cache": (FirstBlockCacheConfig, suggest_first_block_cache),
    "teacache": (TeaCacheConfig, suggest_teacache),
    "taylorseer": (TaylorSeerConfig, suggest_taylorseer),
    "cfg_reuse": (CFGReuseConfig, suggest_cfg_reuse),
}


def observed_cfg_layout(profile) -> str | None:
    """How the profiled calls ran classifier-free guidance ("batched", "separate", "none"), if recorded."""
    data = getattr(profile, "data", None)
    return (data or {}).get("cfg", {}).get("layout") if isinstance(data, dict) else None


def applicable_caches(pipe, profile=None) -> list[str]:
    """The caches that can act on `pipe`. Without a profile the schedule solver has nothing to solve
    from; with one, CFG reuse needs the calls it observed to batch both halves (a pipeline may declare
    batched CFG and still call its denoiser once per branch, or run without guidance)."""
    names = [name for name, (cls, _) in SUGGESTERS.items() if _applies(pipe, cls)]
    if profile is None:
        return [n for n in names if n != "block_schedule"]
    layout = observed_cfg_layout(profile)
    return [n for n in names if n != "cfg_reuse" or layout in (None, "batched")]


def suggest_cache(trial, profile, pipe):
    """At most one cache technique per trial: a categorical over those that apply, plus "none"."""
    choice = trial.suggest_categorical("cache", ["none"] + applicable_caches(pipe, profile))
    if choice == "none":
        return None
    return SUGGESTERS[choice][1](trial, profile, pipe)
