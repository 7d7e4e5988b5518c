"""The evaluator: per budget clause, the measured value, its bootstrap CI, N and two verdicts.

    point verdict         the clause holds at the measured value
    conservative verdict  the clause holds at the CI's unfavourable end (high end of a quantity that
                          must stay below its bound, low end of one that must stay above)

Relative clauses are paired: candidate and baseline come from the same (condition, seed) pairs, and
every bootstrap replicate resamples the *same* indices on both sides, so the CI is the CI of the paired
difference (or ratio). FID/KID bootstrap over the generated sets only; the reference set is fixed.

Typical use from the search (one baseline, many candidates):

    ev = Evaluator(parse_budget("fid+2,acc-1"), baseline_images, reference, extractor, conditions)
    result = ev.evaluate(candidate_images)      # -> Evaluation
    result.holds / result.point_holds / result.table()

Reference sets (see `resolve_reference`): demo models -> the 360 held-out digits; any other model -> the
baseline's own outputs on seeds disjoint from the candidate's; or a folder of images.
Generated images and features are cached on disk (see `DiskCache`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from planner.errors import PlannerError
from planner.quality import paired as paired_metrics
from planner.quality.bootstrap import DEFAULT_BOOT, DEFAULT_LEVEL, DEFAULT_SEED, MetricResult, _fmt, bootstrap_counts
from planner.quality.budget import Budget, Clause, parse_budget
from planner.quality.fid import GaussianStats, KIDState, weighted_stats, frechet_distance

REFERENCE_SEED_OFFSET = 1_000_000_000  # reference seeds never meet candidate seeds (N < 1e9)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------------
# reference sets

@dataclass
class Reference:
    features: torch.Tensor  # float64 (R, D)
    source: str
    extractor: str = ""
    _stats: GaussianStats | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.features)

    @property
    def stats(self) -> GaussianStats:
        if self._stats is None:
            self._stats = GaussianStats.from_features(self.features)
        return self._stats


def load_image_folder(folder) -> list[torch.Tensor]:
    """Every image file in `folder` (sorted by name) as a (C, H, W) float tensor in [0, 1]."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise PlannerError(f"--reference {folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise PlannerError(f"--reference {folder}: needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}), "
                           f"found {len(files)}")
    out = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("L", "I", "I;16", "1", "P") and im.mode != "P" else im.convert("RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except OSError as exc:
            raise PlannerError(f"--reference {path}: unreadable image ({exc})") from None
        t = torch.from_numpy(arr)
        out.append(t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1))
    return out


def heldout_digits_images() -> torch.Tensor:
    from planner.demo.data import digits_split

    images, _ = digits_split("held_out")
    return (images + 1) / 2


def resolve_reference(model: str, extractor, reference_dir=None,
                      generate_reference: Callable[[], torch.Tensor] | None = None,
                      cache: "DiskCache | None" = None, cache_key: dict | None = None) -> Reference:
    """The reference features for `model` under `extractor`.

    reference_dir given -> that folder's images. Demo model -> the held-out digits. Otherwise
    `generate_reference()` (the baseline's outputs on disjoint seeds), cached under `cache_key`.
    """
    from planner.models import DEMO_MODELS

    if reference_dir is not None:
        images = load_image_folder(reference_dir)
        return Reference(extractor(images), f"folder {reference_dir} ({len(images)} images)", extractor.ident)
    if model in DEMO_MODELS:
        images = heldout_digits_images()
        return Reference(extractor(images), f"held-out digits ({len(images)} images)", extractor.ident)
    if generate_reference is None:
        raise PlannerError(f"{model}: no reference set; give --reference DIR")
    key = dict(cache_key or {}, features=extractor.ident) if cache_key is not None else None
    feats = cache.load(key)["features"] if (cache is not None and key is not None and cache.has(key)) else None
    images = None
    if feats is None:
        images = generate_reference()
        feats = extractor(images)
        if cache is not None and key is not None:
            cache.save(key, {"features": feats})
    n = len(feats)
    return Reference(feats, f"baseline outputs on {n} disjoint seeds", extractor.ident)


# ----------------------------------------------------------------------------------------------------
# on-disk cache

def _default_cache_root() -> Path:
    return Path(os.environ.get("PLANNER_CACHE", Path.cwd() / ".planner-cache"))


class DiskCache:
    """safetensors + json entries named by the sha256 of a json key; writes are atomic (tmp + rename)."""

    def __init__(self, root=None) -> None:
        self.root = Path(root) if root is not None else _default_cache_root()

    @staticmethod
    def digest(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _paths(self, key: dict) -> tuple[Path, Path]:
        d = self.digest(key)
        return self.root / f"{d}.safetensors", self.root / f"{d}.json"

    def has(self, key: dict) -> bool:
        tensors, meta = self._paths(key)
        return tensors.exists() and meta.exists()

    def load(self, key: dict) -> dict | None:
        from safetensors.torch import load_file

        tensors, meta = self._paths(key)
        if not (tensors.exists() and meta.exists()):
            return None
        try:
            stored = json.loads(meta.read_text())
            if stored.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
                return None
            return load_file(str(tensors))
        except (OSError, ValueError):
            return None  # a damaged entry is a miss; it is rewritten

    def save(self, key: dict, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        t_path, m_path = self._paths(key)
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, t_path)
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, **(meta or {})}, f, sort_keys=True, default=str, indent=1)
            os.replace(tmp, m_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def generation_key(pipe, request, steps, guidance_scale, sampler: str) -> dict:
    """What determines generated images: weights, pipeline, scheduler, steps, guidance, pairs."""
    from planner.models import denoiser_of, fingerprint

    sched = pipe.scheduler
    pairs = hashlib.sha256(json.dumps([list(map(str, request.conditions)), list(request.seeds)]).encode())
    return {
        "kind": "images",
        "model": fingerprint(denoiser_of(pipe)),
        "pipeline": type(pipe).__name__,
        "sampler": sampler,
        "scheduler": type(sched).__name__,
        "scheduler_config": {k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
        "steps": steps,
        "guidance_scale": guidance_scale,
        "n": len(request),
        "pairs": pairs.hexdigest()[:24],
    }


def cached_generate(pipe, request, steps=None, guidance_scale=None, sampler: str = "", cache: DiskCache | None = None,
                    **extra) -> torch.Tensor:
    """`planner.generation.generate`, memoised on disk by `generation_key`."""
    from planner.generation import generate

    if cache is None:
        return generate(pipe, request, steps=steps, guidance_scale=guidance_scale, **extra)
    key = generation_key(pipe, request, steps, guidance_scale, sampler)
    if extra:
        key["extra"] = {k: str(v) for k, v in sorted(extra.items())}
    hit = cache.load(key)
    if hit is not None:
        return hit["images"]
    images = generate(pipe, request, steps=steps, guidance_scale=guidance_scale, **extra)
    cache.save(key, {"images": images.float()})
    return images


def cached_features(images: torch.Tensor, extractor, cache: DiskCache | None, images_key: dict | None) -> torch.Tensor:
    if cache is None or images_key is None:
        return extractor(images)
    key = dict(images_key, kind="features", features=extractor.ident)
    hit = cache.load(key)
    if hit is not None:
        return hit["features"]
    feats = extractor(images)
    cache.save(key, {"features": feats})
    return feats


# ----------------------------------------------------------------------------------------------------
# evaluation

@dataclass
class ClauseResult:
    clause: Clause
    available: bool
    message: str = ""
    baseline: float | None = None      # the metric on the baseline (relative / distribution clauses)
    candidate: float | None = None     # the metric on the candidate (paired: candidate vs baseline)
    measured: MetricResult | None = None  # the quantity the clause bounds, with its CI
    point: bool | None = None
    conservative: bool | None = None

    def to_dict(self) -> dict:
        return {"clause": str(self.clause), "available": self.available, "message": self.message,
                "baseline": self.baseline, "candidate": self.candidate,
                "measured": None if self.measured is None else self.measured.to_dict(),
                "quantity": self.clause.measured_name, "bound": self.clause.bound,
                "point": self.point, "conservative": self.conservative}


@dataclass
class Evaluation:
    budget: Budget
    results: list[ClauseResult]
    n: int
    reference: str = ""
    features: str = ""

    @property
    def available(self) -> bool:
        return all(r.available for r in self.results)

    @property
    def point_holds(self) -> bool:
        return self.available and all(r.point for r in self.results)

    @property
    def holds(self) -> bool:
        """Every clause holds at its CI's unfavourable end (the conservative verdict)."""
        return self.available and all(r.conservative for r in self.results)

    def verdict(self, mode: str = "conservative") -> bool:
        return self.holds if mode == "conservative" else self.point_holds

    def unavailable_messages(self) -> list[str]:
        return [r.message for r in self.results if not r.available]

    def to_dict(self) -> dict:
        return {"budget": str(self.budget), "n": self.n, "reference": self.reference, "features": self.features,
                "holds": self.holds, "point_holds": self.point_holds,
                "clauses": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        level = next((r.measured.level for r in self.results if r.measured), DEFAULT_LEVEL)
        head = ["clause", "baseline", "candidate", "measured", f"{level:.0%} CI", "N", "holds (point/cons.)"]
        rows = []
        for r in self.results:
            if not r.available:
                rows.append([str(r.clause), "-", "-", "unavailable", "-", "-", "n/a"])
                continue
            m = r.measured
            sign = "+" if r.clause.op in ("+", "-") and m.value >= 0 else ""
            rows.append([str(r.clause), "-" if r.baseline is None else _fmt(r.baseline),
                         "-" if r.candidate is None else _fmt(r.candidate), sign + _fmt(m.value),
                         f"[{_fmt(m.ci_low)}, {_fmt(m.ci_high)}]", str(m.n),
                         f"{'yes' if r.point else 'no'} / {'yes' if r.conservative else 'no'}"])
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _ci(reps: np.ndarray, level: float, value: float | None = None) -> tuple[float, float]:
    from planner.quality.bootstrap import percentile_ci

    return percentile_ci(reps, level, value)


def _fid_fn(feats: np.ndarray, stats: GaussianStats):
    return lambda w: frechet_distance(*weighted_stats(feats, w), stats)


class Evaluator:
    """Checks candidates against one baseline (same conditions and seeds) under one budget.

    baseline, candidate: images in [0, 1], (N, C, H, W), row i of each from the same (condition, seed).
    reference: a `Reference` (needed when the budget has fid or kid clauses).
    extractor: the feature extractor that made the reference (needed for fid/kid).
    conditions: the N conditions (needed for acc and clip).
    """

    def __init__(self, budget: Budget | str, baseline: torch.Tensor, reference: Reference | None = None,
                 extractor=None, conditions=None, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
                 level: float = DEFAULT_LEVEL, baseline_features: torch.Tensor | None = None) -> None:
        self.budget = parse_budget(budget) if isinstance(budget, str) else budget
        self.baseline = baseline
        self.n = len(baseline)
        self.reference, self.extractor, self.conditions = reference, extractor, conditions
        self.n_boot, self.seed, self.level = n_boot, seed, level
        metrics = self.budget.metrics
        self._counts = np.vstack([np.ones((1, self.n), dtype=np.int64), bootstrap_counts(self.n, n_boot, seed)]) \
            if self.n >= 2 and n_boot > 0 else np.ones((1, self.n), dtype=np.int64)
        self._base_reps: dict[str, np.ndarray] = {}
        self._unavailable: dict[str, str] = {}
        self._base_feats = None
        if metrics & {"fid", "kid"}:
            if reference is None or extractor is None:
                raise PlannerError("fid/kid clauses need a reference set and a feature extractor")
            feats = baseline_features if baseline_features is not None else extractor(baseline)
            self._base_feats = feats.double().numpy()
            if self._base_feats.shape[1] != reference.features.shape[1]:
                raise PlannerError("baseline and reference features come from different extractors")
            self._ref_np = reference.features.double().numpy()
            self._kid_ref_term = None
        if "acc" in metrics:
            from planner.quality.features import DigitsFeatures

            self._classifier = DigitsFeatures()
        for metric in metrics - set(paired_metrics_names()):
            try:
                self._base_reps[metric] = self._reps(metric, baseline, self._base_feats)
            except paired_metrics.MetricUnavailable as exc:
                self._unavailable[metric] = str(exc)

    def _over_counts(self, fn) -> np.ndarray:
        return np.array([fn(c.astype(np.float64)) for c in self._counts], dtype=np.float64)

    def _reps(self, metric: str, images, feats) -> np.ndarray:
        if metric == "fid":
            return self._over_counts(_fid_fn(feats, self.reference.stats))
        if metric == "kid":
            state = KIDState(feats, self._ref_np, self._kid_ref_term)
            self._kid_ref_term = state.ref_term
            return self._over_counts(state)
        if metric == "acc":
            from planner.quality.accuracy import per_image_correct

            if self.conditions is None:
                raise PlannerError("acc needs the conditions (class labels) of the samples")
            per = 100.0 * per_image_correct(images, self.conditions, self._classifier)
            return self._counts @ per / self._counts.sum(1)
        if metric == "clip":
            from planner.quality.clip import per_image_clip

            if self.conditions is None:
                raise paired_metrics.MetricUnavailable("clip unavailable: no prompts given")
            per = per_image_clip(images, self.conditions)
            return self._counts @ per / self._counts.sum(1)
        raise PlannerError(f"unknown metric {metric}")

    def _paired_reps(self, metric: str, candidate) -> np.ndarray:
        if metric == "psnr":
            mse = paired_metrics.per_image_mse(candidate, self.baseline)
            pooled = self._counts @ mse / self._counts.sum(1)
            with np.errstate(divide="ignore"):
                return np.where(pooled > 0, 10 * np.log10(1.0 / np.maximum(pooled, 1e-300)), np.inf)
        per = (paired_metrics.per_image_ssim if metric == "ssim" else paired_metrics.per_image_lpips)(
            candidate, self.baseline)
        return self._counts @ per / self._counts.sum(1)

    def evaluate(self, candidate: torch.Tensor, candidate_features: torch.Tensor | None = None) -> Evaluation:
        if len(candidate) != self.n:
            raise PlannerError(f"candidate has {len(candidate)} images, baseline {self.n}; they must pair up")
        metrics = self.budget.metrics
        cand_feats = None
        if metrics & {"fid", "kid"}:
            cand_feats = (candidate_features if candidate_features is not None
                          else self.extractor(candidate)).double().numpy()
        reps, unavailable = {}, dict(self._unavailable)
        for metric in metrics:
            if metric in unavailable:
                continue
            try:
                if metric in paired_metrics_names():
                    reps[metric] = self._paired_reps(metric, candidate)
                else:
                    reps[metric] = self._reps(metric, candidate, cand_feats)
            except paired_metrics.MetricUnavailable as exc:
                unavailable[metric] = str(exc)
        results = []
        for clause in self.budget:
            if clause.metric in unavailable:
                results.append(ClauseResult(clause, False, unavailable[clause.metric]))
                continue
            c = reps[clause.metric]
            b = self._base_reps.get(clause.metric)
            if clause.op in ("+", "-"):
                q = c - b
            elif clause.op == "*":
                with np.errstate(divide="ignore", invalid="ignore"):
                    q = np.where(b > 0, c / np.where(b > 0, b, 1), np.where(c > 0, np.inf, 1.0))
            else:
                q = c
            lo, hi = _ci(q[1:], self.level, float(q[0])) if len(q) > 1 else (float(q[0]), float(q[0]))
            measured = MetricResult(clause.measured_name, float(q[0]), self.n, lo, hi, self.level,
                                    len(q) - 1)
            results.append(ClauseResult(
                clause, True, "", None if clause.paired else float(b[0]) if b is not None else None,
                float(c[0]), measured, clause.holds(measured.value),
                clause.holds(clause.unfavourable(lo, hi))))
        return Evaluation(self.budget, results, self.n,
                          self.reference.source if self.reference is not None else "",
                          getattr(self.extractor, "ident", "") if self.extractor is not None else "")


def paired_metrics_names() -> tuple[str, ...]:
    from planner.quality.budget import PAIRED

    return PAIRED


def evaluate_budget(budget: Budget | str, baseline: torch.Tensor, candidate: torch.Tensor,
                    reference: Reference | None = None, extractor=None, conditions=None,
                    n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> Evaluation:
    """One-shot form of `Evaluator(...).evaluate(candidate)`."""
    return Evaluator(budget, baseline, reference, extractor, conditions, n_boot, seed, level).evaluate(candidate)
