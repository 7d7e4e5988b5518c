"""Peak memory of a search against one loaded pipeline plus its images (target: at most 1.3x).

    .venv/bin/python -m bench.memory [--model tiny-sdxl] [--trials 6]

Two fresh processes on the same pipeline (default the tiny SDXL), both measured as peak resident memory
above what the process held after its imports (torch, diffusers: the same in both):
* reference: load the pipeline, generate the baseline images a search of these settings generates (the
  search and verification rows, in pipeline calls of GENERATION_BATCH images, as the search makes them),
  keep them in memory;
* search: load the pipeline, `planner.optimize(pipe, ...)` with the same settings and a joint space.
Both peaks are read from the kernel (ru_maxrss), so allocator caches and transient activations count.
Results: bench/results/memory.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS, environment, now, write_json

PROMPTS = ["a red cat", "a blue car", "a small boat", "an old man", "a field of flowers", "a city at night",
           "a bowl of fruit", "a mountain lake", "a lighthouse", "a robot", "a forest path", "a teapot"]

CHILD = r"""
import json, os, resource, sys
import torch
torch.set_num_threads(2)
import planner
from planner.models import load_pipeline
from ground.generation import generate
from planner.conditions import conditions_from_prompts, make_request
from planner.search.context import GENERATION_BATCH

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

mode, model, trials, samples, prompts = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
techniques = tuple(sys.argv[6].split(","))
after_imports = rss_mib()
pipe = load_pipeline(model)
loaded = rss_mib()
info = {}
if mode == "reference":
    conditions = conditions_from_prompts(prompts)
    kept = []
    for phase in ("search", "verify"):
        request = make_request(pipe, samples, {"search": 0, "verify": 500_000}[phase], conditions, phase)
        kept.append(generate(pipe, request, steps=10, batch_size=GENERATION_BATCH))
    info["images"] = sum(int(k.shape[0]) for k in kept)
    info["image_mib"] = sum(k.numel() * k.element_size() for k in kept) / 2**20
else:
    plan = planner.optimize(pipe, "psnr>=30", prompts=prompts, name=model, trials=trials, samples=samples,
                            verify_samples=samples, batch=2, baseline_steps=10,
                            techniques=techniques)
    info["plan"] = " + ".join(t.type for t in plan.techniques)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(info, after_imports_mib=after_imports, loaded_mib=loaded, peak_mib=peak,
                      pipeline_mib=loaded - after_imports, above_imports_mib=peak - after_imports)))
"""


def run(mode: str, model: str, trials: int, samples: int, techniques: str = "sampler,quant,tokens,cache") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as cache:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, model, str(trials), str(samples), json.dumps(PROMPTS),
                              techniques],
                             env={**__import__("os").environ, "PLANNER_CACHE": cache, "PLANNER_OFFLINE": "1"},
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench.memory: the {mode} process failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-sdxl")
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--techniques", default="sampler,quant,tokens,cache", help="the search's --techniques")
    p.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = p.parse_args(argv)
    reference = run("reference", args.model, args.trials, args.samples)
    search = run("search", args.model, args.trials, args.samples, args.techniques)
    ratio = search["above_imports_mib"] / reference["above_imports_mib"]
    result = {"when": now(), "environment": environment(2), "model": args.model, "trials": args.trials,
              "samples": args.samples, "techniques": args.techniques, "reference": reference, "search": search,
              "ratio": round(ratio, 3), "target": 1.3, "meets_target": ratio <= 1.3}
    write_json(args.out, result)
    print(f"{args.model}: one pipeline + its {reference['images']} images {reference['above_imports_mib']:.0f} MiB "
          f"above imports; the search {search['above_imports_mib']:.0f} MiB: {ratio:.2f}x (target <= 1.3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
