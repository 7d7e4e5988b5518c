"""`planner optimize`: checks, estimate, study, verification on unseen seeds, plan and report.

    result = optimize(SearchSettings(name="digits-unet", budget="fid+2"))           # loads the model
    result = optimize(SearchSettings(name="my-sd", budget="psnr>=30"), pipe=pipe)    # a live pipeline

Everything the user gave is checked before any work: the output path, the budget (every metric must be
computable here), the prompts, the device. The search runs on the one pipeline given or loaded
(techniques applied and removed per trial), minimises measured latency (ratio to the baseline,
interleaved) subject to the budget (Optuna constraints, point verdict on the search seeds, sample sizes
grown until each clause is decided), then verifies the fastest feasible configurations on unseen seeds
under the conservative verdict; the first that holds becomes the plan. A plan whose verification failed
is never written.

Many workers may run the same command against one storage (`--storage`, `--study-name`); the worker
that finds no trial still running elsewhere writes the plan. `plan_from_study` selects, verifies and
writes the plan of an existing study without running trials.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch

from ground.anatomy import anatomy_of
from ground.environment import current_environment
from ground.errors import PlannerError
from ground.files import check_writable
from ground.identity import fingerprint
from planner.models import load_pipeline
from planner.plan import Plan
from planner.quality.availability import check_metrics
from planner.quality.budget import parse_budget
from planner.search.context import SearchContext, SearchSettings
from planner.search.cost_model import CostModel
from backends.compile import supported_backends
from planner.search.estimate import estimate
from planner.search.frontier import OWNER_ATTR, frontier_trials, publish_frontier, step_frontier, wait_for_frontier
from planner.search.families import cannot_help, keep_baseline_sampler, requested_families
from planner.search.logs import quiet_third_party
from planner.search.objective import Objective, load_average
from planner.search.study import (counted, default_study_name, finished, join_study, journal_path, open_storage,
                                  running, worker_id)
from planner.search.select import select_and_write
from planner.search.work import flops_of
from profiler import cached_profile
from search_spaces.compose import within_space

# Settings every worker of a study must share (they decide what a trial measures); stored in the study.
MEASUREMENT = ("budget", "batch", "height", "width", "dtype", "negative_prompt", "samples", "verify_samples",
               "baseline_steps", "guidance_scale", "seed", "features", "reference", "calls", "sample_mode",
               "fid_shift")
PER_WORKER = ("storage", "study_name", "out", "threads", "timeout", "max_minutes", "command", "conditions")


@dataclass
class OptimizeResult:
    plan: Plan | None
    plan_path: Path | None
    study_name: str
    storage: str
    trials: int
    report: list[Path] = field(default_factory=list)
    message: str = ""
    stats: dict = field(default_factory=dict)   # images generated, decisions taken, seconds


@dataclass(kw_only=True)
class _Session:
    """One worker's view of a search: its study and everything trials are measured against."""
    settings: SearchSettings
    budget: object
    families: list[str]
    study: optuna.Study
    study_name: str
    storage: object
    storage_desc: str
    ctx: SearchContext
    objective: Objective
    start: float
    left_out: str | None = None
    estimate_image_s: float = 0.0    # one baseline image's time, from the up-front estimate


def default_out(name: str) -> str:
    return f"{name.strip('/').replace('/', '--') or 'pipeline'}.plan.yaml"


def check_settings(settings: SearchSettings) -> None:
    """What can be checked without the model: one line, exit 2, before anything is loaded."""
    for flag, value, low, high in (("--trials", settings.trials, 1, 100_000), ("--batch", settings.batch, 1, 4096),
                                   ("--baseline-steps", settings.baseline_steps, 1, 1000),
                                   ("--latency-repeats", settings.latency_repeats, 1, 1000),
                                   ("--calls", settings.calls, 1, 10**9)):
        if not low <= value <= high:
            raise PlannerError(f"{flag}: must be {low}..{high}, got {value}")
    for flag, value in (("--samples", settings.samples), ("--verify-samples", settings.verify_samples)):
        if value is not None and not 8 <= value <= 100_000:
            raise PlannerError(f"{flag}: must be 8..100000 (a confidence interval needs at least 8), got {value}")
    if settings.threads is not None and settings.threads < 1:
        raise PlannerError(f"--threads: must be at least 1, got {settings.threads}")
    for flag, value in (("--timeout", settings.timeout), ("--max-minutes", settings.max_minutes)):
        if value is not None and not value > 0:
            raise PlannerError(f"{flag}: must be a positive number of seconds/minutes, got {value}")
    if settings.guidance_scale is not None and not 0 <= settings.guidance_scale <= 100:
        raise PlannerError(f"--guidance: must be a number in [0, 100], got {settings.guidance_scale}")
    for flag, value in (("--height", settings.height), ("--width", settings.width)):
        if value is not None and not 8 <= value <= 16384:
            raise PlannerError(f"{flag}: must be 8..16384 pixels, got {value}")
    parse_budget(settings.budget)
    requested_families(settings.techniques)
    if settings.study_name is not None:
        from planner.search.study import check_study_name

        check_study_name(settings.study_name)
    if settings.out is not None:
        check_writable(settings.out, "--out")


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
        if key in stored and stored[key] != json.loads(json.dumps(value, default=str)):
            flag = {"guidance_scale": "--guidance", "space": "the search space",
                    "prompts": "--prompts"}.get(key, "--" + key.replace("_", "-"))
            raise PlannerError(f"study {name} measures with {flag} {stored[key]}, this worker with {value}: "
                               f"start every worker with the same options")


def _measurement(settings: SearchSettings, families: list[str]) -> dict:
    out = {k: getattr(settings, k) for k in MEASUREMENT}
    out["techniques"] = families
    out["prompts"] = settings.conditions.sha256 if settings.conditions is not None else None
    if settings.space:  # a restricted search is a study of its own
        out["space"] = sorted((k, list(v)) for k, v in settings.space.items())
    return json.loads(json.dumps(out, default=str))


def _profile_provider(pipe, ctx):
    """profile_for(sampler config) -> the cached profile of `pipe` at that sampler (the schedules and
    thresholds of the caches are calibrated on it)."""
    request = ctx.request(4, ctx.settings.seed, "search")

    def profile_for(sampler_config):
        return cached_profile(pipe, request, sampler=sampler_config, guidance_scale=ctx.settings.guidance_scale)
    return profile_for


def _families_here(settings, pipe, ctx, log) -> tuple[list[str], list, str | None]:
    """(families to search, techniques every trial carries, why step cuts and caching were left out)."""
    families = requested_families(settings.techniques)
    profile = None
    if "cache" in families and settings.baseline_steps > 8 and anatomy_of(pipe).distilled() is None:
        profile = cached_profile(pipe, ctx.request(4, settings.seed, "search"), steps=settings.baseline_steps,
                                 guidance_scale=settings.guidance_scale)
    reason = cannot_help(pipe, settings.baseline_steps, profile)
    if reason is None:
        return families, [], None
    rest = [f for f in families if f not in ("sampler", "cache")]
    if not rest:
        raise PlannerError(f"nothing to search: step cuts and caching cannot help ({reason}) and --techniques "
                           f"names nothing else; add quant, tokens or compile to --techniques")
    log(f"[planner] step cuts and caching cannot help: {reason}; searching "
        f"{', '.join(f for f in families if f not in ('sampler', 'cache')) or 'nothing else'} at the baseline's "
        f"own scheduler and {settings.baseline_steps} steps")
    return rest, [keep_baseline_sampler(settings.baseline_steps)], reason


def load_for(settings: SearchSettings, custom_pipeline: str | None = None):
    from ground.devices import parse_dtype, resolve_device

    resolve_device(settings.device)
    return load_pipeline(settings.name, device=settings.device, dtype=parse_dtype(settings.dtype),
                         custom_pipeline=custom_pipeline)


def _prepare(settings: SearchSettings, pipe, log, start: float) -> _Session:
    budget = parse_budget(settings.budget)
    check_metrics(budget, pipe, settings.features, settings.reference)
    if settings.conditions is not None:
        from planner.conditions import check_fits

        check_fits(settings.conditions, pipe)
    fp = fingerprint(anatomy_of(pipe).denoiser)
    env = current_environment(settings.device)
    ctx = SearchContext(settings=settings, budget=budget, pipe=pipe, fingerprint=fp)
    families, fixed, left_out = _families_here(settings, pipe, ctx, log)
    guess = estimate(ctx, settings.trials)
    log(f"[planner] {guess.line()}")
    busy = busy_machine_warning(load_average(), os.cpu_count() or 1, torch.get_num_threads(),
                                os.environ.get("OMP_WAIT_POLICY", ""))
    if busy:
        log(f"[planner] warning: {busy}")
    if settings.max_minutes is not None and guess.total_s > 60 * settings.max_minutes:
        raise PlannerError(f"the search would take about {guess.total_s / 60:.0f} minutes, over --max-minutes "
                           f"{settings.max_minutes:g}; lower --trials or --samples, or raise --max-minutes")
    measurement = _measurement(settings, families)
    study_name = settings.study_name or default_study_name(settings.name, fp, measurement)
    storage, storage_desc = open_storage(settings.storage, study_name)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, created = join_study(storage, study_name, settings.seed)
    if created:
        study.set_user_attr(OWNER_ATTR, worker_id())   # first: a worker joining now waits for our frontier
        stored = {k: v for k, v in dataclasses.asdict(settings).items() if k not in PER_WORKER}
        study.set_user_attr("settings", json.loads(json.dumps(dict(stored, **measurement), default=str)))
        study.set_user_attr("environment", env)
        study.set_user_attr("model_fingerprint", fp)
    _check_worker(study, env, fp, measurement)
    if "sampler" in families and wait_for_frontier(study, log) is None:
        # This worker finds the frontier (it created the study, or the one that did died first), queues
        # its points as the first trials, then publishes it; joiners wait for that (see frontier.py).
        study.set_user_attr(OWNER_ATTR, worker_id())
        frontier = step_frontier(ctx, study, log)
        exporter = "onnx" if "onnx" in supported_backends(anatomy_of(pipe).device) else None
        for params in frontier_trials(frontier, families, exporter, settings.baseline_steps)[:settings.trials]:
            if within_space(params, settings.space):
                study.enqueue_trial(params, skip_if_exists=True)
        publish_frontier(study, frontier)
    log(f"[planner] {settings.name} ({fp}) on {env['device']} ({env['device_name']}), budget {budget}, "
        f"techniques {','.join(families) or 'none'}; study {study_name} in {storage_desc}")
    baseline_flops = flops_of(ctx.run_baseline_batch)
    objective = Objective(context=ctx, families=families, fixed=fixed,
                          profile_for=_profile_provider(pipe, ctx) if "cache" in families else None,
                          cost_model=CostModel(study, settings.baseline_steps, settings.seed),
                          baseline_flops=baseline_flops)
    return _Session(settings=settings, budget=budget, families=families, study=study, study_name=study_name,
                    storage=storage, storage_desc=storage_desc, ctx=ctx, objective=objective, start=start, left_out=left_out,
                    estimate_image_s=guess.image_s)


def busy_machine_warning(load: float | None, cores: int, threads: int, wait_policy: str) -> str | None:
    """A warning when other processes compete for the cores (the 1-minute load, which includes this
    process's own estimate, exceeds the cores). torch's OpenMP threads then spin-wait for each other: with
    one core busy, a 10-step digits-unet batch at 2 threads took 6.37 s instead of 0.29 s, while ONNX
    Runtime barely slowed, so speed-ups between torch and ONNX trials come out many times too high.
    OMP_WAIT_POLICY=PASSIVE (0.41 s loaded, but 1.7x slower on quiet cores) or fewer threads avoid it."""
    if load is None or load <= cores + 0.5 or wait_policy.strip().lower() == "passive":
        return None
    return (f"the machine is busy (load {load:.1f} on {cores} cores): torch threads spin-wait under competition "
            f"and time many times slower than ONNX Runtime does, which distorts speed-ups; search on quiet cores, "
            f"or with --threads {max(1, min(threads, cores) - 1)}, or with OMP_WAIT_POLICY=PASSIVE")


def optimize(settings: SearchSettings, pipe=None, log=print, verbose: bool = False,
             custom_pipeline: str | None = None) -> OptimizeResult:
    """Search a plan for `pipe` (or for the model `settings.name`, loaded here)."""
    from planner.search.workers import run_trials

    start = time.time()
    check_settings(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with quiet_third_party(verbose, log):
        pipe = pipe if pipe is not None else load_for(settings, custom_pipeline)
        session = _prepare(settings, pipe, log, start)
        study = session.study
        run_trials(study, session.objective, settings.trials, settings.timeout,
                   heartbeat=isinstance(session.storage, optuna.storages.RDBStorage), log=log)
        others = running(study)
        if others:
            message = (f"{len(others)} trial(s) still running in other workers "
                       f"({', '.join(str(t.number) for t in others)}); the worker that finishes last writes the "
                       f"plan, or run: {recovery_command(session)}")
            log(f"[planner] {message}")
            return OptimizeResult(None, None, session.study_name, session.storage_desc, counted(study), message=message)
        return select_and_write(session, log, recovery_command(session))


def recovery_command(session: _Session) -> str:
    storage = "" if session.settings.storage is None else f" --storage {session.storage_desc}"
    return f"planner plan-from-study --study-name {session.study_name}{storage} --out PATH"


def plan_from_study(study_name: str, storage_url: str | None = None, out: str | None = None,
                    threads: int | None = None, model: str | None = None, log=print) -> OptimizeResult:
    """Select, verify and write the plan of an existing study (no new trials), with its stored settings."""
    start = time.time()
    if not (storage_url or os.environ.get("PLANNER_STORAGE")) and not journal_path(study_name).exists():
        raise PlannerError(f"--study-name {study_name}: no such study in {journal_path(study_name).parent}; "
                           f"pass the --storage the workers used")
    if out is not None:
        check_writable(out, "--out")
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
    if stored.get("prompts"):
        raise PlannerError(f"study {study_name} was searched on a prompts file; rerun `planner optimize` with "
                           "the same --prompts to write its plan")
    settings = SearchSettings(**dict(values, techniques=tuple(values.get("techniques", ())), storage=storage_url,
                                     study_name=study_name, threads=threads, name=model or values["name"],
                                     out=out or default_out(values["name"]),
                                     space=dict(values["space"]) if values.get("space") else None))
    if threads:
        torch.set_num_threads(threads)
    with quiet_third_party(False, log):
        pipe = load_for(settings)
        _check_worker(study, current_environment(settings.device), fingerprint(anatomy_of(pipe).denoiser))
        others = running(study)
        if others:
            log(f"[planner] note: {len(others)} trial(s) still running; choosing among the {len(finished(study))} finished")
        session = _prepare(settings, pipe, log, start)
        return select_and_write(session, log, recovery_command(session))
