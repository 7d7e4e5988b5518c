"""What a production start pays to apply a plan: a cold apply (empty cache: compile or export) against a
warm one (a new process, the cache the first filled: compiled kernels and exports reused).

    .venv/bin/python -m bench.apply_time plans/digits-unet.yaml [more plans] [--model NAME]

Each measurement is a fresh process: load the model, `planner.apply`, one call at the plan's batch;
reported are the apply time, the first call (where compilation happens) and a steady call.
Results: bench/results/apply_time.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, environment, now, write_json

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
import planner
from ground.generation import default_request, generate
from planner.models import load_pipeline
from planner.plan import load_plan
plan = load_plan(sys.argv[1])
pipe = load_pipeline(sys.argv[2] or plan.model.name)
request = default_request(pipe, plan.shapes.batch, 123)
t0 = time.perf_counter(); handle = planner.apply(pipe, plan); t1 = time.perf_counter()
generate(pipe, request, batch_size=plan.shapes.batch); t2 = time.perf_counter()
generate(pipe, request, batch_size=plan.shapes.batch); t3 = time.perf_counter()
print(json.dumps({"apply_s": t1 - t0, "first_call_s": t2 - t1, "steady_call_s": t3 - t2,
                  "setup_s": handle.setup_seconds}))
"""


def measure(plan: str, model: str | None, cache: Path, threads: int) -> dict:
    env = dict(os.environ, PLANNER_CACHE=str(cache))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", CHILD, plan, model or "", str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.apply_time", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plans", nargs="+")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "apply_time.json")
    args = p.parse_args(argv)
    rows = []
    for plan in args.plans:
        with tempfile.TemporaryDirectory(prefix="apply-time-") as tmp:
            cold = measure(plan, args.model, Path(tmp), args.threads)
            warm = measure(plan, args.model, Path(tmp), args.threads)
        rows.append({"plan": plan, "cold": cold, "warm": warm})
        print(f"{plan}: cold apply+first call {cold['apply_s'] + cold['first_call_s']:.1f}s, "
              f"warm {warm['apply_s'] + warm['first_call_s']:.1f}s, steady call {warm['steady_call_s']:.3f}s")
    write_json(args.out, {"created": now(), "environment": environment(args.threads), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
