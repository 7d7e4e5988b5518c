"""The planner's search against an exhaustive grid over the same reduced space (digits-unet, fid+2).

    .venv/bin/python -m bench.oracle            # the default grid (54 points), then `planner optimize` on it
    .venv/bin/python -m bench.oracle --grid large --workers 2   # 216 points over 2 processes
    .venv/bin/python -m bench.oracle --quick    # 4 grid points, toy sample counts: the plumbing only

The space: sampler × steps × DeepCache (off, or branch 0 at interval k) × precision (fp32, or bf16 except
the in/out convolutions), i.e. the planner's own families `sampler`, `quant`, `cache` restricted with
`SearchSettings.space` to those values.

* Oracle: every grid point is one trial of the planner's own `Objective` on the planner's own
  `SearchContext` (same seeds and baseline, the same fidelity cascade and budget evaluator, the same
  interleaved latency, the same profile-derived DeepCache schedule), enqueued in a separate in-memory
  Optuna study, without the cost model (it is exhaustive), optionally split over worker processes. Its feasible points, fastest first, are then
  verified on unseen seeds by the function `planner optimize` uses; the first that holds is its best.
* Planner: `planner.search.optimize.optimize` with default settings, restricted to the same space.
* Both winners and the baseline are finally timed in rotating order within every repeat, in one session
  (one pipeline per process throughout: the grid, the planner's search and the timing share it) (the speed-ups reported at the top level, and their ratio measured per
  repeat); the speed-ups each verification measured are kept beside them.

Results: bench/results/oracle.json or oracle-large.json (`--update-readme` also writes the summary line into README.md).
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
from bench.oracle_grid import FAMILIES, evaluate_grid

GRIDS = {
    # 3 x 3 x 3 x 2 = 54 points: what fits, with the planner's own search, in 30 minutes on 2 cores
    "default": {"samplers": ("ddim", "dpmpp_2m", "unipc"), "steps": (4, 6, 8), "intervals": (0, 2, 3),
                "quant": ("none", "bf16")},
    # 4 x 6 x 3 x 3 = 216 points: the planner's 20 trials are <= 10% of it (about 45 minutes with 2 workers)
    "large": {"samplers": ("ddim", "euler", "dpmpp_2m", "unipc"), "steps": (3, 4, 5, 6, 8, 10),
              "intervals": (0, 2, 3), "quant": ("none", "bf16", "int8_dynamic")},
}
GRID = GRIDS["default"]
QUICK_GRID = {"samplers": ("unipc",), "steps": (4, 8), "intervals": (0, 2), "quant": ("none",)}


def space_and_points(pipe, grid: dict) -> tuple[dict, list[dict]]:
    """The planner's parameter names -> allowed values, and every distinct grid point as trial params."""
    from search_spaces.quantization import EXCLUDE_PARAM, MODE_PARAM, available_modes

    qname = MODE_PARAM
    quant = [q for q in grid["quant"] if q == "none" or q in available_modes(pipe)]   # bf16 only where supported
    intervals = [i for i in grid["intervals"] if i]
    space = {"sampler": list(grid["samplers"]), "steps": list(grid["steps"]),
             "cache": ["none"] + (["deepcache"] if intervals else []), qname: quant}
    if intervals:
        space.update({"deepcache.branch": [0], "deepcache.interval": intervals})
    if any(q != "none" for q in quant):
        space[EXCLUDE_PARAM] = ["io"]
    points = []
    for sampler, steps, interval, mode in itertools.product(grid["samplers"], grid["steps"], grid["intervals"], quant):
        p = {"sampler": sampler, "steps": steps, "cache": "deepcache" if interval else "none", qname: mode}
        if interval:
            p.update({"deepcache.branch": 0, "deepcache.interval": interval})
        if mode != "none":
            p[EXCLUDE_PARAM] = "io"
        points.append(p)
    return space, points


def unsearchable(pipe, space: dict, points: list[dict]) -> str | None:
    """Why a grid point is not one the planner's own search could propose (a value outside a family's
    range, such as a step count it never tries), or None: checked before any point is measured."""
    import optuna

    from ground.errors import PlannerError
    from search_spaces.compose import suggest_configs

    for p in points:
        try:
            suggest_configs(optuna.trial.FixedTrial(p), pipe, list(FAMILIES), None, space=space)
        except (PlannerError, ValueError) as exc:
            return str(exc)
    return None


def _evaluation_dict(evaluation) -> dict:
    return {str(r.clause): {"value": r.measured.value, "ci_low": r.measured.ci_low, "ci_high": r.measured.ci_high,
                            "n": r.measured.n, "holds_conservative": r.conservative}
            for r in evaluation.results if r.measured is not None}


def run_oracle(settings, points: list[dict], log, workers: int = 1, pipe=None) -> tuple[dict, object, object]:
    """Every grid point as a planner trial, then the planner's verification. Returns (report, ctx, best configs)."""
    from backends.technique import config_from_dict
    from planner.search.verify import feasible_trials, verify_fastest

    grid = evaluate_grid(settings, points, log, workers=workers, pipe=pipe)
    study, ctx = grid.study, grid.ctx
    start = time.time()
    feasible = feasible_trials(study, settings.baseline_steps)
    verified, verifications = verify_fastest(ctx, grid.objective, feasible, log)
    best = None
    if verified is not None:
        trial, latency = verified.trial, verified.latency
        best = {"trial": trial.number, "label": short_label(trial.user_attrs["techniques"]), "params": trial.params,
                "techniques": trial.user_attrs["techniques"], "search_speedup": trial.user_attrs["speedup"],
                "verified_speedup": latency.speedup, "verified_speedup_ci": list(latency.speedup_ci),
                "work_ratio": verified.work_ratio, "verification": _evaluation_dict(verified.evaluation)}
    states = [t.state.name for t in study.trials]
    report = {"evaluations": len(study.trials), "verifications": verifications, "workers": grid.workers,
              "search_s": grid.seconds, "verify_s": time.time() - start,
              "states": {s: states.count(s) for s in sorted(set(states))},
              "feasible": len(feasible), "best": best,
              "points": [{"params": t.params, "label": short_label(t.user_attrs.get("techniques", [])),
                          "state": t.state.name,
                          "feasible": t.user_attrs.get("feasible"), "speedup": t.user_attrs.get("speedup"),
                          "metrics": t.user_attrs.get("metrics"), "pruned_by": t.user_attrs.get("pruned_by")}
                         for t in study.trials]}
    configs = [config_from_dict(d) for d in best["techniques"]] if best else None
    return report, ctx, configs


def run_planner(settings, log, pipe=None) -> tuple[dict, list | None]:
    """`planner optimize` with default settings on the restricted space, in a fresh study, on `pipe` (the
    grid's pipeline: one per process; the search leaves it as it found it) or on a pipeline it loads."""
    import optuna

    from ground.errors import BudgetNotMet
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
            result = optimize(own, pipe=pipe, log=collect)
            message = ""
        except BudgetNotMet as exc:
            result, message = None, str(exc)
        wall = time.time() - start
        from optuna.storages.journal import JournalFileBackend

        journal = optuna.storages.JournalStorage(JournalFileBackend(f"{tmp}/study.journal"))
        study = optuna.load_study(study_name=optuna.get_all_study_names(journal)[0], storage=journal)
        from planner.search.frontier import PROBES_ATTR
        from planner.search.study import counted

        finished = [t for t in study.trials if t.state.is_finished()]
        # evaluations: the configurations measured (what --trials counts); a configuration TPE proposes again
        # is given its earlier measurement and is not one. The frontier's probes measure quality only.
        report = {"evaluations": counted(study), "trials_in_study": len(finished),
                  "frontier_quality_probes": study.user_attrs.get(PROBES_ATTR, 0),
                  "verifications": sum("verifying trial" in s for s in lines),
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
    """The baseline and each winner, timed in rotating order within every repeat, in one session: per-repeat
    ratios cancel the machine's drift, and oracle/planner is measured directly. One pipeline (the context's):
    before each of a winner's timed runs its techniques are applied and the batch run once untimed (a
    warm-up, as the search does before timing); they are removed after it."""
    import numpy as np

    from backends.technique import apply_all
    from planner.search.latency import timed, median_ci

    def winner(configs):
        def run():
            handle = apply_all(ctx.pipe, configs)
            try:
                ctx.run_candidate_batch()   # warm-up, untimed
                return timed(ctx.run_candidate_batch)
            finally:
                handle.remove()
        return run

    runs = {"baseline": lambda: timed(ctx.run_baseline_batch)}
    runs.update({name: winner(configs) for name, configs in configs_by_name.items() if configs is not None})
    order, times = list(runs), {name: [] for name in runs}
    for i in range(repeats):
        for name in order[i % len(order):] + order[:i % len(order)]:
            times[name].append(runs[name]())

    base = np.asarray(times["baseline"])
    out = {name: None for name in configs_by_name}
    for name in runs:
        if name != "baseline":
            speedup, ci = median_ci(base / np.asarray(times[name]))
            out[name] = {"speedup": speedup, "speedup_ci": list(ci), "repeats": repeats,
                         "median_s": float(np.median(times[name]))}
    if out.get("oracle") and out.get("planner"):
        ratio, ci = median_ci(np.asarray(times["oracle"]) / np.asarray(times["planner"]))
        out["planner_over_oracle"] = {"ratio": ratio, "ci": list(ci)}
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
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default",
                        help="the grid's default values; --samplers/--steps/--intervals/--quant override them")
    parser.add_argument("--budget", default="fid+2")
    parser.add_argument("--samplers", nargs="+")
    parser.add_argument("--steps", nargs="+", type=int)
    parser.add_argument("--intervals", nargs="+", type=int, help="DeepCache intervals; 0 = no cache")
    parser.add_argument("--quant", nargs="+", help="none, bf16, int8_dynamic (those the device supports)")
    parser.add_argument("--workers", type=int, default=1,
                        help="grid worker processes, one torch thread each (the planner's search stays one process)")
    parser.add_argument("--trials", type=int, default=None, help="planner trials (default: the planner's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 grid points, 16 samples, 2 planner trials")
    parser.add_argument("--out", type=Path, help="default: bench/results/oracle.json (oracle-large.json for --grid large)")
    parser.add_argument("--update-readme", action="store_true", help="write the summary line into README.md")
    args = parser.parse_args(argv)
    grid = {key: tuple(getattr(args, key) or default) for key, default in GRIDS[args.grid].items()}
    suffix = "" if args.grid == "default" else "-" + args.grid
    out = args.out or RESULTS / f"oracle{suffix}.json"
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
        extra = dict(samples=16, verify_samples=16, baseline_steps=10, batch=2, latency_repeats=1, trials=2)
    if args.trials:
        extra["trials"] = args.trials
    pipe = load_pipeline(args.model)
    space, points = space_and_points(pipe, grid)
    problem = unsearchable(pipe, space, points)
    if problem:
        parser.error(f"grid: {problem}")
    settings = SearchSettings(name=args.model, budget=args.budget, techniques=FAMILIES, space=space,
                              threads=args.threads, command="python -m bench.oracle", **extra)
    log(f"[oracle] {len(points)} grid points on {args.model}, budget {args.budget}")
    oracle, ctx, oracle_configs = run_oracle(settings, points, log, workers=args.workers, pipe=pipe)
    if not oracle["states"].get("COMPLETE"):
        log(f"[oracle] no grid point completed ({oracle['states']}); see the first failure above")
        return 1
    log(f"[oracle] now the planner on the same space ({settings.trials} trials)")
    planner, planner_configs = run_planner(settings, log, pipe=ctx.pipe)
    repeats = max(9, settings.latency_repeats) if not args.quick else 1
    side = side_by_side(ctx, {"oracle": oracle_configs, "planner": planner_configs}, repeats)
    if planner["plan"]:
        planner["plan"]["grid"] = _grid_rank(oracle, planner["plan"]["params"])
    o, p = side["oracle"], side["planner"]
    # measured directly (oracle time / planner time, per repeat) when both exist
    ratio = side["planner_over_oracle"]["ratio"] if o and p else None
    same = bool(oracle_configs and planner_configs
                and [c.to_dict() for c in oracle_configs] == [c.to_dict() for c in planner_configs])
    evals = planner["evaluations"] / oracle["evaluations"] if oracle["evaluations"] else None
    result = {
        "created": now(), "wall_s": time.time() - started, "quick": args.quick,
        "command": "python -m bench.oracle " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(args.threads), "grid_name": args.grid, "model": args.model, "budget": args.budget, "grid": grid,
        "space": space, "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "space"},
        "oracle_speedup": o and o["speedup"], "planner_speedup": p and p["speedup"], "speedup_ratio": ratio,
        "same_configuration": same,
        "oracle_verified_speedup": oracle["best"] and oracle["best"]["verified_speedup"],
        "planner_verified_speedup": planner["plan"] and planner["plan"]["verified_speedup"],
        "oracle_evaluations": oracle["evaluations"], "planner_evaluations": planner["evaluations"],
        "evaluations_ratio": evals,
        "targets": {"speedup_ratio_at_least_0.95": None if ratio is None else ratio >= 0.95,
                    "evaluations_ratio_at_most_0.10": None if evals is None else evals <= 0.10},
        "side_by_side": side, "oracle": oracle, "planner": planner}
    write_json(out, result)
    line = summary_line(result)
    print(line)
    if args.update_readme and not args.quick:
        update_readme("bench.oracle" + suffix, line)
    log(f"wrote {out} in {time.time() - started:.0f}s")
    return 0


def summary_line(r: dict) -> str:
    from planner.search.context import VERIFY_SEED_OFFSET

    o, p = r["oracle"], r["planner"]
    best = o["best"]["label"] if o["best"] else "nothing met the budget"
    plan = p["plan"]["label"] if p["plan"] else "no plan"
    found = "the same configuration" if r.get("same_configuration") else plan
    side = r["side_by_side"].get("planner_over_oracle")
    ci = f" (95% CI {fmt(side['ci'][0])}–{fmt(side['ci'][1])})" if side else ""
    evals = None if r["evaluations_ratio"] is None else 100 * r["evaluations_ratio"]
    return (f"On {r['model']} at `{r['budget']}`, over {r['oracle_evaluations']} grid points "
            f"({o['search_s'] / 60:.0f} min with {o['workers']} worker(s)): the oracle's best is "
            f"**{fmt(r['oracle_speedup'])}×** ({best}); the planner's default search found {found}, "
            f"**{fmt(r['planner_speedup'])}×**: {fmt(r['speedup_ratio'])} of the oracle{ci}, with "
            f"{r['planner_evaluations']} evaluations ({fmt(evals, 0)}% of the oracle's; "
            f"{p.get('trials_in_study', r['planner_evaluations'])} trials in its study, repeats given their "
            f"earlier measurement, and {p.get('frontier_quality_probes', 0)} quality-only probes of the step "
            f"frontier). Both winners timed side by side in rotating order "
            f"({r['side_by_side']['oracle']['repeats'] if r['side_by_side']['oracle'] else 0} repeats, "
            f"{r['environment']['threads']} thread), both verified on the same unseen seeds "
            f"(from {r['settings']['seed'] + VERIFY_SEED_OFFSET:,}); whole run {r['wall_s'] / 60:.0f} min.\n")


if __name__ == "__main__":
    sys.exit(main())
