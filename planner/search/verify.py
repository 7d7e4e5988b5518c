"""The final verification and the plan it produces.

The fastest feasible trials are re-run on seeds (and, with a prompts file, prompts) the search never
saw, on growing sample sizes until the conservative verdict is settled (planner.quality.sequential),
and timed side by side with the baseline with more repeats. The first that holds becomes the plan.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import optuna

from backends.technique import NotApplicable, apply_all, config_from_dict
from ground.environment import current_environment
from ground.identity import components, fingerprint, lora_adapters, structure
from planner.plan import (Environment, Measured, MetricResult, ModelRef, Plan, Provenance, SampleSizes, Shapes,
                          TechniqueEntry)
from planner.quality.evaluate import Evaluation
from planner.search.latency import LatencyResult, interleaved_ratio
from planner.search.objective import setup_seconds

MAX_VERIFICATIONS = 5
VERIFY_REPEATS = 7


@dataclass(frozen=True, kw_only=True)
class Verified:
    trial: optuna.trial.FrozenTrial
    evaluation: Evaluation
    latency: LatencyResult
    work_ratio: float | None
    setup_s: float

    @property
    def prediction_error(self) -> float | None:
        """The trial's probe-scaled latency ratio over this end-to-end one, minus 1."""
        predicted = self.trial.user_attrs.get("latency_ratio")
        return None if not predicted else predicted / self.latency.ratio - 1.0


def is_identity(techniques: list[dict], baseline_steps: int) -> bool:
    """The baseline itself: nothing but its own scheduler at its own step count. It holds any budget
    and speeds nothing up, so it is never a plan."""
    return all(d["type"] == "sampler" and d["params"].get("name") == "keep"
               and d["params"].get("steps") in (None, baseline_steps) for d in techniques)


def feasible_trials(study: optuna.Study, baseline_steps: int) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, other than the baseline itself, that met the budget on the search seeds,
    fastest first."""
    return sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("feasible")
                   and not is_identity(t.user_attrs.get("techniques", []), baseline_steps)),
                  key=lambda t: t.value)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def verify_one(ctx, objective, trial) -> tuple[Evaluation, Verified | None]:
    """Re-measure one candidate on unseen rows: (its evaluation, the verified result or None)."""
    configs = [config_from_dict(d) for d in trial.user_attrs["techniques"]]
    handle = apply_all(ctx.pipe, configs)
    try:
        with ctx.trial(handle):
            decision, _ = ctx.decide("verify")
        results = [decision.results[c] for c in ctx.budget if c in decision.results]
        evaluation = Evaluation(ctx.budget, results, decision.largest)
        if not decision.holds:
            return evaluation, None
        latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch,
                                    repeats=max(VERIFY_REPEATS, ctx.settings.latency_repeats),
                                    on_baseline=handle.suspend, on_candidate=handle.resume)
        # the trial's first build was cold; here inductor's or the exporter's cache may make it look free
        setup = max(setup_seconds(handle), float(trial.user_attrs.get("setup_s") or 0.0))
        handle.suspend()
        work = objective.counted_work(configs) if objective.baseline_flops else None
        handle.resume()
    finally:
        handle.remove()
    ratio = work / objective.baseline_flops if work and objective.baseline_flops else None
    return evaluation, Verified(trial=trial, evaluation=evaluation, latency=latency, work_ratio=ratio, setup_s=setup)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """One candidate sent to verification, and what came of it."""
    trial: optuna.trial.FrozenTrial
    evaluation: Evaluation | None
    verified: Verified | None
    why: str = ""            # why it failed (the clauses that did not hold), or why it could not run


def _why_failed(evaluation: Evaluation) -> str:
    out = []
    for r in evaluation.results:
        if not r.available:
            out.append(f"{r.clause}: {r.message}")
        elif not r.conservative and r.measured is not None:
            m = r.measured
            out.append(f"{r.clause}: {m.name} {m.value:+.3g} [{m.ci_low:.3g}, {m.ci_high:.3g}] at n={m.n}")
    return "; ".join(out) or "did not hold"


def verify_fastest(ctx, objective, trials, log, limit: int = MAX_VERIFICATIONS,
                   seen: set | None = None) -> list[Attempt]:
    """Verify `trials` in order, at most `limit` of them, until one holds (then it is the last attempt).
    TPE may propose one configuration several times; it is verified once (same rows, same verdict)."""
    attempts: list[Attempt] = []
    seen = set() if seen is None else seen
    for trial in trials:
        if len(attempts) == limit:
            break
        key = json.dumps(trial.user_attrs["techniques"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        log(f"[planner] verifying trial {trial.number} ({trial.user_attrs['label']}) on unseen seeds ...")
        try:
            evaluation, verified = verify_one(ctx, objective, trial)
        except NotApplicable as exc:  # e.g. a resumed study whose trial needs a package this worker lacks
            log(f"[planner]   cannot run here: {exc}")
            continue
        attempts.append(Attempt(trial=trial, evaluation=evaluation, verified=verified,
                                why="" if verified is not None else _why_failed(evaluation)))
        verdict = "holds" if verified is not None else "fails (conservative verdict)"
        log(f"[planner]   verification {verdict}:\n" + _indent(evaluation.table()))
        if verified is not None:
            break
    return attempts


def decisions_of(ctx, attempts: list[Attempt], estimator: str) -> dict:
    """Search verdicts against verification verdicts over the verified candidates (plan `decisions`)."""
    rows, agree = [], []
    for a in attempts:
        if a.evaluation is None:
            continue
        results = {str(r.clause): r for r in a.evaluation.results}
        search_values = a.trial.user_attrs.get("metrics") or {}
        search_n = a.trial.user_attrs.get("samples") or {}
        feasible = bool(a.trial.user_attrs.get("feasible"))
        points = []
        for clause in ctx.budget:
            r = results.get(str(clause))
            point = None if r is None or r.measured is None else bool(r.point)
            points.append(point)
            rows.append(dict(trial=a.trial.number, label=a.trial.user_attrs.get("label", ""), clause=str(clause),
                             search_value=search_values.get(str(clause)), search_n=search_n.get(str(clause)),
                             search_feasible=feasible,
                             verify_value=None if r is None or r.measured is None else r.measured.value,
                             verify_n=None if r is None or r.measured is None else r.measured.n,
                             verify_point=point, verify_holds=a.verified is not None, why=a.why))
        if all(p is not None for p in points):
            agree.append(feasible == all(points))
    bias: dict[str, list[float]] = {}
    for row in rows:
        if row["search_value"] is not None and row["verify_value"] is not None:
            bias.setdefault(row["clause"], []).append(row["search_value"] - row["verify_value"])
    return {"estimator": estimator, "agreement": sum(agree) / len(agree) if agree else None,
            "bias": {k: sum(v) / len(v) for k, v in bias.items()}, "rows": rows}


def closest_attempt(attempts: list[Attempt]) -> str:
    """The failed verification nearest its budget, for the message when no plan holds."""
    best, gap = None, float("inf")
    for a in attempts:
        if a.evaluation is None:
            continue
        worst = max((r.measured.value - r.clause.bound if r.clause.upper_bound else r.clause.bound - r.measured.value)
                    if r.measured is not None else float("inf") for r in a.evaluation.results)
        if worst < gap:
            best, gap = a, worst
    if best is None:
        return ""
    return f"; closest on verification: {best.trial.user_attrs.get('label', '')} ({best.why}), {gap:.3g} past the bound"


def plan_for(ctx, verified: Verified, summary: dict) -> Plan:
    s, trial, latency = ctx.settings, verified.trial, verified.latency
    techniques = [TechniqueEntry(**d) for d in trial.user_attrs["techniques"]]
    steps = next((d["params"]["steps"] for d in trial.user_attrs["techniques"] if d["type"] == "sampler"),
                 s.baseline_steps)
    metrics = [MetricResult(clause=str(r.clause), metric=r.measured.name, value=r.measured.value,
                            ci_low=r.measured.ci_low, ci_high=r.measured.ci_high, n=r.measured.n, baseline=r.baseline,
                            holds=bool(r.point), holds_conservative=bool(r.conservative),
                            ci_level=r.measured.level)
               for r in verified.evaluation.results]
    sizes = {f"{phase}.{metric}": SampleSizes(first=z.first, cap=z.cap)
             for phase, per_metric in ctx.sizes.items() for metric, z in per_metric.items()}
    pipe = ctx.pipe
    denoiser = ctx.anatomy.denoiser
    images = ctx.baseline_images("search", 1)
    return Plan(
        model=ModelRef(name=s.name, pipeline=type(pipe).__name__, fingerprint=ctx.fingerprint,
                       structure=structure(denoiser),
                       components={name: fingerprint(m) for name, m in components(pipe).items()},
                       lora=lora_adapters(pipe)),
        environment=Environment(**current_environment(s.device)),
        # `width` only when the search asked for a size: `run` and `gate` then ask for it again, and a
        # pipeline that has only its native size (the class-conditional demo ones) is never asked for one.
        shapes=Shapes(batch=s.batch, resolution=int(images.shape[-2]), width=int(images.shape[-1]) if s.size else None,
                      steps=steps,
                      guidance_scale=s.guidance_scale, dtype=s.dtype),
        conditions=s.conditions,
        budget=str(ctx.budget), techniques=techniques,
        measured=Measured(baseline_steps=s.baseline_steps, baseline_latency_s=latency.baseline_s,
                          plan_latency_s=latency.candidate_s, speedup=latency.speedup,
                          speedup_ci=latency.speedup_ci, work_ratio=verified.work_ratio,
                          latency_repeats=latency.repeats, threads=latency.threads, metrics=metrics,
                          sample_sizes=sizes, search_seeds=(s.seed, ctx.requests["search"].__len__()),
                          verify_seeds=(ctx.requests["verify"].seeds[0], len(ctx.requests["verify"])),
                          setup_s=verified.setup_s or None,
                          amortised_over_calls=s.calls if verified.setup_s else None),
        provenance=Provenance(command=s.command or f"planner optimize --budget {s.budget} {s.name}",
                              created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              study=summary["study"], storage=summary["storage"], trial=trial.number,
                              trials_run=summary["trials"], search_seconds=round(summary["seconds"], 1)))
