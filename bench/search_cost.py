"""What a decision costs: the fixed sample sizes of before against sequential decisions, same search.

    .venv/bin/python -m bench.search_cost                 # three configurations, about 40 minutes on 2 cores
    .venv/bin/python -m bench.search_cost --quick         # plumbing only

For each configuration (digits-unet at fid+2, digits-dit at psnr>=30, a tiny Stable Diffusion folder at
64x64 pixels at psnr>=25), `planner optimize` runs twice with the same seeds, trials and settings: once
with the fixed sizes (a 64-sample first stage that only prunes hopeless trials, then 200 per trial, 500 to
verify, for every metric) and once with sequential decisions. Each run has a cache of its own, so the
baseline images it generates count. Recorded: images generated (baseline and candidate), decisions
taken, images per decision, wall time, the time the search estimated before starting; then both plans
are timed side by side (rotating order, median of per-repeat ratios) and gated on seeds neither saw.
Results: bench/results/search_cost.json and the README block between the bench.search_cost markers.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, environment, now, update_readme, write_json

CONFIGS = {"digits-unet": "fid+2", "digits-dit": "psnr>=30", "tiny-sd-64": "psnr>=25"}


def _model(name: str, workdir: Path) -> str:
    """A built-in name, or for tiny-sd-64 a saved folder: the tiny SD at 32x32 latents (64x64 pixels)."""
    if name != "tiny-sd-64":
        return name
    folder = workdir / "tiny-sd-64"
    if not folder.exists():
        from planner.demo.tiny_pipelines import build_tiny_pipeline

        build_tiny_pipeline("sd", latent_size=32).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def _run(model: str, budget: str, mode: str, args, workdir: Path, log) -> dict:
    from planner.search.context import SearchSettings
    from planner.search.optimize import optimize

    cache = workdir / f"cache-{Path(model).name}-{mode}"
    os.environ["PLANNER_CACHE"] = str(cache)
    lines = []

    def capture(text):
        lines.append(str(text))
        log(text)

    settings = SearchSettings(name=model, budget=budget, trials=args.trials, seed=0, threads=args.threads,
                              sample_mode=mode, out=str(workdir / f"{Path(model).name}-{mode}.plan.yaml"),
                              **({"samples": 16, "verify_samples": 16, "baseline_steps": 10, "batch": 2}
                                 if args.quick else {}))
    start = time.time()
    result = optimize(settings, log=capture)
    seconds = time.time() - start
    estimate = next((float(m.group(1)) * (60 if m.group(2) == "min" else 1) for line in lines
                     for m in [re.search(r"about ([0-9.]+) (min|s) in all", line)] if m), None)
    stats = dict(result.stats)
    images = stats["baseline_images"] + stats["candidate_images"]
    return {"model": model, "budget": budget, "mode": mode, "seconds": round(seconds, 1), "estimate_s": estimate,
            "images": images, **stats, "images_per_decision": round(images / max(stats["decisions"], 1), 1),
            "plan": str(result.plan_path), "speedup": result.plan.measured.speedup,
            "label": " + ".join(c.label() for c in result.plan.technique_configs())}


def _side_by_side(model: str, plans: list[str], repeats: int, threads: int) -> dict:
    """Both plans and the baseline timed in rotating order within each repeat; ratio of plan times."""
    import numpy as np
    import torch

    import planner
    from ground.generation import default_request, generate
    from planner.models import load_pipeline
    from planner.plan import load_plan
    from planner.search.latency import median_ci, timed

    torch.set_num_threads(threads)
    pipes, handles = [], []
    for path in plans:
        pipe = load_pipeline(model)
        handles.append(planner.apply(pipe, path))
        pipes.append(pipe)
    batch = load_plan(plans[0]).shapes.batch
    request = default_request(pipes[0], batch, 910_000)
    runs = [lambda p=p: generate(p, request, batch_size=batch) for p in pipes]
    for run in runs:
        run()
    times = [[], []]
    for i in range(repeats):
        for k in ([0, 1] if i % 2 == 0 else [1, 0]):
            times[k].append(timed(runs[k]))
    for h in handles:
        h.remove()
    ratio, ci = median_ci(np.array(times[1]) / np.array(times[0]))
    return {"sequential_over_fixed_time": ratio, "ci": list(ci), "repeats": repeats}


def _gate(model: str, plan: str, samples: int | None) -> bool:
    from planner.cli import main

    argv = ["gate", plan, "--model", model] + (["--samples", str(samples)] if samples else [])
    return main(argv) == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.search_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--quick", action="store_true", help="a few trials and samples: checks the plumbing")
    p.add_argument("--out", type=Path, default=RESULTS / "search_cost.json")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.repeats = 2, 3

    def log(text):
        print(text, file=sys.stderr, flush=True)

    rows, comparisons = [], []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="search-cost-") as tmp:
        workdir = Path(tmp)
        for name in [c for c in args.configs.split(",") if c]:
            model, budget = _model(name, workdir), CONFIGS[name]
            pair = [_run(model, budget, mode, args, workdir, log) for mode in ("fixed", "sequential")]
            rows += pair
            os.environ["PLANNER_CACHE"] = str(workdir / "cache-gate")
            comparison = {"model": name, "budget": budget,
                          "images_fixed_over_sequential": pair[0]["images"] / max(pair[1]["images"], 1),
                          "images_per_decision_fixed_over_sequential":
                              pair[0]["images_per_decision"] / max(pair[1]["images_per_decision"], 1e-9),
                          **_side_by_side(model, [pair[0]["plan"], pair[1]["plan"]], args.repeats, args.threads),
                          "gate_fixed": _gate(model, pair[0]["plan"], 16 if args.quick else None),
                          "gate_sequential": _gate(model, pair[1]["plan"], 16 if args.quick else None)}
            comparisons.append(comparison)
            write_json(args.out, {"created": now(), "environment": environment(args.threads), "quick": args.quick,
                                  "rows": rows, "comparisons": comparisons,
                                  "seconds": round(time.time() - started, 1)})
    if args.update_readme and not args.quick:
        update_readme("bench.search_cost", readme_block(rows, comparisons))
    for row in rows:
        print(f"{row['model']:<40} {row['mode']:<10} images {row['images']:>6} decisions {row['decisions']:>4} "
              f"per decision {row['images_per_decision']:>7} {row['seconds']:>7.0f}s (estimated {row['estimate_s']}) "
              f"{row['speedup']:.2f}x {row['label']}")
    return 0


def readme_block(rows: list[dict], comparisons: list[dict]) -> str:
    out = ["| model, budget | sizes | images generated | decisions | images / decision | wall time (estimated) "
           "| plan speed-up | gate on fresh seeds |", "|---|---|---|---|---|---|---|---|"]
    gates = {(c["model"], m): c[f"gate_{m}"] for c in comparisons for m in ("fixed", "sequential")}
    names = {c["model"]: c["model"] for c in comparisons}
    for row in rows:
        name = next((n for n in names if n in row["model"] or row["model"].endswith(n)), Path(row["model"]).name)
        est = f"{row['estimate_s'] / 60:.1f}" if row["estimate_s"] else "-"
        out.append(f"| `{name}`, `{row['budget']}` | {row['mode']} | {row['images']} | {row['decisions']} | "
                   f"{row['images_per_decision']} | {row['seconds'] / 60:.1f} min ({est}) | {row['speedup']:.2f}x | "
                   f"{'PASS' if gates.get((name, row['mode'])) else 'FAIL'} |")
    for c in comparisons:
        out.append(f"\n`{c['model']}` at `{c['budget']}`: {c['images_fixed_over_sequential']:.1f}x fewer images in "
                   f"all, {c['images_per_decision_fixed_over_sequential']:.1f}x fewer per decision; the sequential "
                   f"plan's time / the fixed plan's, side by side: {c['sequential_over_fixed_time']:.2f} "
                   f"(95% CI {c['ci'][0]:.2f}-{c['ci'][1]:.2f}, {c['repeats']} repeats).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
