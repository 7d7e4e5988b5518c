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

Reference sets (see `resolve_reference`): a folder of images when given; else the pipeline family's own
reference set where it has one (`Anatomy.reference_images`: the demo's 360 held-out digits); else the
baseline's own outputs on seeds disjoint from the candidate's.
Generated images and features are cached on disk (see `DiskCache`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ground.errors import PlannerError
from planner.quality import paired as paired_metrics
from planner.quality.bootstrap import DEFAULT_BOOT, DEFAULT_LEVEL, DEFAULT_SEED, MetricResult, _fmt, bootstrap_counts
from planner.quality.budget import Budget, Clause, parse_budget
from planner.quality.fid import GaussianStats, KIDState, fid_bias_shift, frechet_distance, weighted_stats
from planner.quality.reference import Reference

REFERENCE_SEED_OFFSET = 1_000_000_000  # reference seeds never meet candidate seeds (N < 1e9)


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
    shift: float = 0.0                 # added to the measured quantity: FID predicted at a larger N (see Evaluator)

    def to_dict(self) -> dict:
        return {"clause": str(self.clause), "available": self.available, "message": self.message,
                "shift": self.shift,
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
        head = ["clause", "baseline", "candidate", "measured", f"{100 * level:.4g}% CI", "N", "holds (point/cons.)"]
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
    classifier: images -> class logits (needed for acc; `Anatomy.label_classifier`).
    fid_at: predict FID at this many samples (`fid_bias_shift`) when evaluating fewer: a decision on 64
        samples then estimates what the 500-sample verification will measure, not a quantity whose
        finite-N bias differs between candidate and baseline. The bootstrap CI is shifted with the point.
    """

    def __init__(self, budget: Budget | str, baseline: torch.Tensor, reference: Reference | None = None,
                 extractor=None, conditions=None, n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED,
                 level: float = DEFAULT_LEVEL, baseline_features: torch.Tensor | None = None,
                 classifier=None, *, fid_at: int | None = None) -> None:
        self.budget = parse_budget(budget) if isinstance(budget, str) else budget
        self.baseline = baseline
        self.n = len(baseline)
        self.reference, self.extractor, self.conditions = reference, extractor, conditions
        self.n_boot, self.seed, self.level = n_boot, seed, level
        self.fid_at = fid_at
        self._base_fid_shift: float | None = None
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
        self._classifier = classifier
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
            if self._classifier is None:
                raise paired_metrics.MetricUnavailable("acc unavailable: this model's family brings no "
                                                       "classifier of its classes; use fid or psnr")
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

    def _fid_shifts(self, cand_feats) -> tuple[float, float]:
        """(candidate, baseline) FID shifts to `fid_at` samples; (0, 0) without `fid_at`."""
        if self.fid_at is None or self.n >= self.fid_at:
            return 0.0, 0.0
        if self._base_fid_shift is None:
            self._base_fid_shift = fid_bias_shift(self._base_feats, self.reference.stats, self.fid_at)
        return fid_bias_shift(cand_feats, self.reference.stats, self.fid_at), self._base_fid_shift

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
            raw = None
            if clause.metric == "fid":
                c_shift, b_shift = self._fid_shifts(cand_feats)
                raw = float(c[0] - b[0]) if clause.op in ("+", "-") else float(c[0])
                c, b = c + c_shift, b + b_shift
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
                clause.holds(clause.unfavourable(lo, hi)),
                shift=0.0 if raw is None or clause.op == "*" else float(q[0]) - raw))
        return Evaluation(self.budget, results, self.n,
                          self.reference.source if self.reference is not None else "",
                          getattr(self.extractor, "ident", "") if self.extractor is not None else "")


def paired_metrics_names() -> tuple[str, ...]:
    from planner.quality.budget import PAIRED

    return PAIRED


def evaluate_budget(budget: Budget | str, baseline: torch.Tensor, candidate: torch.Tensor,
                    reference: Reference | None = None, extractor=None, conditions=None,
                    n_boot: int = DEFAULT_BOOT, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                    classifier=None) -> Evaluation:
    """One-shot form of `Evaluator(...).evaluate(candidate)`."""
    return Evaluator(budget, baseline, reference, extractor, conditions, n_boot, seed, level,
                     classifier=classifier).evaluate(candidate)
