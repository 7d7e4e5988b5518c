"""Profiling overhead: profiled vs unprofiled generation of the same request, interleaved.

For each model, ROUNDS times in turn: time `generate` (unprofiled), then `profile_pipeline` (the whole
call: hooks, step-end analysis, the FLOP replay and the fingerprint; no warm-up call) on the same
(condition, seed) pairs, steps and batch. Reports the median ratio profiled / unprofiled (target <= 3x)
and writes bench/results/profile_overhead.json.

    python bench/profile_overhead.py [--models digits-unet digits-dit] [--steps 10] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def _pipeline(model: str):
    from planner.demo import WEIGHTS_DIR
    from planner.models import load_pipeline

    if model.startswith("digits-") and not (WEIGHTS_DIR / model / "model_index.json").exists():
        from diffusers import DDPMScheduler, DiTTransformer2DModel, UNet2DModel

        from planner.demo.architectures import dit_config, scheduler_config, unet_config
        from planner.demo.pipeline import DigitsDiTPipeline, DigitsUNetPipeline

        torch.manual_seed(0)
        if model == "digits-unet":
            pipe = DigitsUNetPipeline(UNet2DModel(**unet_config()).eval(), DDPMScheduler(**scheduler_config()))
        else:
            pipe = DigitsDiTPipeline(DiTTransformer2DModel(**dit_config()).eval(), DDPMScheduler(**scheduler_config()))
        pipe.set_progress_bar_config(disable=True)
        return pipe, "random weights (demo weights missing)"
    return load_pipeline(model), "shipped weights" if model.startswith("digits-") else "tiny random weights"


def bench(model: str, steps: int, samples: int, batch: int, rounds: int) -> dict:
    from ground.generation import default_request, generate
    from profiler import profile_pipeline

    pipe, weights = _pipeline(model)
    request = default_request(pipe, samples)
    generate(pipe, request, steps=steps, batch_size=batch)  # warm-up, not timed
    plain, profiled, ratios, in_call, cpu_ratios = [], [], [], [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        generate(pipe, request, steps=steps, batch_size=batch)
        t1, c1 = time.perf_counter(), time.process_time()
        p = profile_pipeline(pipe, request, steps=steps, batch=batch, warmup=False, model=model)
        t2, c2 = time.perf_counter(), time.process_time()
        plain.append(t1 - t0)
        profiled.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
        cpu_ratios.append((c2 - c1) / (c1 - c0))
        calls = p.data["settings"]["calls"]
        in_call.append(p.data["timing"]["pipeline_ms_with_profiler"] * calls / 1000 / (t1 - t0))
    return {"model": model, "weights": weights, "steps": steps, "samples": samples, "batch": batch,
            "rounds": rounds, "unprofiled_s": plain, "profiled_s": profiled, "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "median_ratio_generation_only": statistics.median(in_call),
            "cpu_time_ratios": cpu_ratios, "median_cpu_time_ratio": statistics.median(cpu_ratios),
            "target": 3.0, "meets_target": statistics.median(ratios) <= 3.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits-unet", "digits-dit"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for model in args.models:
        r = bench(model, args.steps, args.samples, args.batch, args.rounds)
        results.append(r)
        print(f"{model}: unprofiled {statistics.median(r['unprofiled_s']):.2f}s, profiled "
              f"{statistics.median(r['profiled_s']):.2f}s, median ratio {r['median_ratio']:.2f}x "
              f"(generation only {r['median_ratio_generation_only']:.2f}x; process CPU time "
              f"{r['median_cpu_time_ratio']:.2f}x; target <= 3x)")
    doc = {"benchmark": "profile_overhead", "threads": args.threads, "torch": torch.__version__,
           "cpu_count": os.cpu_count(), "note": "shared, busy CPU cores: wall-clock timings are noisy; medians of interleaved rounds; "
                   "process CPU time (time.process_time) is less sensitive to other processes",
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
