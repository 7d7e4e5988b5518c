"""The schedule solver, the calibration helpers and the caching search spaces (numpy and Optuna only,
plus one end-to-end profile -> schedule -> apply on the shipped digits DiT)."""
from __future__ import annotations

import numpy as np
import optuna
import pytest
import torch

from backends.caching import (BlockScheduleConfig, CFGReuseConfig, DeepCacheConfig, FirstBlockCacheConfig,
                              TeaCacheConfig)
from search_spaces.caching import (CacheProfile, applicable_caches, first_block_threshold, suggest_block_schedule,
                                   suggest_cache, suggest_cfg_reuse, suggest_deepcache, suggest_first_block_cache,
                                   suggest_taylorseer, suggest_teacache, teacache_threshold)
from search_spaces.schedule_solver import delta_range, full_steps_from_change, solve_schedule, step_budgets
from backend_helpers import demo_pipeline
from helpers import torch_threads

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _redundancy(blocks=4, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    r = rng.uniform(0.01, 0.3, size=(blocks, steps))
    r[:, 0] = np.nan
    return r


def test_solver_respects_budget_and_never_reuses_step_zero():
    r = _redundancy()
    lat = np.array([1.0, 2.0, 3.0, 4.0])
    for delta in (0.0, 0.05, 0.3, 1.0, 10.0):
        reuse, info = solve_schedule(r, lat, delta)
        assert reuse.shape == r.shape and reuse.dtype == bool
        assert not reuse[:, 0].any()
        assert np.all(info["predicted_error"] <= step_budgets(r.shape[1], delta) + 1e-12)
    assert not solve_schedule(r, lat, 0.0)[0].any()


def test_solver_more_budget_reuses_more_and_prefers_redundant_expensive_blocks():
    r = _redundancy()
    lat = np.array([1.0, 2.0, 3.0, 4.0])
    counts = [solve_schedule(r, lat, d)[0].sum() for d in (0.01, 0.1, 0.5, 2.0, 100.0)]
    assert counts == sorted(counts) and counts[-1] == r.shape[0] * (r.shape[1] - 1)
    # one cheap-to-reuse expensive block and one costly cheap block: the budget goes to the first
    r2 = np.array([[np.nan, 0.01, 0.01], [np.nan, 0.5, 0.5]])
    reuse, _ = solve_schedule(r2, np.array([10.0, 1.0]), delta=0.1)
    assert reuse[0, 1:].all() and not reuse[1].any()


def test_solver_accumulates_drift_and_bounds_consecutive_reuse():
    r = np.full((1, 6), 0.1)
    r[:, 0] = np.nan
    reuse, info = solve_schedule(r, np.array([1.0]), delta=0.6)
    # budget at step s: (s+1)/6*0.6 = 0.1(s+1); drift after k reuses is 0.1k
    assert reuse[0].tolist() == [False, True, True, True, True, True]
    reuse, _ = solve_schedule(r, np.array([1.0]), delta=0.6, max_consecutive=2)
    assert reuse[0].tolist() == [False, True, True, False, True, True]
    with pytest.raises(ValueError):
        solve_schedule(r, np.array([1.0, 2.0]), 0.1)


def test_delta_range_and_full_steps():
    lo, hi = delta_range(_redundancy())
    assert 0 < lo < hi
    change = np.array([np.nan, 5, 4, 3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    full = full_steps_from_change(change, 4)
    assert full[0] == 0 and len(full) <= 4 and full == sorted(set(full))
    assert max(full) <= 3, f"full steps should crowd where the change is large: {full}"
    assert full == [0, 1, 2, 3]   # equal accumulated change (14.5 / 4) between full steps
    assert full_steps_from_change(np.zeros(8), 3) == [0, 4, 7]   # no change: evenly spaced


def test_calibrated_thresholds_scale_with_the_indicator():
    ind = np.array([np.nan, 0.2, 0.1, 0.1, 0.05])
    assert teacache_threshold(2.0, ind) == pytest.approx(2 * 0.1)
    assert teacache_threshold(1.0, ind, coefficients=[2.0, 0.0]) == pytest.approx(0.2)   # y = 2x
    assert first_block_threshold(3.0, ind) == pytest.approx(0.3)


def _fake_profile(pipe, steps=10):
    from backends.caching.common import residual_blocks
    from ground.anatomy import denoiser_of

    names = [n for n, _ in residual_blocks(pipe)]
    r = _redundancy(len(names), steps)
    return CacheProfile(steps=steps, block_names=names, residual_change=r, output_change=r,
                        block_ms=np.linspace(1, 2, len(names)), indicator_change=np.r_[np.nan, np.full(steps - 1, 0.05)],
                        coefficients=[1.5, 0.01], first_block_change=np.r_[np.nan, np.full(steps - 1, 0.04)],
                        denoiser_change=np.r_[np.nan, np.linspace(0.3, 0.05, steps - 1)])


@pytest.fixture(scope="module")
def pipes():
    return {"unet": demo_pipeline("digits-unet"), "dit": demo_pipeline("digits-dit")}


def test_suggest_functions_leave_out_what_does_not_apply(pipes):
    unet, dit = pipes["unet"], pipes["dit"]
    trial = optuna.create_study().ask()
    assert suggest_deepcache(trial, None, dit) is None
    assert suggest_first_block_cache(trial, None, unet) is None
    assert suggest_teacache(trial, None, unet) is None
    assert suggest_block_schedule(trial, None, dit) is None   # needs a profile
    assert isinstance(suggest_deepcache(trial, None, unet), DeepCacheConfig)
    assert isinstance(suggest_cfg_reuse(trial, None, dit), CFGReuseConfig)
    assert suggest_taylorseer(trial, None, dit) is not None and suggest_taylorseer(trial, None, unet) is not None
    assert "deepcache" not in applicable_caches(dit) and "teacache" not in applicable_caches(unet)


def test_suggest_with_profile(pipes):
    unet, dit = pipes["unet"], pipes["dit"]
    study = optuna.create_study()
    for _ in range(5):
        trial = study.ask()
        prof = _fake_profile(dit)
        tea = suggest_teacache(trial, prof, dit)
        assert isinstance(tea, TeaCacheConfig) and tea.coefficients == [1.5, 0.01]
        fbc = suggest_first_block_cache(trial, prof, dit)
        assert isinstance(fbc, FirstBlockCacheConfig) and fbc.threshold > 0
        sched = suggest_block_schedule(trial, prof, dit)
        assert isinstance(sched, BlockScheduleConfig) and sched.num_steps == 10
        assert all(min(s) >= 1 for s in sched.reuse.values())
        dc = suggest_deepcache(trial, _fake_profile(unet), unet)
        assert dc.full_steps is not None and dc.full_steps[0] == 0
        config = suggest_cache(trial, prof, dit)
        assert config is None or config.type in applicable_caches(dit, prof)
        study.tell(trial, 0.0)


def test_profile_to_schedule_end_to_end(pipes):
    """The profiler -> solver -> config -> applied; fewer block evaluations."""
    import backends
    import profiler
    from backends.caching.common import WorkCounter
    from backends.sampler import SamplerConfig
    from ground.generation import default_request, generate
    from search_spaces.caching import schedule_from_profile

    pipe = pipes["dit"]
    sampler = SamplerConfig(name="ddim", steps=6)
    with torch_threads(1):
        prof = profiler.profile_pipeline(pipe, default_request(pipe, 2, seed=100), sampler=sampler)
    cp = CacheProfile.from_profile(prof)
    assert cp.residual_change is not None and cp.residual_change.shape[1] == 6
    lo, hi = delta_range(cp.residual_change)
    config = schedule_from_profile(prof, pipe, delta=hi)
    assert config.reuse and config.num_steps == 6
    handle = backends.apply_all(pipe, [sampler, config])
    try:
        with WorkCounter(pipe) as counter:
            generate(pipe, default_request(pipe, 2), steps=6)
    finally:
        handle.remove()
    assert counter.calls < 6 * len(pipe.transformer.transformer_blocks)
