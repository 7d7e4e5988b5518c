"""The oracle's exhaustive grid: every point one trial of the planner's own `Objective`, in this process or
split over worker processes (one torch thread each), merged back into one in-memory Optuna study.

Every process holds one pipeline: its search context's (the planner's own one-pipeline design: a trial
applies its techniques to it and suspends them to time the baseline beside it).

A worker is `python -m bench.oracle_grid SETTINGS.json POINTS.json OUT.json`; the parent builds the search
context first and generates the baseline's images on the search seeds up to the search's largest sample
size (the context makes them lazily, per row, into the disk cache), so no two workers generate them. Points
are dealt round-robin (the grid is in product order, so each worker gets a similar mix of cheap and
expensive points).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, short_label

FAMILIES = ("sampler", "quant", "cache")


@dataclasses.dataclass
class Grid:
    study: object          # in-memory Optuna study holding every grid point, in grid order
    ctx: object            # the parent's SearchContext (verification, side-by-side timing)
    objective: object
    baseline_flops: float
    workers: int
    seconds: float


def setup(settings, pipe=None):
    """The planner's own search context and objective on one pipeline (`pipe`, or the model loaded here),
    without the cost model (the grid is exhaustive)."""
    from ground.anatomy import anatomy_of
    from ground.identity import fingerprint
    from planner.models import load_pipeline
    from planner.quality.budget import parse_budget
    from planner.search.context import SearchContext
    from planner.search.objective import Objective
    from planner.search.optimize import _profile_provider
    from planner.search.work import flops_of

    pipe = pipe if pipe is not None else load_pipeline(settings.name)
    ctx = SearchContext(settings=settings, budget=parse_budget(settings.budget), pipe=pipe,
                        fingerprint=fingerprint(anatomy_of(pipe).denoiser))
    baseline_flops = flops_of(ctx.run_baseline_batch)
    objective = Objective(context=ctx, families=list(FAMILIES), profile_for=_profile_provider(pipe, ctx), fixed=None,
                          cost_model=None, baseline_flops=baseline_flops)
    return ctx, objective, baseline_flops


def baseline_ready(ctx) -> int:
    """The baseline's images on the search seeds, as many as the search's largest sample size: generated
    once here (into the disk cache) before the workers start. Returns how many."""
    n = len(ctx.requests["search"])
    ctx.baseline_images("search", n)
    return n


def _run_points(objective, points: list[dict], seed: int, log, tag: str, total: int | None = None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # every trial is enqueued, so the sampler never draws
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for p in points:
        study.enqueue_trial(p)

    def progress(study, trial):
        a = trial.user_attrs
        result = (f"{a['speedup']:.2f}x {'feasible' if a.get('feasible') else 'infeasible'}" if "speedup" in a
                  else a.get("pruned_by", trial.state.name.lower()))
        log(f"[{tag}] {trial.number + 1}/{total or len(points)} {short_label(a.get('techniques', []))}: {result}")

    study.optimize(objective, n_trials=len(points), catch=(Exception,), callbacks=[progress])
    return study


def _trial_record(trial) -> dict:
    from optuna.distributions import distribution_to_json

    return {"params": trial.params, "state": trial.state.name, "value": trial.value,
            "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
            "user_attrs": trial.user_attrs, "system_attrs": trial.system_attrs}


def _from_record(record: dict):
    import optuna
    from optuna.distributions import json_to_distribution

    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[record["state"]], value=record["value"], params=record["params"],
        distributions={k: json_to_distribution(d) for k, d in record["distributions"].items()},
        user_attrs=record["user_attrs"], system_attrs=record["system_attrs"])


def _settings_from(data: dict):
    from planner.search.context import SearchSettings

    return SearchSettings(**dict(data, techniques=tuple(data["techniques"])))


def evaluate_grid(settings, points: list[dict], log, workers: int = 1, pipe=None) -> Grid:
    import optuna

    start = time.time()
    ctx, objective, baseline_flops = setup(settings, pipe)
    if workers > 1:
        log(f"[oracle] baseline images on {baseline_ready(ctx)} search seeds ready for the workers")
    if workers <= 1:
        study = _run_points(objective, points, settings.seed, log, "oracle")
        return Grid(study, ctx, objective, baseline_flops, 1, time.time() - start)
    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / "settings.json"
        settings_file.write_text(json.dumps(dataclasses.asdict(settings)))
        procs, outs = [], []
        for w in range(workers):
            indexed = [[i, p] for i, p in enumerate(points) if i % workers == w]
            points_file, out = Path(tmp) / f"points{w}.json", Path(tmp) / f"trials{w}.json"
            points_file.write_text(json.dumps(indexed))
            outs.append(out)
            # stderr is inherited: the workers' progress lines interleave with the parent's
            procs.append(subprocess.Popen([sys.executable, "-m", "bench.oracle_grid", str(settings_file),
                                           str(points_file), str(out), f"oracle w{w + 1}"], cwd=ROOT))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"grid workers exited with {codes}: see their output above")
        records = sorted((r for out in outs for r in json.loads(out.read_text())), key=lambda r: r["index"])
    study = optuna.create_study(direction="minimize")
    for r in records:
        study.add_trial(_from_record(r))
    return Grid(study, ctx, objective, baseline_flops, workers, time.time() - start)


def worker_main(argv: list[str]) -> int:
    """One grid worker: its share of the points, on one torch thread, trials written as JSON."""
    import torch

    from ground.files import write_text_atomic

    settings_file, points_file, out, tag = argv
    settings = _settings_from(json.loads(Path(settings_file).read_text()))
    torch.set_num_threads(settings.threads or 1)
    indexed = json.loads(Path(points_file).read_text())
    _, objective, _ = setup(settings)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    study = _run_points(objective, [p for _, p in indexed], settings.seed, log, tag)
    records = [dict(_trial_record(t), index=i) for (i, _), t in zip(indexed, study.trials)]
    write_text_atomic(out, json.dumps(records))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
