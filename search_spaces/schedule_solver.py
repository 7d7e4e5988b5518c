"""Per-block, per-step reuse schedules from a profile (DiTFastAttn-style greedy with a growing budget).

Plain numpy in, boolean matrix out, so it does not depend on the profiler's object:

    reuse, info = solve_schedule(redundancy, latency, delta)

* `redundancy`: blocks x steps, the rel-L1 change of each block's residual (output - input) from the
  previous step; column 0 (nothing before it) is NaN or ignored. NaN elsewhere means "never reuse".
* `latency`: blocks (ms per evaluation) or blocks x steps.
* `delta`: the error budget, the one scalar the search tunes.

Error model: reusing block b at step s with the residual it computed at step c < s costs the drift
e(b, s) = sum_{k=c+1..s} redundancy[b, k] (consecutive reuse accumulates). The predicted error of a step
is the sum of the drifts of the blocks it reuses; it must stay within (s+1)/L * delta (early steps, which
shape the image, get less). Steps are solved in order; within a step the block-steps with the best
latency saved per unit of error (most expensive, most redundant) are taken greedily while they fit.
Step 0 is never reused (nothing is cached yet).
"""
from __future__ import annotations

import numpy as np


def step_budgets(num_steps: int, delta: float) -> np.ndarray:
    """(s+1)/L * delta for s = 0..L-1."""
    return (np.arange(num_steps) + 1.0) / max(num_steps, 1) * float(delta)


def solve_schedule(redundancy, latency, delta: float, *, max_consecutive: int | None = None,
                   allowed=None) -> tuple[np.ndarray, dict]:
    """Greedy reuse matrix (blocks x steps, bool) and info {predicted_error, budget, saved_ms, total_ms}.

    `allowed`: optional boolean mask (blocks,) or (blocks x steps) of block-steps that may be reused.
    `max_consecutive`: bound on consecutive reused steps of one block.
    """
    r = np.asarray(redundancy, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError("redundancy must be a blocks x steps matrix")
    n_blocks, n_steps = r.shape
    lat = np.asarray(latency, dtype=np.float64)
    if lat.ndim == 1:
        if lat.shape[0] != n_blocks:
            raise ValueError(f"latency has {lat.shape[0]} blocks, redundancy {n_blocks}")
        lat = np.repeat(lat[:, None], n_steps, axis=1)
    if lat.shape != r.shape:
        raise ValueError(f"latency shape {lat.shape} does not match redundancy {r.shape}")
    lat = np.nan_to_num(lat, nan=0.0)
    ok = np.ones_like(r, dtype=bool)
    if allowed is not None:
        mask = np.asarray(allowed, dtype=bool)
        ok &= mask[:, None] if mask.ndim == 1 else mask
    ok &= np.isfinite(r) & (r >= 0)
    ok[:, 0] = False

    budget = step_budgets(n_steps, delta)
    reuse = np.zeros_like(r, dtype=bool)
    drift = np.zeros(n_blocks)          # accumulated drift of each block's cached residual
    run = np.zeros(n_blocks, dtype=int)  # consecutive reused steps
    predicted = np.zeros(n_steps)
    for s in range(1, n_steps):
        cost = np.where(ok[:, s], drift + np.nan_to_num(r[:, s], nan=np.inf), np.inf)
        if max_consecutive is not None:
            cost[run >= max_consecutive] = np.inf
        gain = lat[:, s]
        order = sorted((b for b in range(n_blocks) if np.isfinite(cost[b]) and gain[b] > 0),
                       key=lambda b: (-gain[b] / (cost[b] + 1e-9), b))
        spent = 0.0
        for b in order:
            if spent + cost[b] <= budget[s]:
                reuse[b, s] = True
                spent += cost[b]
        predicted[s] = spent
        for b in range(n_blocks):
            if reuse[b, s]:
                drift[b] = cost[b]
                run[b] += 1
            else:
                drift[b], run[b] = 0.0, 0
    total = float(lat.sum())
    saved = float(lat[reuse].sum())
    return reuse, {"predicted_error": predicted, "budget": budget, "saved_ms": saved, "total_ms": total,
                   "saved_fraction": saved / total if total > 0 else 0.0}


def delta_range(redundancy, allowed=None) -> tuple[float, float]:
    """A sensible search range for delta: from reusing about one cheap block-step to about everything."""
    r = np.asarray(redundancy, dtype=np.float64)[:, 1:]
    if allowed is not None:
        mask = np.asarray(allowed, dtype=bool)
        r = r[mask] if mask.ndim == 1 else r[mask[:, 1:]]
    finite = r[np.isfinite(r) & (r > 0)]
    if finite.size == 0:
        return 1e-3, 1.0
    lo = float(np.quantile(finite, 0.1))
    hi = float(np.nansum(np.where(np.isfinite(r), r, 0.0), axis=0).max()) if r.ndim == 2 else float(finite.sum())
    return max(lo, 1e-6), max(hi, lo * 10)


def full_steps_from_change(change, num_full: int) -> list[int]:
    """Non-uniform full steps for interval caches (DeepCache, TaylorSeer): `num_full` steps placed so the
    accumulated change between consecutive full steps is about equal (denser where the model changes
    fast). `change[s]`: change at step s from s-1 (index 0 ignored; NaN treated as the median)."""
    c = np.asarray(change, dtype=np.float64).copy()
    n = c.shape[0]
    num_full = int(max(1, min(num_full, n)))
    if n == 0:
        return [0]
    c[0] = 0.0
    finite = c[1:][np.isfinite(c[1:])]
    fill = float(np.median(finite)) if finite.size else 1.0
    c[~np.isfinite(c)] = fill
    c = np.clip(c, 0.0, None)
    cum = np.cumsum(c)
    total = cum[-1]
    steps = {0}
    if total <= 0:
        steps.update(int(round(x)) for x in np.linspace(0, n - 1, num_full))
    else:
        for k in range(1, num_full):
            steps.add(int(np.searchsorted(cum, k * total / num_full)))
    return sorted(s for s in steps if 0 <= s < n)
