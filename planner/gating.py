"""The CI gate on a live pipeline: do a plan's quality and speed-up still hold, on fresh seeds?

    result = planner.gate(pipe, "plan.yaml", samples=200)     # the pipeline unaccelerated, as loaded
    result.passed, result.cases, result.table

Quality: every budget clause is decided sequentially on seeds neither the plan's search nor its
verification used (and the plan's verification rows where it recorded a prompts file), under the
conservative verdict. Speed: measured side by side with the baseline on the same pipeline (the plan's
techniques suspended for the baseline's runs); it has regressed when even the upper end of the speed-up's
95% CI is below (1 - tolerance) x the plan's (a burst of load on a shared runner is not a regression).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

GATE_SEED = 3_000_000  # fresh seeds: never the plan's search or verification seeds


@dataclass
class GateResult:
    cases: list[tuple[str, bool, str]] = field(default_factory=list)   # (name, passed, detail)
    lines: list[str] = field(default_factory=list)                     # what to print
    cost: dict = field(default_factory=dict)    # wall_s, baseline_image_s, bie (baseline-image equivalents), images

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.cases)


def gate(pipe, plan, *, seed: int = GATE_SEED, samples: int | None = None, repeats: int = 7,
         speed_tolerance: float = 0.1, features: str | None = None, reference: str | None = None,
         strict: bool = False, allow_lora: bool = False, name: str | None = None) -> GateResult:
    """Gate `plan` (a path or a Plan) on `pipe`, which must carry no acceleration; it is left as found."""
    import planner
    from planner.plan import Plan, load_plan
    from planner.quality.budget import parse_budget
    from planner.quality.evaluate import Evaluation
    from planner.search.context import SearchContext, SearchSettings
    from planner.search.latency import interleaved_ratio

    start = time.time()
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    if plan.measured is None:
        from ground.errors import PlannerError

        raise PlannerError("the plan has no measured section to gate against")
    s, m = plan.shapes, plan.measured
    settings = SearchSettings(name=name or plan.model.name, budget=plan.budget, seed=seed, batch=s.batch,
                              height=s.resolution if s.width else None, width=s.width, dtype=s.dtype,
                              conditions=plan.conditions, verify_samples=samples, baseline_steps=m.baseline_steps,
                              guidance_scale=s.guidance_scale, features=features, reference=reference)
    ctx = SearchContext(settings=settings, budget=parse_budget(plan.budget), pipe=pipe,
                        fingerprint=plan.model.fingerprint)   # the baseline is keyed before the plan goes on
    handle = planner.apply(pipe, plan, strict=strict, allow_lora=allow_lora)   # checks the identity
    try:
        with warnings.catch_warnings(), ctx.trial(handle.techniques):
            # Quality images are generated in larger batches than the plan's; its shape warning is noise here.
            warnings.filterwarnings("ignore", message="plan tuned for batch")
            # one look for "holds" (at the cap, 95%); failures may stop it early: a regression gate need
            # not save samples on a plan that holds, and a split over looks would fail plans at the edge
            decision, _ = ctx.decide("verify", holds_at_cap_only=True)
        latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch, repeats=repeats,
                                    on_baseline=handle.techniques.suspend, on_candidate=handle.techniques.resume)
    finally:
        handle.remove()
    floor = m.speedup * (1 - speed_tolerance)
    speed_ok = latency.speedup_ci[1] >= floor
    evaluation = Evaluation(ctx.budget, [decision.results[c] for c in ctx.budget if c in decision.results],
                            decision.largest)
    result = GateResult()
    result.lines += [f"gate ({settings.name}) on fresh seeds from {ctx.requests['verify'].seeds[0]}:", evaluation.table(),
                     f"speed-up {latency.speedup:.2f}x (95% CI {latency.speedup_ci[0]:.2f}-{latency.speedup_ci[1]:.2f}, "
                     f"median of {latency.repeats} interleaved pairs, {latency.threads} thread(s)); plan says "
                     f"{m.speedup:.2f}x, floor {floor:.2f}x: "
                     f"{'holds' if speed_ok else 'REGRESSED (whole CI below the floor)'}"]
    if m.threads and latency.threads != m.threads and str(ctx.anatomy.device) == "cpu":
        result.lines.append(f"note: the plan's speed-up was measured at {m.threads} thread(s), this gate timed "
                            f"{latency.threads}: speed-ups at different thread counts are not comparable")
    for clause in ctx.budget:
        r = decision.results.get(clause)
        if r is None or r.measured is None:
            result.cases.append((str(clause), False, (r.message if r is not None else "") or "not evaluated"))
        else:
            mr = r.measured
            result.cases.append((str(clause), bool(decision.verdicts.get(clause)),
                                 f"{mr.name} = {mr.value:.4g} [{mr.ci_low:.4g}, {mr.ci_high:.4g}] n={mr.n}, "
                                 f"bound {clause.bound:g}"))
    result.cases.append(("speed-up", speed_ok, f"{latency.speedup:.3f}x measured (95% CI {latency.speedup_ci[0]:.3f}-"
                                               f"{latency.speedup_ci[1]:.3f}) vs floor {floor:.3f}x"))
    failed = [n for n, ok, _ in result.cases if not ok]
    wall, image_s = time.time() - start, latency.baseline_s / max(s.batch, 1)
    result.cost = {"wall_s": round(wall, 1), "baseline_image_s": image_s, "bie": round(wall / image_s, 1),
                   "baseline_images_generated": ctx.baseline.generated, "candidate_images": ctx.candidate_images}
    result.lines.append(f"gate cost: {wall:.0f} s = {wall / image_s:.0f} baseline-image equivalents "
                        f"({ctx.baseline.generated} baseline images generated, the rest of its fixed seeds cached "
                        f"in $PLANNER_CACHE; {ctx.candidate_images} candidate images)")
    result.lines.append("gate: PASS" if not failed else "gate: FAIL (" + ", ".join(failed) + ")")
    return result
