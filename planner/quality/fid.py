"""FID and KID from feature matrices, in float64.

FID uses an eigen-based trace square root: tr sqrt(S_r S_g) = sum sqrt(eig(R S_g R)) with R = S_r^(1/2)
(R S_g R is symmetric PSD, so `eigvalsh` is exact and stable; no complex parts to discard as with
`scipy.linalg.sqrtm`). The reference's square root is computed once per reference.

KID is the unbiased MMD^2 estimator with the polynomial kernel k(x, y) = (x.y / d + 1)^3, computed
over all samples (no subsets). Under bootstrap weights, pairs of the *same* underlying sample are
excluded exactly like the diagonal, so resampling does not bias the estimator upward.

All statistics accept sample weights `w` (bootstrap counts; ones for the point estimate).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ground.errors import PlannerError


def _as64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise PlannerError(f"features must be a 2-d (N, D) array, got shape {arr.shape}")
    return arr


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((s + s.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def weighted_stats(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (n-1)-normalised covariance of rows of x, each counted w[i] times."""
    x = _as64(x)
    if w is None:
        w = np.ones(len(x))
    w = np.asarray(w, dtype=np.float64)
    m = w.sum()
    mu = w @ x / m
    xc = x - mu
    cov = (xc * w[:, None]).T @ xc / max(m - 1, 1)
    return mu, cov


@dataclass
class GaussianStats:
    """Mean, covariance and covariance square root of a reference feature set."""

    mu: np.ndarray
    sigma: np.ndarray
    sqrt_sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, feats) -> "GaussianStats":
        x = _as64(feats)
        if len(x) < 2:
            raise PlannerError(f"reference set has {len(x)} sample(s); FID needs at least 2")
        mu, sigma = weighted_stats(x)
        return cls(mu, sigma, _sym_sqrt(sigma), len(x))


def frechet_distance(mu_g: np.ndarray, sigma_g: np.ndarray, ref: GaussianStats) -> float:
    diff = mu_g - ref.mu
    m = ref.sqrt_sigma @ sigma_g @ ref.sqrt_sigma
    eig = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
    tr_sqrt = float(np.sqrt(eig).sum())
    value = float(diff @ diff + np.trace(sigma_g) + np.trace(ref.sigma) - 2 * tr_sqrt)
    return max(value, 0.0)


def fid(feats, ref: GaussianStats | np.ndarray, w: np.ndarray | None = None) -> float:
    """FID of (weighted) generated features against reference statistics (or reference features)."""
    if not isinstance(ref, GaussianStats):
        ref = GaussianStats.from_features(ref)
    x = _as64(feats)
    if x.shape[1] != ref.mu.shape[0]:
        raise PlannerError(f"feature dimensions differ: generated {x.shape[1]}, reference {ref.mu.shape[0]}")
    mu, sigma = weighted_stats(x, w)
    return frechet_distance(mu, sigma, ref)


class KIDState:
    """Kernel matrices of one generated set against a fixed reference, for fast weighted KID."""

    def __init__(self, feats, ref_feats, ref_term: float | None = None) -> None:
        x, y = _as64(feats), _as64(ref_feats)
        if x.shape[1] != y.shape[1]:
            raise PlannerError(f"feature dimensions differ: generated {x.shape[1]}, reference {y.shape[1]}")
        d = x.shape[1]
        self.k_xx = (x @ x.T / d + 1) ** 3
        self.k_xy_rowsum = ((x @ y.T / d + 1) ** 3).sum(axis=1)  # per generated sample
        self.n_ref = len(y)
        if ref_term is None:
            k_yy = (y @ y.T / d + 1) ** 3
            ref_term = float((k_yy.sum() - np.trace(k_yy)) / (len(y) * (len(y) - 1)))
        self.ref_term = ref_term

    def __call__(self, w: np.ndarray | None = None) -> float:
        n = len(self.k_xx)
        c = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
        m = c.sum()
        same = float((c * c).sum())  # ordered pairs that are the same underlying sample (incl. diagonal)
        xx = (c @ self.k_xx @ c - float((c * c) @ np.diag(self.k_xx))) / max(m * m - same, 1)
        xy = float(c @ self.k_xy_rowsum) / (m * self.n_ref)
        return float(xx + self.ref_term - 2 * xy)


def kid(feats, ref_feats, w: np.ndarray | None = None) -> float:
    """Unbiased KID (MMD^2, cubic polynomial kernel) of generated features against reference features."""
    return KIDState(feats, ref_feats)(w)


JACKKNIFE_GROUPS = 8


def fid_bias_shift(feats, ref: GaussianStats, target_n: int, groups: int = JACKKNIFE_GROUPS) -> float:
    """How much the FID of these n features would move if measured on `target_n` samples instead.

    FID is biased upward at finite N, roughly as FID(N) = FID_inf + b / N (Chong & Forsyth, "Effectively
    unbiased FID"), and b depends on the generated distribution: a few-step sampler's smoother, less
    varied images have a smaller b than the baseline's, so a paired dFID at 64 samples understates dFID
    at 500. b is estimated by a grouped jackknife (leave one of `groups` groups out: FID at n - n/groups
    against FID at n), and the shift is b * (1/target_n - 1/n). Candidate and baseline use the same
    groups, so their noise largely cancels in a paired difference. 0 when n >= target_n."""
    x = _as64(feats)
    n = len(x)
    groups = min(groups, n // 2)
    if n >= target_n or groups < 2:
        return 0.0
    full = fid(x, ref)
    parts = np.array_split(np.arange(n), groups)
    left_out = [fid(np.delete(x, part, axis=0), ref) for part in parts]
    m = n - n / groups
    slope = (float(np.mean(left_out)) - full) / (1.0 / m - 1.0 / n)
    return slope * (1.0 / target_n - 1.0 / n)
