"""Result objects with bootstrap confidence intervals.

Every metric is a statistic of a *weighting* of the samples: `stat(w)` where `w[i]` is how many times
sample i is drawn (all ones for the point estimate). One bootstrap replicate draws N indices with
replacement from a seeded generator and turns them into counts; a paired statistic (candidate minus
baseline) evaluates both sides on the same counts, so the CI is the CI of the paired difference.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

DEFAULT_BOOT = 200
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class MetricResult:
    """A measured value with its bootstrap percentile CI over `n` samples."""

    name: str
    value: float
    n: int
    ci_low: float
    ci_high: float
    level: float = DEFAULT_LEVEL
    n_boot: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def ci_width(self) -> float:
        return self.ci_high - self.ci_low

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.name}={_fmt(self.value)} [{_fmt(self.ci_low)}, {_fmt(self.ci_high)}] (n={self.n})"


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    return f"{x:.4g}"


def bootstrap_counts(n: int, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED) -> np.ndarray:
    """(n_boot, n) int64 counts; row b says how often each sample is drawn in replicate b."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, n), dtype=np.int64)
    for b in range(n_boot):
        out[b] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    return out


def bootstrap(name: str, stat: Callable[[np.ndarray], float], n: int, n_boot: int = DEFAULT_BOOT,
              seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL, extra: dict | None = None) -> MetricResult:
    """Point estimate stat(ones) and the percentile CI of stat over seeded bootstrap counts."""
    value = float(stat(np.ones(n, dtype=np.int64)))
    if n_boot <= 0 or n < 2:
        return MetricResult(name, value, n, value, value, level, 0, dict(extra or {}))
    reps = np.array([float(stat(c)) for c in bootstrap_counts(n, n_boot, seed)], dtype=np.float64)
    lo, hi = percentile_ci(reps, level, value)
    return MetricResult(name, value, n, lo, hi, level, n_boot, dict(extra or {}))


def percentile_ci(reps: np.ndarray, level: float = DEFAULT_LEVEL, value: float | None = None) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, re-centred on the point estimate `value`.

    Re-centring (shifting the replicates by value - median(replicates)) removes the resampling bias of
    statistics like FID, whose resamples hold only ~63% distinct samples and so read systematically
    higher; for means the shift is ~0. Without finite replicates, plain order statistics are used.
    """
    reps = np.asarray(reps, dtype=np.float64)
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    if np.isfinite(reps).all():
        lo, hi = np.quantile(reps, [lo_q, hi_q])
        if value is not None and math.isfinite(value):
            shift = value - float(np.median(reps))
            lo, hi = lo + shift, hi + shift
        return float(lo), float(hi)
    srt = np.sort(reps)  # +-inf replicates (e.g. PSNR of identical images)
    return float(srt[int(math.floor(lo_q * (len(srt) - 1)))]), float(srt[int(math.ceil(hi_q * (len(srt) - 1)))])


def weighted_mean(values: np.ndarray, w: np.ndarray) -> float:
    return float(np.dot(w, values) / w.sum())


def mean_metric(name: str, per_sample: np.ndarray, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
                level: float = DEFAULT_LEVEL) -> MetricResult:
    """Mean of per-sample values with its bootstrap CI."""
    per_sample = np.asarray(per_sample, dtype=np.float64)
    return bootstrap(name, lambda w: weighted_mean(per_sample, w), len(per_sample), n_boot, seed, level)
