"""Sequential decisions: evaluate a budget on growing sample sizes until each clause is decided.

The metric's kind sets a clause's sizes. A paired per-image metric (psnr, ssim, lpips) compares each
image with the baseline's own on the same seed: its CI narrows as sd/sqrt(N) of per-image differences
and starts at 16 samples. A per-image mean of the candidate alone (acc, clip) starts at 32. A
distribution metric (fid, kid) needs hundreds and starts at 64. Sizes double up to the phase's cap
(search or verification; `--samples` / `--verify-samples` override the caps).

A clause is decided as soon as its CI no longer straddles the bound: it holds when even the CI's
unfavourable end holds, it fails when even the favourable end fails. A clause still undecided at its cap
gets the phase's verdict there: the point verdict in the search, the conservative one (it does not hold)
in the final verification. One failed clause ends the evaluation: the budget cannot hold any more.

Looking at the data several times and stopping at the first look whose CI settles "holds" makes a false
"holds" more likely than one look would: for a candidate exactly at the bound, 95% CIs at PSNR's 5 looks
(16..256) say "holds" 9.5% of the time, FID's 4 looks (64..500) 7.2%, where one look at the cap says it
2.5% of the time (simulated, normal per-sample errors). The verification therefore splits its error over
the looks (Bonferroni): with k looks each CI is at level 1 - 0.05 / k (98.75% for FID, 99% for PSNR), which
brings both back to about 2.5% (2.1% and 2.8% in the same simulation). The search's decisions keep 95%:
they only rank candidates; every claim a plan makes comes from its verification. With skewed per-image
errors (exponential MSE) the percentile bootstrap also under-covers at 16 samples: there the rate fell
from 17% to 6.7% (tests/planner/test_sequential.py), not to 2.5%.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from planner.quality.budget import Budget, Clause

KIND = {"psnr": "paired", "ssim": "paired", "lpips": "paired", "acc": "mean", "clip": "mean",
        "fid": "distribution", "kid": "distribution"}
FIRST = {"paired": 16, "mean": 32, "distribution": 64}
CAP = {"search": {"paired": 128, "mean": 200, "distribution": 200},
       "verify": {"paired": 256, "mean": 500, "distribution": 500}}
VERDICT = {"search": "point", "verify": "conservative"}


@dataclass(frozen=True)
class Sizes:
    """Evaluate on `first` samples, then twice as many, ... up to `cap`."""

    first: int
    cap: int

    def schedule(self) -> list[int]:
        out, n = [], self.first
        while n < self.cap:
            out.append(n)
            n *= 2
        return out + [self.cap]


# The fixed sizes every clause got before sequential decisions (bench/search_cost.py compares): a first
# stage of 64 that only prunes hopeless trials, then 200 per trial, and 500 to verify.
FIXED = {"search": (64, 200), "verify": (500, 500)}


def looks(sizes: dict[str, Sizes]) -> int:
    """How many times a decision over `sizes` can stop for "holds": one per size of the longest schedule."""
    return max((len(s.schedule()) for s in sizes.values()), default=1)


def ci_level(phase: str, sizes: dict[str, Sizes], mode: str = "sequential", level: float = 0.95) -> float:
    """The CI level of every look: `level` in the search and in the fixed scheme (which can only stop for
    "holds" at its cap), `level` split over the looks (Bonferroni) in a sequential verification."""
    if phase != "verify" or mode == "fixed":
        return level
    return 1.0 - (1.0 - level) / looks(sizes)


def boot_replicates(level: float, budget: Budget, default: int = 200) -> int:
    """Bootstrap replicates for CIs at `level`: enough that each tail holds about 10 of them (5 for FID/KID,
    whose replicates cost a matrix square root each on 2048-d Inception features); 200 at 95%."""
    per_tail = 5 if budget.metrics & {"fid", "kid"} else 10
    return max(default, math.ceil(2 * per_tail / (1.0 - level) - 1e-9))


def sizes_for(budget: Budget, phase: str, cap: int | None = None, mode: str = "sequential") -> dict[str, Sizes]:
    """Per metric of `budget`: its sizes in `phase` ("search" or "verify"); `cap` overrides every cap.
    mode "fixed": the sizes of the fixed scheme above, whatever the metric."""
    out = {}
    for metric in sorted(budget.metrics):
        kind = KIND[metric]
        if mode == "fixed":
            first, top = FIXED[phase]
            top = cap if cap is not None else top
            out[metric] = Sizes(first=min(first, top), cap=top)
            continue
        top = cap if cap is not None else CAP[phase][kind]
        out[metric] = Sizes(first=min(FIRST[kind], top), cap=top)
    return out


@dataclass
class Decision:
    """What the sequential evaluation found: per clause its last result and how it was decided."""

    results: dict[Clause, object] = field(default_factory=dict)     # clause -> ClauseResult (last evaluated)
    how: dict[Clause, str] = field(default_factory=dict)            # "decided" | "at cap" | "not reached"
    verdicts: dict[Clause, bool] = field(default_factory=dict)
    largest: int = 0                                                # samples of the largest evaluation

    @property
    def holds(self) -> bool:
        return bool(self.verdicts) and all(self.verdicts.values()) and len(self.verdicts) == len(self.results)

    def failed(self) -> list[Clause]:
        return [c for c, ok in self.verdicts.items() if not ok]


def _decided(result) -> bool | None:
    """True/False when the CI settles the clause, None while it straddles the bound."""
    if not result.available or result.measured is None:
        return False
    m, clause = result.measured, result.clause
    favourable = m.ci_low if clause.upper_bound else m.ci_high
    if clause.holds(clause.unfavourable(m.ci_low, m.ci_high)):
        return True
    if not clause.holds(favourable):
        return False
    return None


def decide(budget: Budget, sizes: dict[str, Sizes], evaluate: Callable[[int, Budget], object],
           phase: str, on_size: Callable[[int, Decision], None] | None = None,
           stop_when_holding: bool = True) -> Decision:
    """Run `evaluate(n, sub_budget) -> Evaluation` on growing n until every clause is decided or capped.

    `on_size(n, decision)` is told after each size (progress; a caller may stop by raising).
    `stop_when_holding=False` is the fixed scheme: only a clause decided to fail stops early."""
    verdict = VERDICT[phase]
    pending = list(budget)
    decision = Decision()
    for n in sorted({n for s in sizes.values() for n in s.schedule()}):
        active = [c for c in pending if sizes[c.metric].first <= n <= sizes[c.metric].cap
                  and (n in sizes[c.metric].schedule())]
        if not active:
            continue
        evaluation = evaluate(n, Budget(tuple(active)))
        decision.largest = max(decision.largest, n)
        for result in evaluation.results:
            clause = result.clause
            decision.results[clause] = result
            settled = _decided(result)
            if settled is True and not stop_when_holding:
                settled = None
            if settled is None and n < sizes[clause.metric].cap:
                continue
            if settled is None:
                ok = bool(result.point) if verdict == "point" else bool(result.conservative)
                decision.how[clause] = "at cap"
            else:
                ok = settled
                decision.how[clause] = "decided"
            decision.verdicts[clause] = ok
            pending.remove(clause)
        if on_size is not None:
            on_size(n, decision)
        if decision.failed() or not pending:
            break
    for clause in pending:
        decision.how.setdefault(clause, "not reached")
    return decision
