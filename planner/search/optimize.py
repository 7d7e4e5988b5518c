"""`planner optimize`: profile, baseline, study, verification on unseen seeds, plan and report.

    result = optimize(SearchSettings(model="digits-unet", budget="fid+2"))

The search minimises measured latency (ratio to the baseline, interleaved) subject to the budget
(Optuna constraints, point verdict on the search seeds). The fastest feasible configurations are then
verified on disjoint seeds with more samples and the conservative verdict; the first that holds
becomes the plan. A plan whose verification failed is never written.

Many workers may run the same command against one storage (`--storage`, `--study-name`): each evaluates
trials on its own device until the study holds `--trials` of them; the worker that finds no trial still
running elsewhere writes the plan, the others say so and exit 0. `plan_from_study` selects, verifies and
writes the plan of an existing study without running trials.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from backends.technique import NotApplicable, apply_all, config_from_dict
from ground.environment import current_environment
from ground.errors import BudgetNotMet, PlannerError
from ground.anatomy import denoiser_of
from ground.identity import fingerprint
from planner.models import load_pipeline
from planner.plan import Environment, Measured, MetricResult, ModelRef, Plan, Provenance, Shapes, TechniqueEntry, save_plan
from planner.quality.budget import parse_budget
from planner.search.context import SearchContext, SearchSettings
from planner.search.cost_model import CostModel
from planner.search.latency import interleaved_ratio
from planner.search.objective import Objective
from planner.search.report import write_report
from planner.search.study import (counted, default_study_name, finished, join_study, journal_path, open_storage,
                                  running)
from planner.search.workers import run_trials
from planner.search.work import flops_of
from ground.generation import default_request
from profiler import cached_profile
from search_spaces.compose import DEFAULT_FAMILIES, FAMILIES, within_space

MAX_VERIFICATIONS = 5
# Settings every worker of a study must share (they decide what a trial measures); stored in the study.
MEASUREMENT = ("budget", "batch", "resolution", "samples", "baseline_steps", "guidance_scale", "seed", "features",
               "reference", "techniques", "space")
PER_WORKER = ("storage", "study_name", "out", "threads", "timeout")  # not stored in the study
# Known-good starting points, so the search never does worse than the usual hand-set recipes.
ANCHORS = ({"sampler": "dpmpp_2m", "steps": 20}, {"sampler": "dpmpp_2m", "steps": 10},
           {"sampler": "unipc", "steps": 8}, {"sampler": "ddim", "steps": 12})


@dataclass
class OptimizeResult:
    plan: Plan | None
    plan_path: Path | None
    study_name: str
    storage: str
    trials: int
    report: list[Path] = field(default_factory=list)
    message: str = ""


def _families(requested: tuple[str, ...]) -> list[str]:
    names = list(requested) or list(DEFAULT_FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise PlannerError(f"--techniques: unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    if "sampler" not in names:
        names.insert(0, "sampler")  # the plan always pins sampler and steps: schedules are indexed by step
    return [n for n in FAMILIES if n in names]


def _profile_provider(pipe, ctx):
    """profile_for(sampler config) -> the cached profile of `pipe` at that sampler (the schedules and
    thresholds of the caches are calibrated on it)."""
    request = default_request(pipe, 4, ctx.settings.seed)

    def profile_for(sampler_config):
        return cached_profile(pipe, request, sampler=sampler_config, guidance_scale=ctx.settings.guidance_scale)
    return profile_for


def _check_worker(study: optuna.Study, env: dict, fp: str, measurement: dict | None = None) -> None:
    """Refuse to join a study tuned on other hardware, for another model, or measured differently."""
    name, tuned = study.study_name, study.user_attrs.get("environment")
    if tuned is None:
        study.set_user_attr("environment", env)
        study.set_user_attr("model_fingerprint", fp)
        return
    if tuned.get("device_name") != env["device_name"] or tuned.get("device", "").split(":")[0] != env["device"].split(":")[0]:
        raise PlannerError(f"study {name} was tuned on {tuned.get('device')} ({tuned.get('device_name')}); "
                           f"this worker is {env['device']} ({env['device_name']}): use another --study-name")
    if study.user_attrs.get("model_fingerprint", fp) != fp:
        raise PlannerError(f"study {name} tunes model {study.user_attrs.get('model_fingerprint')}, "
                           f"this worker loaded {fp}: use another --study-name")
    stored = study.user_attrs.get("settings") or {}
    for key, value in (measurement or {}).items():
        if key in stored and stored[key] != json.loads(json.dumps(value)):
            flag = "--guidance" if key == "guidance_scale" else "--" + key.replace("_", "-")
            raise PlannerError(f"study {name} measures with {flag} {stored[key]}, this worker with {value}: "
                               f"start every worker with the same options")


def _verify(ctx, objective, trial, baseline_flops):
    """Re-measure one candidate on unseen seeds; returns (evaluation, latency, work_ratio, setup_s)."""
    configs = [config_from_dict(d) for d in trial.user_attrs["techniques"]]
    handle = apply_all(ctx.cand_pipe, configs)
    try:
        images = ctx.generate_candidate(ctx.verify.request)
        evaluation = ctx.verify.evaluator.evaluate(images)
        if not evaluation.holds:
            return evaluation, None, None, None
        latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch,
                                    repeats=max(7, ctx.settings.latency_repeats))
        setup = sum(float(h.info.get("setup_s", 0.0)) for h in handle.handles)
    finally:
        handle.remove()
    work = objective.counted_work(configs)
    return evaluation, latency, (work / baseline_flops if work and baseline_flops else None), setup


def feasible_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Completed trials that met the budget on the search seeds, fastest first."""
    return sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("feasible")),
                  key=lambda t: t.value)


def verify_fastest(ctx, objective, trials, baseline_flops, log):
    """Verify `trials` in order on unseen seeds, at most MAX_VERIFICATIONS of them; the first that holds wins.
    Returns ((trial, evaluation, latency, work_ratio, setup_s) or None, verifications run).
    TPE may propose one configuration several times; it is verified once (same seeds, same verdict)."""
    tried, seen = 0, set()
    for trial in trials:
        if tried == MAX_VERIFICATIONS:
            break
        key = json.dumps(trial.user_attrs["techniques"], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        log(f"[planner] verifying trial {trial.number} ({trial.user_attrs['label']}) on "
            f"{ctx.settings.verify_samples} unseen seeds ...")
        try:
            evaluation, latency, work_ratio, setup_s = _verify(ctx, objective, trial, baseline_flops)
        except NotApplicable as exc:  # e.g. a resumed study whose trial needs a package this worker lacks
            log(f"[planner]   cannot run here: {exc}")
            continue
        tried += 1
        if latency is None:
            log("[planner]   verification failed (conservative verdict):\n" + _indent(evaluation.table()))
            continue
        log("[planner]   verification holds:\n" + _indent(evaluation.table()))
        return (trial, evaluation, latency, work_ratio, setup_s), tried
    return None, tried


def _plan_for(ctx, trial, evaluation, latency, work_ratio, setup_s, summary) -> Plan:
    s = ctx.settings
    techniques = [TechniqueEntry(**d) for d in trial.user_attrs["techniques"]]
    steps = next((d["params"]["steps"] for d in trial.user_attrs["techniques"] if d["type"] == "sampler"),
                 s.baseline_steps)
    metrics = []
    for r in evaluation.results:
        m = r.measured
        metrics.append(MetricResult(clause=str(r.clause), metric=m.name, value=m.value, ci_low=m.ci_low,
                                    ci_high=m.ci_high, n=m.n, baseline=r.baseline, holds=bool(r.point),
                                    holds_conservative=bool(r.conservative)))
    return Plan(
        model=ModelRef(name=s.model, pipeline=type(ctx.base_pipe).__name__, fingerprint=ctx.fingerprint),
        environment=Environment(**current_environment(s.device)),
        shapes=Shapes(batch=s.batch, resolution=int(ctx.search.images.shape[-1]), steps=steps,
                      guidance_scale=s.guidance_scale),
        budget=str(ctx.budget), techniques=techniques,
        measured=Measured(baseline_steps=s.baseline_steps, baseline_latency_s=latency.baseline_s, plan_latency_s=latency.candidate_s,
                          speedup=latency.speedup, speedup_ci=latency.speedup_ci, work_ratio=work_ratio,
                          latency_repeats=latency.repeats, threads=latency.threads, metrics=metrics,
                          search_seeds=(s.seed, s.samples),
                          verify_seeds=(ctx.verify_request.seeds[0], len(ctx.verify_request)),
                          setup_s=setup_s or None, amortised_over_calls=1000 if setup_s else None),
        provenance=Provenance(command=s.command or f"planner optimize --budget {s.budget} {s.model}",
                              created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              study=summary["study"], storage=summary["storage"], trial=trial.number,
                              trials_run=summary["trials"], search_seconds=round(summary["seconds"], 1)))


@dataclass
class _Session:
    """One worker's view of a search: its study and everything trials are measured against."""
    settings: SearchSettings
    budget: object
    families: list[str]
    study: optuna.Study
    study_name: str
    storage_desc: str
    ctx: SearchContext
    objective: Objective
    baseline_flops: float | None
    start: float


@dataclass(frozen=True)
class Loaded:
    """The pipelines a worker measures with, what they are and where they run."""
    base_pipe: object
    cand_pipe: object
    fingerprint: str
    environment: dict


def _load(settings: SearchSettings) -> Loaded:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    base_pipe = load_pipeline(settings.model, device=settings.device)
    cand_pipe = load_pipeline(settings.model, device=settings.device)
    return Loaded(base_pipe=base_pipe, cand_pipe=cand_pipe, fingerprint=fingerprint(denoiser_of(base_pipe)),
                  environment=current_environment(settings.device))


def _prepare(settings, budget, families, loaded: Loaded, study, study_name, storage_desc, start, log) -> _Session:
    base_pipe, cand_pipe, fp, env = loaded.base_pipe, loaded.cand_pipe, loaded.fingerprint, loaded.environment
    log(f"[planner] {settings.model} ({fp}) on {env['device']} ({env['device_name']}), budget {budget}, "
        f"techniques {','.join(families)}; study {study_name} in {storage_desc}")
    log(f"[planner] baseline: {settings.baseline_steps} steps; generating {settings.samples} search and "
        f"{settings.verify_samples} verification samples (cached on disk after the first run) ...")
    ctx = SearchContext(settings, budget, base_pipe, cand_pipe, fp)
    base_eval = ctx.search.evaluator.evaluate(ctx.search.images)
    for r in base_eval.results:
        if r.baseline is not None:
            log(f"[planner] baseline {r.clause.metric} on {ctx.search.evaluator.n} search samples: {r.baseline:.3f}")
    baseline_flops = flops_of(ctx.run_baseline_batch)
    objective = Objective(context=ctx, families=families,
                          profile_for=_profile_provider(cand_pipe, ctx) if "cache" in families else None,
                          cost_model=CostModel(study, settings.baseline_steps, settings.seed),
                          baseline_flops=baseline_flops)
    return _Session(settings, budget, families, study, study_name, storage_desc, ctx, objective, baseline_flops, start)


def optimize(settings: SearchSettings, log=print) -> OptimizeResult:
    start = time.time()
    if settings.trials < 1:
        raise PlannerError("--trials: must be at least 1")
    budget = parse_budget(settings.budget)
    families = _families(settings.techniques)
    loaded = _load(settings)
    fp, env = loaded.fingerprint, loaded.environment
    measurement = {k: getattr(settings, k) for k in ("budget", "device", "batch", "resolution", "samples",
                                                      "cheap_samples", "baseline_steps", "guidance_scale", "seed",
                                                      "features", "reference")}
    if settings.space:  # a restricted search is a study of its own
        measurement["space"] = sorted((k, list(v)) for k, v in settings.space.items())
    study_name = settings.study_name or default_study_name(settings.model, fp, dict(measurement, techniques=families))
    storage, storage_desc = open_storage(settings.storage, study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = join_study(storage, study_name, settings.seed)
    if created:
        stored = {k: v for k, v in dataclasses.asdict(settings).items() if k not in PER_WORKER}
        study.set_user_attr("settings", json.loads(json.dumps(dict(stored, techniques=families), default=str)))
        study.set_user_attr("environment", env)
        study.set_user_attr("model_fingerprint", fp)
        for anchor in [a for a in ANCHORS if within_space(a, settings.space)][:settings.trials]:
            study.enqueue_trial(anchor, skip_if_exists=True)
    shared = dict({k: getattr(settings, k) for k in MEASUREMENT if k != "techniques"}, techniques=families)
    _check_worker(study, env, fp, shared)
    session = _prepare(settings, budget, families, loaded, study, study_name, storage_desc, start, log)
    run_trials(study, session.objective, settings.trials, settings.timeout,
               heartbeat=isinstance(storage, optuna.storages.RDBStorage), log=log)
    others = running(study)
    if others:
        message = (f"{len(others)} trial(s) still running in other workers ({', '.join(str(t.number) for t in others)}); "
                   f"the worker that finishes last writes the plan, or run: planner plan-from-study "
                   f"--study-name {study_name} --storage {storage_desc}")
        log(f"[planner] {message}")
        return OptimizeResult(None, None, study_name, storage_desc, counted(study), message=message)
    return _select_and_write(session, log)


def plan_from_study(study_name: str, storage_url: str | None = None, out: str | None = None,
                    threads: int | None = None, log=print) -> OptimizeResult:
    """Select, verify and write the plan of an existing study (no new trials), with its stored settings."""
    start = time.time()
    if not (storage_url or os.environ.get("PLANNER_STORAGE")) and not journal_path(study_name).exists():
        raise PlannerError(f"--study-name {study_name}: no such study in {journal_path(study_name).parent}; "
                           f"pass the --storage the workers used")
    storage, storage_desc = open_storage(storage_url, study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise PlannerError(f"--study-name {study_name}: no such study in {storage_desc}") from None
    stored = study.user_attrs.get("settings")
    if not stored:
        raise PlannerError(f"study {study_name} was not created by `planner optimize` (no stored settings)")
    known = {f.name for f in dataclasses.fields(SearchSettings)}
    values = {k: v for k, v in stored.items() if k in known}
    settings = SearchSettings(**dict(values, techniques=tuple(values.get("techniques", ())), storage=storage_url,
                                     study_name=study_name, threads=threads,
                                     out=out or f"{values['model'].strip('/').replace('/', '--')}.plan.yaml"))
    budget = parse_budget(settings.budget)
    loaded = _load(settings)
    _check_worker(study, loaded.environment, loaded.fingerprint)
    others = running(study)
    if others:
        log(f"[planner] note: {len(others)} trial(s) still running; choosing among the {len(finished(study))} finished")
    session = _prepare(settings, budget, list(settings.techniques), loaded, study, study_name, storage_desc, start, log)
    return _select_and_write(session, log)


def _closest(study, budget) -> str:
    """The trial nearest to meeting the budget (smallest worst clause margin, on all search samples or
    on the cascade's first stage when it was pruned there), for the message when none met it."""
    best, best_gap = None, math.inf
    for t in study.get_trials(deepcopy=False):
        values = t.user_attrs.get("metrics") or t.user_attrs.get("cheap")
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
    values = best.user_attrs.get("metrics") or best.user_attrs["cheap"]
    shown = ", ".join(f"{k}: {v:.3g}" for k, v in values.items() if v is not None)
    return f"; closest: trial {best.number} ({best.user_attrs.get('label', '')}) with {shown}"


def _select_and_write(session: _Session, log) -> OptimizeResult:
    settings, study, ctx, budget = session.settings, session.study, session.ctx, session.budget
    start = session.start
    summary = {"model": settings.model, "study": session.study_name, "storage": session.storage_desc,
               "trials": len(finished(study)), "seconds": time.time() - start}
    feasible = feasible_trials(study)
    out = Path(settings.out)
    chosen, plan, message = None, None, ""
    verified, _ = verify_fastest(ctx, session.objective, feasible, session.baseline_flops, log)
    if verified is not None:
        trial, evaluation, latency, work_ratio, setup_s = verified
        summary["seconds"] = time.time() - start
        plan = _plan_for(ctx, trial, evaluation, latency, work_ratio, setup_s, summary)
        chosen = trial.number
    if plan is None:
        best = feasible[0] if feasible else None
        message = (f"no configuration met {budget} on verification; best on the search seeds: "
                   f"{best.user_attrs['label']} at {best.user_attrs['speedup']:.2f}x" if best else
                   f"no configuration met {budget} on the search seeds in {summary['trials']} trials"
                   + _closest(study, budget))
    summary_out = dict(summary, seconds=round(time.time() - start, 1), chosen_trial=chosen)
    report = write_report(study, budget, out, chosen, summary_out)
    if plan is None:
        raise BudgetNotMet(message + f"; no plan written (report: {report[1]})")
    save_plan(plan, out)
    m = plan.measured
    log(f"[planner] wrote {out}: {m.speedup:.2f}x faster than the {settings.baseline_steps}-step baseline "
        f"(95% CI {m.speedup_ci[0]:.2f}-{m.speedup_ci[1]:.2f}; counted work ratio "
        f"{m.work_ratio if m.work_ratio is None else round(m.work_ratio, 3)}), {summary['trials']} trials, "
        f"{time.time() - start:.0f}s; report {report[1]}")
    return OptimizeResult(plan, out, session.study_name, session.storage_desc, summary["trials"], report)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


logging.getLogger("optuna").setLevel(logging.WARNING)
