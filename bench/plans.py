"""Reproduce the shipped plans and their README figures: `python bench/plans.py [--models ...]`.

For each demo model: `planner optimize --budget fid+2 MODEL --out plans/MODEL.yaml` with the default
settings, timed end to end, then the figures the plan measured on its verification seeds. Results go
to bench/results/plans.json (one row per model).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["digits-unet", "digits-dit"])
    parser.add_argument("--budget", default="fid+2")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "plans")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "plans.json")
    parser.add_argument("--summarize-only", action="store_true", help="only re-read the plans and write the results")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="further `planner optimize` options after --")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from planner.plan import load_plan

    rows = []
    for model in args.models:
        out = (args.out_dir / f"{model}.yaml").resolve()
        shown = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
        cmd = [sys.executable, "-m", "planner.cli", "optimize", "--budget", args.budget, model, "--out", str(shown),
               *[a for a in args.extra if a != "--"]]
        if args.summarize_only:
            code, seconds = (0 if out.exists() else 1), None
        else:
            print("$", " ".join(cmd[2:]), flush=True)
            start = time.time()
            code = subprocess.call(cmd, cwd=ROOT)
            seconds = round(time.time() - start, 1)
        row = {"model": model, "budget": args.budget, "exit_code": code, "wall_seconds": seconds}
        if code == 0:
            plan = load_plan(out)
            m = plan.measured
            row.update(plan=str(out.relative_to(ROOT)), techniques=[t.type for t in plan.techniques],
                       speedup=round(m.speedup, 3), speedup_ci=[round(x, 3) for x in m.speedup_ci],
                       work_ratio=None if m.work_ratio is None else round(m.work_ratio, 4),
                       baseline_steps=m.baseline_steps, plan_steps=plan.shapes.steps, batch=plan.shapes.batch,
                       threads=m.threads, trials=plan.provenance.trials_run,
                       search_seconds=plan.provenance.search_seconds, command=plan.provenance.command,
                       metrics=[r.model_dump() for r in m.metrics], verify_seeds=list(m.verify_seeds),
                       search_seeds=list(m.search_seeds))
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
