"""The end of a search: verify the fastest feasible trials (stepping back when all fail), record what
the search's verdicts predicted and what the search cost, write the plan and its report."""
from __future__ import annotations

import math
import time
from pathlib import Path

from ground.errors import BudgetNotMet, PlannerError
from planner.plan import Decisions, SearchCost, save_plan
from planner.search.report import write_report
from planner.search.study import counted, finished
from planner.search.verify import MAX_VERIFICATIONS, closest_attempt, decisions_of, feasible_trials, plan_for, verify_fastest

# How the search's FID decisions are made (recorded in the plan's `decisions`; see Evaluator `fid_at`).
FID_ESTIMATOR = "paired dFID, each side's finite-N bias moved to the verification's size (grouped jackknife)"


def _closest(study, budget) -> str:
    """The trial nearest to meeting the budget (smallest worst clause margin), for the message when none met it."""
    best, best_gap = None, math.inf
    for t in study.get_trials(deepcopy=False):
        values = t.user_attrs.get("metrics")
        if not values:
            continue
        gaps = []
        for clause in budget:
            v = values.get(str(clause))
            finite = v is not None and math.isfinite(v)
            gaps.append(math.inf if not finite else v - clause.bound if clause.upper_bound else clause.bound - v)
        if max(gaps) < best_gap:
            best, best_gap = t, max(gaps)
    if best is None:
        return ""
    shown = ", ".join(f"{k}: {v:.3g}" for k, v in best.user_attrs["metrics"].items() if v is not None)
    return f"; closest: trial {best.number} ({best.user_attrs.get('label', '')}) with {shown}"


def _search_cost(session, verified) -> dict:
    """The search's cost in baseline-image equivalents: wall time / one baseline image's time, this run."""
    ctx, batch = session.ctx, max(session.settings.batch, 1)
    if verified is not None:
        image_s = verified.latency.baseline_s / batch            # the verification's warm, interleaved timing
    elif ctx.anchor is not None:
        image_s = ctx.anchor.baseline_s / batch
    else:
        image_s = session.estimate_image_s
    wall = time.time() - session.start
    error = verified.prediction_error if verified is not None else None
    return {"wall_s": round(wall, 1), "baseline_image_s": image_s, "bie": round(wall / image_s, 1),
            "images": ctx.images_generated, "trials": counted(session.study),
            "latency_prediction_error": None if error is None else round(error, 4)}


def _retimed(session, feasible: list, log) -> list:
    """The feasible trials in order of speed, where any that could go to verification but were timed under
    contention (`timing.contended`: the probe stayed slow) are timed again first: torch and ONNX Runtime
    slow by very different factors under load, so such a timing cannot rank them."""
    values = {t.number: t.value for t in feasible}
    for t in feasible[:MAX_VERIFICATIONS]:
        if (t.user_attrs.get("timing") or {}).get("contended"):
            values[t.number] = session.objective.retime(t)
            log(f"[planner] trial {t.number} was timed under contention; timed again: ratio {values[t.number]:.4g}")
    return sorted(feasible, key=lambda t: values[t.number])


def _verify_with_step_back(session, log) -> list:
    """Verify the fastest feasible trials; when all fail, step back to more steps (step_back.py)."""
    from planner.search.step_back import step_back

    seen: set = set()
    feasible = _retimed(session, feasible_trials(session.study, session.settings.baseline_steps), log)
    attempts = verify_fastest(session.ctx, session.objective, feasible, log, seen=seen)
    if (not attempts or attempts[-1].verified is None) and "sampler" in session.families and attempts:
        attempts += step_back(session, attempts, log, seen)
    return attempts


def select_and_write(session, log, recovery: str):
    """Verify, then write the plan and its report; BudgetNotMet when no configuration holds."""
    from planner.search.optimize import OptimizeResult

    settings, study, ctx, budget = session.settings, session.study, session.ctx, session.budget
    summary = {"model": settings.name, "study": session.study_name, "storage": session.storage_desc,
               "trials": len(finished(study)), "seconds": time.time() - session.start,
               "left_out": session.left_out}
    out = Path(settings.out) if settings.out is not None else None   # the Python API may only want the plan
    attempts = _verify_with_step_back(session, log)
    verified = attempts[-1].verified if attempts else None
    decisions = decisions_of(ctx, attempts, FID_ESTIMATOR if "fid" in budget.metrics else "as measured")
    plan, message = None, ""
    if verified is not None:
        summary["seconds"] = time.time() - session.start
        plan = plan_for(ctx, verified, summary)
        cost = _search_cost(session, verified)
        plan = plan.model_copy(update={"measured": plan.measured.model_copy(update={
            "decisions": Decisions(**decisions), "search_cost": SearchCost(**cost)})})
    else:
        cost = _search_cost(session, None)
        feasible = feasible_trials(study, settings.baseline_steps)
        best = feasible[0] if feasible else None
        message = (f"no configuration faster than the baseline met {budget} on verification "
                   f"({len(attempts)} verified){closest_attempt(attempts)}" if best else
                   f"no configuration faster than the baseline met {budget} on the search seeds in {summary['trials']} trials"
                   + _closest(study, budget))
    summary_out = dict(summary, seconds=round(time.time() - session.start, 1),
                       chosen_trial=verified.trial.number if verified else None,
                       baseline_images=ctx.baseline.generated, search_cost=cost, decisions=decisions)
    report = []
    try:
        if out is not None:
            report = write_report(study, budget, out, summary_out["chosen_trial"], summary_out)
        if plan is None:
            raise BudgetNotMet(message + (f"; no plan written (report: {report[1]})" if report else ""))
        if out is not None:
            save_plan(plan, out)
    except OSError as exc:
        raise PlannerError(f"--out {out}: cannot write ({exc.strerror or exc}); the study is kept: "
                           f"{recovery}") from None
    m = plan.measured
    log(f"[planner] {'wrote ' + str(out) if out else 'plan'}: {m.speedup:.2f}x faster than the {settings.baseline_steps}-step baseline "
        f"(95% CI {m.speedup_ci[0]:.2f}-{m.speedup_ci[1]:.2f}; counted work ratio "
        f"{m.work_ratio if m.work_ratio is None else round(m.work_ratio, 3)}), {summary['trials']} trials, "
        f"{time.time() - session.start:.0f}s = {cost['bie']:.0f} baseline-image equivalents "
        f"({cost['images']} images generated, {ctx.baseline.generated} of them baseline quality images)"
        + (f"; report {report[1]}" if report else ""))
    stats = {"baseline_images": ctx.baseline.generated, "candidate_images": ctx.candidate_images,
             "timing_images": dict(ctx.timing_images), "decisions": ctx.decisions, "verifications": len(attempts),
             "seconds": round(time.time() - session.start, 1), "search_cost": cost, "decision_rows": decisions}
    return OptimizeResult(plan, out, session.study_name, session.storage_desc, summary["trials"], report, stats=stats)
