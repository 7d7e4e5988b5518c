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
"""
from __future__ import annotations

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
