"""How long a search will take, said before the work, from one timed baseline batch.

The model is deliberately simple and stated: a baseline image costs what the timed batch cost per image;
a candidate image costs `CANDIDATE_RATIO` of that (the step counts a search tries average about a
quarter of the baseline's, plus the techniques' overhead); a sequential decision usually settles at the
second size of its metric (search) or the third (verification); a trial also times `latency_repeats`
interleaved pairs of a candidate batch and a short probe batch, and counts the FLOPs of one; the session
times the baseline against the probe once; about `VERIFICATIONS` candidates are verified.
Images already on disk from an earlier run cost nothing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ground.generation import generate
from planner.search.latency import PROBE_STEPS

CANDIDATE_RATIO = 0.35
VERIFICATIONS = 1.5
PROBE_FIXED = 0.05       # the probe's fixed parts (VAE, text encoder, call overhead) as a share of a baseline call


@dataclass(frozen=True)
class Estimate:
    baseline_s: float
    trial_s: float
    verification_s: float
    trials: int
    image_s: float = 0.0          # one baseline image at the search's batch (the timed batch / batch)

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.trials * self.trial_s + self.verification_s

    @property
    def bie(self) -> float:
        """The estimate in baseline-image equivalents: total / one baseline image's time."""
        return self.total_s / self.image_s if self.image_s > 0 else float("nan")

    def line(self) -> str:
        return (f"estimate: baseline {_m(self.baseline_s)}, {_m(self.trial_s)} a trial x {self.trials}, "
                f"verification {_m(self.verification_s)}: about {_m(self.total_s)} in all "
                f"(~{self.bie:.0f} baseline-image equivalents at {self.image_s:.3g} s an image)")


def _m(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def expected_size(sizes, doublings: int) -> int:
    """The size a phase's decisions usually reach: the largest metric's first size doubled, capped."""
    return max(min(z.cap, z.first * 2 ** doublings) for z in sizes.values())


def estimate(ctx, trials: int) -> Estimate:
    """Times one baseline batch (the latency batch) and scales it (see the module doc)."""
    s = ctx.settings
    start = time.perf_counter()
    generate(ctx.pipe, ctx.latency_request, steps=s.baseline_steps, guidance_scale=s.guidance_scale,
             batch_size=s.batch)
    batch_s = time.perf_counter() - start
    image_s = batch_s / max(s.batch, 1)
    search_n, verify_n = expected_size(ctx.sizes["search"], 1), expected_size(ctx.sizes["verify"], 2)
    cached = ctx.baseline.cached_rows(ctx.requests["search"].rows(0, search_n)) + \
        ctx.baseline.cached_rows(ctx.requests["verify"].rows(0, verify_n))
    baseline_s = max(search_n + verify_n - cached, 0) * image_s
    # a trial times its candidate against the probe (planner.search.latency.probed_ratio), not the baseline;
    # the session times the baseline end to end once (the anchor)
    probe_s = batch_s * min(1.0, PROBE_STEPS / s.baseline_steps + PROBE_FIXED)
    timing_s = s.latency_repeats * (batch_s * CANDIDATE_RATIO + probe_s) + 2 * batch_s * CANDIDATE_RATIO
    anchor_s = s.latency_repeats * (batch_s + probe_s)
    trial_s = search_n * image_s * CANDIDATE_RATIO + timing_s
    verify_one = verify_n * image_s * CANDIDATE_RATIO + 7 * batch_s * (1 + CANDIDATE_RATIO)
    return Estimate(baseline_s=baseline_s + batch_s + anchor_s, trial_s=trial_s,
                    verification_s=VERIFICATIONS * verify_one, trials=trials, image_s=image_s)
