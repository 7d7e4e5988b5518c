"""The profile document: a versioned JSON file and a thin object with numpy accessors over it.

See profiler/SCHEMA.md for every field. Matrices are stored as lists of rows (one row per block, one
column per step); a value that does not exist (step 0 has no previous step; a block without attention
has no token similarity) is JSON `null` and NaN in numpy.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from ground.errors import PlannerError

SCHEMA_NAME = "planner.profile"
SCHEMA_VERSION = 1
REDUNDANCY_METRICS = ("output_rel_l1", "output_cos", "residual_rel_l1", "residual_cos")
TOKEN_METRICS = ("token_frac", "token_mean_max")
KEY_FIELDS = ("fingerprint", "device", "dtype", "resolution", "batch", "sampler", "steps", "guidance_scale")


def key_hash(key: dict) -> str:
    """Stable short hash of a profile key (the cache file name); the informative `model` name is left out."""
    key = {k: v for k, v in key.items() if k != "model"}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, (np.floating,)):
        return _nan_to_none(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _nan_to_none(obj.tolist())
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def _matrix(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def _vector(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


class Profile:
    """A loaded or freshly recorded profile. `data` is the JSON document; accessors return numpy."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.images = None  # the generated images (N, C, H, W) when profile_pipeline(keep_images=True)

    # ---- identity ----------------------------------------------------------------------------------
    @property
    def key(self) -> dict:
        return self.data["key"]

    @property
    def key_hash(self) -> str:
        return key_hash(self.key)

    @property
    def steps(self) -> int:
        """Columns of every matrix: model evaluations per call (= key steps for one-evaluation samplers)."""
        return len(self.data["timing"]["denoiser_ms"])

    # ---- blocks ------------------------------------------------------------------------------------
    @property
    def blocks(self) -> list[dict]:
        return self.data["blocks"]

    @property
    def block_names(self) -> list[str]:
        return [b["name"] for b in self.blocks]

    def block_index(self, name: str) -> int:
        return self.block_names.index(name)

    @property
    def levels(self) -> np.ndarray:
        return np.array([b["level"] for b in self.blocks], dtype=int)

    @property
    def top_level(self) -> np.ndarray:
        """Mask of level-0 entries (main blocks and io): their latencies partition the denoiser call."""
        return self.levels == 0

    @property
    def main_blocks(self) -> np.ndarray:
        """Mask of the main blocks (role "block"): what block caches skip."""
        return np.array([b["role"] == "block" for b in self.blocks])

    @property
    def shapes_match(self) -> np.ndarray:
        """Mask of blocks whose output has its input's shape (a residual output - input exists)."""
        return np.array([bool(b["shapes_match"]) for b in self.blocks])

    @property
    def flops(self) -> np.ndarray:
        return _vector([b["flops"] for b in self.blocks])

    @property
    def param_bytes(self) -> np.ndarray:
        return _vector([b["param_bytes"] for b in self.blocks])

    # ---- timing ------------------------------------------------------------------------------------
    @property
    def latency(self) -> np.ndarray:
        """Milliseconds, blocks x steps (mean over pipeline calls, all denoiser calls of a step summed)."""
        return _matrix(self.data["latency_ms"])

    @property
    def denoiser_ms(self) -> np.ndarray:
        return _vector(self.data["timing"]["denoiser_ms"])

    @property
    def step_ms(self) -> np.ndarray:
        return _vector(self.data["timing"]["step_ms"])

    @property
    def pipeline_ms(self) -> float:
        return float(self.data["timing"]["pipeline_ms"])

    def latency_share(self) -> np.ndarray:
        """Each block's share of total denoiser time over all steps (level-1 shares nest in level-0)."""
        total = np.nansum(self.denoiser_ms)
        return np.nansum(self.latency, axis=1) / total if total > 0 else np.zeros(len(self.blocks))

    # ---- redundancy --------------------------------------------------------------------------------
    def redundancy(self, metric: str = "output_rel_l1") -> np.ndarray:
        """blocks x steps; metric in output_rel_l1, output_cos, residual_rel_l1, residual_cos,
        token_frac, token_mean_max. Column 0 is NaN for the step-to-step metrics."""
        if metric in REDUNDANCY_METRICS:
            return _matrix(self.data["redundancy"][metric])
        if metric in TOKEN_METRICS:
            return _matrix(self.data["tokens"][metric])
        raise KeyError(f"unknown metric {metric!r}; choose from {REDUNDANCY_METRICS + TOKEN_METRICS}")

    def step_series(self, name: str) -> np.ndarray:
        """Per-step series: denoiser_rel_l1, denoiser_cos, cfg_rel_l1, cfg_cos, indicator_rel_l1,
        first_block_residual_rel_l1."""
        return _vector(self.data["per_step"][name])

    # ---- indicator polynomial ----------------------------------------------------------------------
    def indicator(self, name: str | None = None) -> dict:
        name = name or self.data["indicators"]["primary"]
        return self.data["indicators"][name]

    def poly(self, name: str | None = None) -> np.ndarray:
        """Coefficients, highest degree first (numpy.polyval order), mapping the indicator's rel-L1
        change to the denoiser output's rel-L1 change."""
        fit = self.indicator(name).get("fit")
        if not fit:
            raise PlannerError("profile has no indicator fit (too few steps or samples)")
        return np.array(fit["coef"], dtype=float)

    def predict(self, indicator_change, name: str | None = None) -> np.ndarray:
        return np.polyval(self.poly(name), np.asarray(indicator_change, dtype=float))

    # ---- persistence -------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(_nan_to_none(self.data), indent=1, allow_nan=False)

    def save(self, path) -> Path:
        from ground.files import write_text_atomic

        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path) -> "Profile":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise PlannerError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise PlannerError(f"{path}: not a JSON profile: {exc}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data, where: str = "profile") -> "Profile":
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
            raise PlannerError(f"{where}: not a planner profile (schema must be {SCHEMA_NAME!r})")
        version = data.get("version")
        if version != SCHEMA_VERSION:
            raise PlannerError(f"{where}: profile version {version!r} unsupported (this planner reads "
                               f"version {SCHEMA_VERSION}); re-run `planner profile`")
        for field in ("key", "blocks", "latency_ms", "redundancy", "timing", "indicators", "per_step"):
            if field not in data:
                raise PlannerError(f"{where}: profile lacks field {field!r}")
        missing = [f for f in KEY_FIELDS if f not in data["key"]]
        if missing:
            raise PlannerError(f"{where}: profile key lacks {missing[0]!r}")
        n, k = len(data["blocks"]), len(data["timing"].get("denoiser_ms", []))
        matrices = [data["latency_ms"]] + [data["redundancy"].get(m, []) for m in REDUNDANCY_METRICS]
        if any(len(m) != n or any(len(r) != k for r in m) for m in matrices):
            raise PlannerError(f"{where}: latency and redundancy matrices must be {n} blocks x {k} steps")
        return cls(data)

    def __repr__(self) -> str:
        k = self.key
        return (f"Profile({k.get('model') or k['fingerprint']}, {k['device']}, {k['dtype']}, "
                f"{k['sampler']['name']} x{k['steps']}, batch {k['batch']}, {len(self.blocks)} blocks)")


def fit_polynomial(x, y, max_degree: int = 4, folds: int = 5, seed: int = 0) -> dict | None:
    """Fit y ~ poly(x) with numpy.polyfit; the degree (1..max_degree) minimises the k-fold held-out
    RMSE; the returned coefficients are refitted on all points. None with fewer than 4 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 4:
        return None
    order = np.random.default_rng(seed).permutation(n)
    k = min(folds, n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % k
    heldout = {}
    for degree in range(1, max_degree + 1):
        if n - n // k <= degree + 1:
            break
        errors = []
        for f in range(k):
            train, test = fold_of != f, fold_of == f
            if train.sum() <= degree or not test.any():
                continue
            with np.errstate(all="ignore"):
                coef = np.polyfit(x[train], y[train], degree)
            errors.append((np.polyval(coef, x[test]) - y[test]) ** 2)
        if errors:
            rmse = float(np.sqrt(np.mean(np.concatenate(errors))))
            if math.isfinite(rmse):
                heldout[degree] = rmse
    if not heldout:
        return None
    degree = min(heldout, key=lambda d: (heldout[d], d))
    with np.errstate(all="ignore"):
        coef = np.polyfit(x, y, degree)
    pred = np.polyval(coef, x)
    rmse = float(np.sqrt(np.mean((pred - y) ** 2)))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((pred - y) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    return {"coef": [float(c) for c in coef], "degree": degree, "rmse": rmse, "r2": r2,
            "heldout_rmse": heldout[degree], "heldout_rmse_by_degree": {str(d): v for d, v in heldout.items()},
            "n": int(n), "x_range": [float(x.min()), float(x.max())]}
