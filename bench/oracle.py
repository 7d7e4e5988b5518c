"""The planner's search against an exhaustive grid over the same reduced space (digits-unet, fid+2).

    .venv/bin/python -m bench.oracle            # the default grid, then `planner optimize` (default settings) on it
    .venv/bin/python -m bench.oracle --quick    # 4 grid points, toy sample counts: the plumbing only

The space: sampler × steps × DeepCache (off, or branch 0 at interval k) × precision (fp32, or bf16 except
the in/out convolutions), i.e. the planner's own families `sampler`, `quant`, `cache` restricted with
`SearchSettings.space` to those values.

* Oracle: every grid point is one trial of the planner's own `Objective` on the planner's own
  `SearchContext` (same seeds and baseline, the same fidelity cascade and budget evaluator, the same
  interleaved latency, the same profile-derived DeepCache schedule), enqueued in a separate in-memory
  Optuna study, without the cost model (it is exhaustive). Its feasible points, fastest first, are then
  verified on unseen seeds by the function `planner optimize` uses; the first that holds is its best.
* Planner: `planner.search.optimize.optimize` with default settings, restricted to the same space.
* Both winners are finally timed side by side against the baseline in one session (the speed-ups
  reported at the top level); the speed-ups each verification measured are kept beside them.

Results: bench/results/oracle.json (`--update-readme` also writes the summary line into README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, environment, fmt, now, short_label, update_readme, write_json

FAMILIES = ("sampler", "quant", "cache")
# 3 x 3 x 3 x 2 = 54 points: what fits, with the baseline and the planner's own search, in 30 minutes on 2 cores
GRID = {"samplers": ("ddim", "dpmpp_2m", "unipc"), "steps": (4, 6, 8), "intervals": (0, 2, 3),
        "quant": ("none", "bf16")}
QUICK_GRID = {"samplers": ("unipc",), "steps": (4, 8), "intervals": (0, 2), "quant": ("none",)}


def space_and_points(pipe, grid: dict) -> tuple[dict, list[dict]]:
    """The planner's parameter names -> allowed values, and every distinct grid point as trial params."""
    from search_spaces.quantization import available_modes, mode_param

    qname = mode_param(pipe)
    quant = [q for q in grid["quant"] if q == "none" or q in available_modes(pipe)]   # bf16 only where supported
    intervals = [i for i in grid["intervals"] if i]
    space = {"sampler": list(grid["samplers"]), "steps": list(grid["steps"]),
             "cache": ["none"] + (["deepcache"] if intervals else []), qname: quant}
    if intervals:
        space.update({"deepcache.branch": [0], "deepcache.interval": intervals})
    if any(q != "none" for q in quant):
        space["quant_exclude"] = ["io"]
    points = []
    for sampler, steps, interval, mode in itertools.product(grid["samplers"], grid["steps"], grid["intervals"], quant):
        p = {"sampler": sampler, "steps": steps, "cache": "deepcache" if interval else "none", qname: mode}
        if interval:
            p.update({"deepcache.branch": 0, "deepcache.interval": interval})
        if mode != "none":
            p["quant_exclude"] = "io"
        points.append(p)
    return space, points


def _feasible(study) -> list:
    import optuna

    return sorted((t for t in study.get_trials(deepcopy=False)
                   if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("feasible")),
                  key=lambda t: t.value)


def _evaluation_dict(evaluation) -> dict:
    return {str(r.clause): {"value": r.measured.value, "ci_low": r.measured.ci_low, "ci_high": r.measured.ci_high,
                            "n": r.measured.n, "holds_conservative": r.conservative}
            for r in evaluation.results if r.measured is not None}


def run_oracle(settings, points: list[dict], log) -> tuple[dict, object, object]:
    """Every grid point as a planner trial, then the planner's verification. Returns (report, ctx, best configs)."""
    import optuna

    from backends.technique import NotApplicable, config_from_dict
    from planner.models import denoiser_of, fingerprint, load_pipeline
    from planner.quality.budget import parse_budget
    from planner.search.context import SearchContext
    from planner.search.objective import Objective
    from planner.search.optimize import MAX_VERIFICATIONS, _profile_provider, _verify
    from planner.search.work import flops_of

    base, cand = load_pipeline(settings.model), load_pipeline(settings.model)
    ctx = SearchContext(settings, parse_budget(settings.budget), base, cand, fingerprint(denoiser_of(base)))
    baseline_flops = flops_of(ctx.run_baseline_batch)
    objective = Objective(ctx, list(FAMILIES), _profile_provider(cand, ctx), cost_model=None,
                          baseline_flops=baseline_flops)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # every trial is enqueued, so the sampler never draws; in memory: the grid is not resumed
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=settings.seed))
    for p in points:
        study.enqueue_trial(p)

    def progress(study, trial):
        a = trial.user_attrs
        result = (f"{a['speedup']:.2f}x {'feasible' if a.get('feasible') else 'infeasible'}" if "speedup" in a
                  else a.get("pruned_by", trial.state.name.lower()))
        log(f"[oracle] {trial.number + 1}/{len(points)} {short_label(a.get('techniques', []))}: {result}")

    start = time.time()
    study.optimize(objective, n_trials=len(points), catch=(Exception,), callbacks=[progress])
    search_s, start = time.time() - start, time.time()
    best, verifications = None, 0
    for trial in _feasible(study):
        if verifications == MAX_VERIFICATIONS:
            break
        log(f"[oracle] verifying {short_label(trial.user_attrs['techniques'])} "
            f"on {settings.verify_samples} unseen seeds ...")
        try:
            evaluation, latency, work_ratio, _ = _verify(ctx, objective, trial, baseline_flops)
        except NotApplicable:
            continue
        verifications += 1
        if latency is not None:
            best = {"trial": trial.number, "label": short_label(trial.user_attrs["techniques"]), "params": trial.params,
                    "techniques": trial.user_attrs["techniques"], "search_speedup": trial.user_attrs["speedup"],
                    "verified_speedup": latency.speedup, "verified_speedup_ci": list(latency.speedup_ci),
                    "work_ratio": work_ratio, "verification": _evaluation_dict(evaluation)}
            break
    states = [t.state.name for t in study.trials]
    report = {"evaluations": len(study.trials), "verifications": verifications, "search_s": search_s,
              "verify_s": time.time() - start, "states": {s: states.count(s) for s in sorted(set(states))},
              "feasible": len(_feasible(study)), "best": best,
              "points": [{"params": t.params, "label": short_label(t.user_attrs.get("techniques", [])),
                          "state": t.state.name,
                          "feasible": t.user_attrs.get("feasible"), "speedup": t.user_attrs.get("speedup"),
                          "metrics": t.user_attrs.get("metrics"), "pruned_by": t.user_attrs.get("pruned_by")}
                         for t in study.trials]}
    configs = [config_from_dict(d) for d in best["techniques"]] if best else None
    return report, ctx, configs


def run_planner(settings, log) -> tuple[dict, list | None]:
    """`planner optimize` with default settings on the restricted space, in a fresh study."""
    import optuna

    from planner.errors import BudgetNotMet
    from planner.search.optimize import optimize

    lines = []

    def collect(text: str) -> None:
        lines.append(text)
        log(text)

    with tempfile.TemporaryDirectory() as tmp:
        storage = f"journal:{tmp}/study.journal"
        start = time.time()
        try:
            own = dataclasses.replace(settings, storage=storage, out=f"{tmp}/planner.plan.yaml")
            result = optimize(own, log=collect)
            message = ""
        except BudgetNotMet as exc:
            result, message = None, str(exc)
        wall = time.time() - start
        from optuna.storages.journal import JournalFileBackend

        journal = optuna.storages.JournalStorage(JournalFileBackend(f"{tmp}/study.journal"))
        study = optuna.load_study(study_name=optuna.get_all_study_names(journal)[0], storage=journal)
        finished = [t for t in study.trials if t.state.is_finished()]
        report = {"evaluations": len(finished), "verifications": sum("verifying trial" in s for s in lines),
                  "wall_s": wall, "message": message, "plan": None}
        if result is None:
            return report, None
        plan, trial = result.plan, study.trials[result.plan.provenance.trial]
        report["plan"] = {"trial": trial.number, "label": short_label(trial.user_attrs["techniques"]),
                          "params": trial.params,
                          "techniques": [t.model_dump() for t in plan.techniques],
                          "verified_speedup": plan.measured.speedup,
                          "verified_speedup_ci": list(plan.measured.speedup_ci),
                          "work_ratio": plan.measured.work_ratio,
                          "verification": {m.clause: {"value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
                                                      "n": m.n, "holds_conservative": m.holds_conservative}
                                           for m in plan.measured.metrics}}
        return report, plan.technique_configs()


def side_by_side(ctx, configs_by_name: dict, repeats: int) -> dict:
    """Each winner's latency ratio against the same baseline, one after the other, in one session."""
    from backends.technique import apply_all
    from planner.search.latency import interleaved_ratio

    out = {}
    for name, configs in configs_by_name.items():
        if configs is None:
            out[name] = None
            continue
        handle = apply_all(ctx.cand_pipe, configs)
        try:
            latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch, repeats=repeats)
        finally:
            handle.remove()
        out[name] = {"speedup": latency.speedup, "speedup_ci": list(latency.speedup_ci), "repeats": repeats}
    return out


def _grid_rank(oracle: dict, params: dict | None) -> dict:
    """Where the planner's pick sits in the oracle's grid (fastest feasible on the search seeds = 1)."""
    feasible = sorted((p for p in oracle["points"] if p["feasible"] and p["speedup"]), key=lambda p: -p["speedup"])
    for rank, p in enumerate(feasible, 1):
        if p["params"] == params:
            return {"rank_among_feasible": rank, "of": len(feasible), "oracle_search_speedup": p["speedup"]}
    return {"rank_among_feasible": None, "of": len(feasible), "oracle_search_speedup": None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits-unet")
    parser.add_argument("--budget", default="fid+2")
    parser.add_argument("--samplers", nargs="+", default=list(GRID["samplers"]))
    parser.add_argument("--steps", nargs="+", type=int, default=list(GRID["steps"]))
    parser.add_argument("--intervals", nargs="+", type=int, default=list(GRID["intervals"]),
                        help="DeepCache intervals; 0 = no cache")
    parser.add_argument("--quant", nargs="+", default=list(GRID["quant"]), help="none and/or bf16")
    parser.add_argument("--trials", type=int, default=None, help="planner trials (default: the planner's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 grid points, 16 samples, 2 planner trials")
    parser.add_argument("--out", type=Path, default=RESULTS / "oracle.json")
    parser.add_argument("--update-readme", action="store_true", help="write the summary line into README.md")
    args = parser.parse_args(argv)
    grid = {"samplers": tuple(args.samplers), "steps": tuple(args.steps), "intervals": tuple(args.intervals),
            "quant": tuple(args.quant)}
    import torch

    torch.set_num_threads(args.threads)
    from planner.models import load_pipeline
    from planner.search.context import SearchSettings

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.time()
    extra = {}
    if args.quick:
        grid = QUICK_GRID
        extra = dict(samples=16, cheap_samples=8, verify_samples=16, baseline_steps=10, batch=2, latency_repeats=1,
                     trials=2)
    if args.trials:
        extra["trials"] = args.trials
    space, points = space_and_points(load_pipeline(args.model), grid)
    settings = SearchSettings(model=args.model, budget=args.budget, techniques=FAMILIES, space=space,
                              threads=args.threads, command="python -m bench.oracle", **extra)
    log(f"[oracle] {len(points)} grid points on {args.model}, budget {args.budget}")
    oracle, ctx, oracle_configs = run_oracle(settings, points, log)
    log(f"[oracle] now the planner on the same space ({settings.trials} trials)")
    planner, planner_configs = run_planner(settings, log)
    repeats = max(7, settings.latency_repeats) if not args.quick else 1
    side = side_by_side(ctx, {"oracle": oracle_configs, "planner": planner_configs}, repeats)
    if planner["plan"]:
        planner["plan"]["grid"] = _grid_rank(oracle, planner["plan"]["params"])
    o, p = side["oracle"], side["planner"]
    ratio = p["speedup"] / o["speedup"] if o and p else None
    evals = planner["evaluations"] / oracle["evaluations"] if oracle["evaluations"] else None
    result = {
        "created": now(), "wall_s": time.time() - started, "quick": args.quick,
        "command": "python -m bench.oracle " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(args.threads), "model": args.model, "budget": args.budget, "grid": grid,
        "space": space, "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "space"},
        "oracle_speedup": o and o["speedup"], "planner_speedup": p and p["speedup"], "speedup_ratio": ratio,
        "oracle_verified_speedup": oracle["best"] and oracle["best"]["verified_speedup"],
        "planner_verified_speedup": planner["plan"] and planner["plan"]["verified_speedup"],
        "oracle_evaluations": oracle["evaluations"], "planner_evaluations": planner["evaluations"],
        "evaluations_ratio": evals,
        "targets": {"speedup_ratio_at_least_0.95": None if ratio is None else ratio >= 0.95,
                    "evaluations_ratio_at_most_0.10": None if evals is None else evals <= 0.10},
        "side_by_side": side, "oracle": oracle, "planner": planner}
    write_json(args.out, result)
    line = summary_line(result)
    print(line)
    if args.update_readme and not args.quick:
        update_readme("bench.oracle", line)
    log(f"wrote {args.out} in {time.time() - started:.0f}s")
    return 0


def summary_line(r: dict) -> str:
    o, p = r["oracle"], r["planner"]
    best = o["best"]["label"] if o["best"] else "nothing met the budget"
    plan = p["plan"]["label"] if p["plan"] else "no plan"
    return (f"On {r['model']} at `{r['budget']}`, over {r['oracle_evaluations']} grid points: the oracle's best is "
            f"{fmt(r['oracle_speedup'])}× ({best}); the planner reaches {fmt(r['planner_speedup'])}× ({plan}), "
            f"{fmt(r['speedup_ratio'])} of the oracle, with {r['planner_evaluations']} evaluations "
            f"({fmt(None if r['evaluations_ratio'] is None else 100 * r['evaluations_ratio'], 0)}% of the oracle's); "
            f"speed-ups timed side by side in one session, both verified on the same "
            f"{r['settings']['verify_samples']} unseen seeds.")


if __name__ == "__main__":
    sys.exit(main())
