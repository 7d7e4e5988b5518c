"""What a search costs, in baseline-image equivalents (BIE): the whole `planner optimize` wall time / the
time of one baseline image at the search's batch, measured in the same process.

    .venv/bin/python -m bench.search_cost --before d8c2381      # this code against an earlier commit
    .venv/bin/python -m bench.search_cost --quick               # plumbing only

For each configuration (digits-unet at fid+2, digits-dit at psnr>=30, the tiny SD at its native size and
at 32x32 latents, the tiny PixArt and FLUX folders at psnr>=30, and `digits-ddpm-v` at fid+2: a folder
outside the demo set, from $PLANNER_FOLDERS/digits-ddpm-v when there, else trained first by
planner.demo.folders), `planner optimize` runs with default
settings on a cache of its own (the baseline images it needs count): once with this code, and with
`--before COMMIT` once more with that commit's code (checked out into a git worktree and run in a
subprocess, the same driver). The driver times one warm baseline batch after the search for the BIE
denominator (this code also reports its own BIE, from the verification's timing: both are recorded).
Then both plans are timed side by side (rotating order, median of per-repeat ratios) and gated on seeds
neither saw. `--max-minutes` refuses a configuration whose up-front estimate is longer (recorded).
Results: bench/results/search_cost.json and the README block between the bench.search_cost markers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, environment, now, update_readme, write_json

CONFIGS = {"digits-unet": "fid+2", "digits-dit": "psnr>=30", "tiny-sd": "psnr>=30", "tiny-sd-64": "psnr>=25",
           "tiny-pixart": "psnr>=30", "tiny-flux": "psnr>=30", "digits-ddpm-v": "fid+2"}
FOLDERS = Path(os.environ.get("PLANNER_FOLDERS", "/nonexistent"))   # trained folders (planner.demo.folders)
DEFAULT = "digits-unet,digits-dit,tiny-sd-64"
EXTRA = {"digits-ddpm-v": {"features": "digits"}}   # a 1-channel digits folder: the digits feature network

# Runs inside the process of either version: the search, then one warm baseline batch for the BIE.
DRIVER = r"""
import json, sys, time
from planner.search.context import SearchSettings
from planner.search.optimize import optimize
from planner.models import load_pipeline
from ground.generation import default_request, generate
from ground.errors import PlannerError
args = json.loads(sys.argv[1])
torch_threads = args.pop("threads_now")
import torch
torch.set_num_threads(torch_threads)
start = time.time()
try:
    result = optimize(SearchSettings(**args), log=lambda text: print(text, file=sys.stderr, flush=True))
except PlannerError as exc:
    print(json.dumps({"error": str(exc), "seconds": time.time() - start}))
    sys.exit(0)
seconds = time.time() - start
import planner.search.optimize as code
print(f"[driver] code from {code.__file__}", file=sys.stderr)
pipe = load_pipeline(args["name"])
request = default_request(pipe, args.get("batch", 8), 920_000)
steps = args.get("baseline_steps", 50)
generate(pipe, request, steps=steps, batch_size=len(request))
t = time.perf_counter(); generate(pipe, request, steps=steps, batch_size=len(request)); batch_s = time.perf_counter() - t
stats = {k: v for k, v in result.stats.items() if k != "decision_rows"}
print(json.dumps({"seconds": seconds, "baseline_image_s": batch_s / len(request), "plan": str(result.plan_path),
                  "speedup": result.plan.measured.speedup, "stats": stats,
                  "label": " + ".join(c.label() for c in result.plan.technique_configs())}, default=str))
"""


def _model(name: str, workdir: Path) -> str:
    """A built-in name, or a saved tiny folder (tiny-sd-64: the tiny SD at 32x32 latents, 64x64 pixels)."""
    if name in ("digits-unet", "digits-dit"):
        return name
    if name == "digits-ddpm-v":   # outside the demo set: a folder trained by planner.demo.folders
        folder = FOLDERS / name if (FOLDERS / name / "model_index.json").exists() else workdir / name
        if not folder.exists():
            from planner.demo.folders import build_folder

            build_folder("ddpm-v", folder)
        return str(folder)
    folder = workdir / name
    if not folder.exists():
        from planner.demo.tiny_pipelines import build_tiny_pipeline

        family = name.removeprefix("tiny-").removesuffix("-64")
        kwargs = {"latent_size": 32} if name.endswith("-64") else {}
        build_tiny_pipeline(family, **kwargs).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def _worktree(commit: str, workdir: Path) -> Path:
    path = workdir / f"code-{commit}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True,
                       capture_output=True)
    return path


def _run(model: str, budget: str, version: str, code: Path, args, workdir: Path, log) -> dict:
    name = Path(model).name
    settings = {"name": model, "budget": budget, "trials": args.trials, "seed": 0, "threads": args.threads,
                "out": str(workdir / f"{name}-{version}.plan.yaml"), "max_minutes": args.max_minutes,
                "threads_now": args.threads, **EXTRA.get(name, {}),
                **({"samples": 16, "verify_samples": 16, "baseline_steps": 10, "batch": 2} if args.quick else {})}
    env = dict(os.environ, PLANNER_CACHE=str(workdir / f"cache-{name}-{version}"), PYTHONPATH=str(code))
    log(f"[search_cost] {name} {budget} with the {version} code ...")
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(settings)], cwd=code, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{version} search failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    planner_lines = [line for line in proc.stderr.splitlines() if line.startswith("[planner]")]
    row = {"model": model, "budget": budget, "version": version, **out, "log": planner_lines[-40:]}
    if "error" not in out:
        row["bie"] = round(out["seconds"] / out["baseline_image_s"], 1)
        own = (out["stats"].get("search_cost") or {}).get("bie")
        row["bie_own"] = own
        log(f"[search_cost]   {out['seconds'] / 60:.1f} min = {row['bie']:.0f} BIE; plan {out['label']} "
            f"{out['speedup']:.2f}x")
    else:
        log(f"[search_cost]   refused: {out['error']}")
    return row


def _side_by_side(model: str, plans: list[str], repeats: int, threads: int) -> dict:
    """Both plans timed in rotating order within each repeat; ratio of the after plan's time to the before's."""
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
    return {"after_over_before_time": ratio, "ci": list(ci), "repeats": repeats}


def _gate(model: str, plan: str, quick: bool) -> bool:
    from planner.cli import main

    return main(["gate", plan, "--model", model] + (["--samples", "16"] if quick else [])) == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.search_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT, help="comma list of " + ", ".join(CONFIGS))
    p.add_argument("--before", default=None, help="a commit whose search to measure beside this code's")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--max-minutes", type=float, default=45.0)
    p.add_argument("--quick", action="store_true", help="a few trials and samples: checks the plumbing")
    p.add_argument("--out", type=Path, default=RESULTS / "search_cost.json")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.trials, args.repeats = 2, 3

    def log(text):
        print(text, file=sys.stderr, flush=True)

    rows, comparisons, started = [], [], time.time()
    with tempfile.TemporaryDirectory(prefix="search-cost-") as tmp:
        workdir = Path(tmp)
        versions = [("after", ROOT)] + ([("before", _worktree(args.before, workdir))] if args.before else [])
        try:
            for name in [c for c in args.configs.split(",") if c]:
                model, budget = _model(name, workdir), CONFIGS[name]
                pair = {v: _run(model, budget, v, code, args, workdir, log) for v, code in versions}
                rows += list(pair.values())
                done = [r for r in pair.values() if "error" not in r]
                os.environ["PLANNER_CACHE"] = str(workdir / "cache-gate")
                comparison = {"model": name, "budget": budget,
                              **{f"gate_{r['version']}": _gate(model, r["plan"], args.quick) for r in done}}
                if len(done) == 2:
                    comparison.update(_side_by_side(model, [pair["before"]["plan"], pair["after"]["plan"]],
                                                    args.repeats, args.threads))
                comparisons.append(comparison)
                write_json(args.out, {"created": now(), "environment": environment(args.threads),
                                      "quick": args.quick, "before": args.before, "rows": rows,
                                      "comparisons": comparisons, "seconds": round(time.time() - started, 1)})
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], capture_output=True)
    if args.update_readme and not args.quick:
        update_readme("bench.search_cost", readme_block(rows, comparisons, args.before))
    print(readme_block(rows, comparisons, args.before))
    return 0


def readme_block(rows: list[dict], comparisons: list[dict], before: str | None) -> str:
    out = ["| model, budget | code | wall time | BIE | images generated | plan | speed-up | gate on fresh seeds |",
           "|---|---|---|---|---|---|---|---|"]
    gates = {(c["model"], v): c.get(f"gate_{v}") for c in comparisons for v in ("before", "after")}
    for row in rows:
        name = next((c["model"] for c in comparisons if Path(row["model"]).name == c["model"]
                     or row["model"] == c["model"]), Path(row["model"]).name)
        code = f"before ({before})" if row["version"] == "before" else "after"
        if "error" in row:
            out.append(f"| `{name}`, `{row['budget']}` | {code} | - | - | - | refused: {row['error'][:120]} | - | - |")
            continue
        stats = row["stats"]
        images = stats.get("baseline_images", 0) + stats.get("candidate_images", 0) + \
            sum((stats.get("timing_images") or {}).values())
        gate = gates.get((name, row["version"]))
        out.append(f"| `{name}`, `{row['budget']}` | {code} | {row['seconds'] / 60:.1f} min | {row['bie']:.0f} | "
                   f"{images}{'' if stats.get('timing_images') else ' (quality only)'} | {row['label']} | "
                   f"{row['speedup']:.2f}x | {'PASS' if gate else 'FAIL' if gate is not None else '-'} |")
    for c in comparisons:
        if "after_over_before_time" in c:
            out.append(f"\n`{c['model']}` at `{c['budget']}`: the after plan's time / the before plan's, side by "
                       f"side: {c['after_over_before_time']:.2f} (95% CI {c['ci'][0]:.2f}-{c['ci'][1]:.2f}, "
                       f"{c['repeats']} repeats).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
