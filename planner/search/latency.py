"""Latency measured the only way that survives a noisy, shared machine: warm, repeated, interleaved
with the baseline, as the median of per-pair ratios, with the torch thread count fixed.

Counted work (block evaluations weighted by the profile's FLOPs) is reported beside it as a
cross-check that no timing noise can move.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class LatencyResult:
    baseline_s: float          # median seconds per baseline call
    candidate_s: float         # median seconds per candidate call
    ratio: float               # median over repeats of candidate/baseline measured back to back
    ratio_ci: tuple[float, float]
    repeats: int
    threads: int

    @property
    def speedup(self) -> float:
        return 1.0 / self.ratio

    @property
    def speedup_ci(self) -> tuple[float, float]:
        return (1.0 / self.ratio_ci[1], 1.0 / self.ratio_ci[0])


def timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_ci(ratios) -> tuple[float, tuple[float, float]]:
    """Median of per-repeat ratios and a bootstrap 95% CI of that median (seeded: reports are reproducible)."""
    ratios = np.asarray(ratios, dtype=float)
    boots = np.median(np.random.default_rng(0).choice(ratios, size=(1000, len(ratios)), replace=True), axis=1)
    return float(np.median(ratios)), (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975)))


def interleaved_ratio(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int = 5,
                      warmup: int = 1, on_baseline: Callable[[], None] | None = None,
                      on_candidate: Callable[[], None] | None = None) -> LatencyResult:
    """Time baseline and candidate alternately (B, C, C, B, ... so neither always goes first).

    The ratio of each adjacent pair cancels slow drifts of the machine; the median discards bursts
    from competing processes. The 95% CI is a bootstrap of the median of pair ratios. `on_baseline` /
    `on_candidate` run untimed before each side (the search suspends and resumes the trial's
    techniques on its one pipeline there).
    """
    def run(side, prepare):
        if prepare is not None:
            prepare()
        return timed(side)

    for _ in range(warmup):
        run(candidate, on_candidate)
    base_times, cand_times = [], []
    for i in range(repeats):
        if i % 2 == 0:
            b, c = run(baseline, on_baseline), run(candidate, on_candidate)
        else:
            c, b = run(candidate, on_candidate), run(baseline, on_baseline)
        base_times.append(b)
        cand_times.append(c)
    ratio, ratio_ci = median_ci(np.array(cand_times) / np.array(base_times))
    return LatencyResult(
        baseline_s=statistics.median(base_times), candidate_s=statistics.median(cand_times),
        ratio=ratio, ratio_ci=ratio_ci,
        repeats=repeats, threads=torch.get_num_threads())


# ----------------------------------------------------------------------------------------------------
# Trials timed against a short probe instead of the whole baseline

PROBE_STEPS = 2        # the probe: the baseline's own pipeline call at this many steps (fixed parts + 2 steps)
CONTENDED = 1.5        # a probe this much slower than the session's quiet one: another process competes
RETRIES = 3            # times a contended measurement is retried (after a pause) before it is flagged


@dataclass(frozen=True)
class Anchor:
    """The baseline's end-to-end time in units of the probe, measured once per session, interleaved."""
    baseline_s: float      # median seconds per baseline call
    probe_s: float         # median seconds per probe call
    ratio: float           # median of baseline/probe over adjacent pairs
    repeats: int


def measure_anchor(baseline: Callable[[], object], probe: Callable[[], object], repeats: int = 3) -> Anchor:
    """Time the baseline and the probe alternately (after one warm probe): what every trial is scaled by."""
    timed(probe)
    base, prb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            b, p = timed(baseline), timed(probe)
        else:
            p, b = timed(probe), timed(baseline)
        base.append(b)
        prb.append(p)
    return Anchor(baseline_s=statistics.median(base), probe_s=statistics.median(prb),
                  ratio=float(np.median(np.array(base) / np.array(prb))), repeats=repeats)


@dataclass(frozen=True)
class ProbedLatency:
    result: LatencyResult
    contended: bool        # even after RETRIES the probe ran CONTENDED x slower than the anchor's
    probe_slowdown: float  # the probe's median time / the anchor's


def probed_ratio(candidate: Callable[[], object], probe: Callable[[], object], anchor: Anchor, repeats: int = 3,
                 on_probe: Callable[[], None] | None = None, on_candidate: Callable[[], None] | None = None,
                 pause_s: float = 2.0, retries: int = RETRIES) -> ProbedLatency:
    """The candidate's latency ratio to the baseline without timing the baseline: candidate and probe
    alternate (the pair cancels drifts as with the baseline), and the median candidate/probe ratio is
    divided by the anchor's baseline/probe ratio. A trial then costs `repeats` probes (about
    PROBE_STEPS/steps of a baseline call each) instead of `repeats` baseline calls.

    Contention guard: when the probe runs CONTENDED x slower than it did for the anchor, something else
    competes for the cores, and torch (whose OpenMP threads spin-wait) and ONNX Runtime slow by very
    different factors: the measurement is retried after a pause, and flagged when it stays contended."""
    slowdown = 1.0
    for attempt in range(retries + 1):
        result = interleaved_ratio(probe, candidate, repeats=repeats, on_baseline=on_probe, on_candidate=on_candidate)
        slowdown = result.baseline_s / anchor.probe_s
        if slowdown < CONTENDED:
            break
        if attempt < retries:
            time.sleep(pause_s)
    ratio = result.ratio / anchor.ratio
    ci = (result.ratio_ci[0] / anchor.ratio, result.ratio_ci[1] / anchor.ratio)
    scaled = LatencyResult(baseline_s=anchor.baseline_s, candidate_s=result.candidate_s, ratio=ratio, ratio_ci=ci,
                           repeats=result.repeats, threads=result.threads)
    return ProbedLatency(result=scaled, contended=slowdown >= CONTENDED, probe_slowdown=slowdown)
