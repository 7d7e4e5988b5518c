"""Benchmark the caching techniques on the demo models: speed-up, counted work and quality.

For each model (digits-unet, digits-dit) and base sampler (DPM-Solver++ 20 steps, DDIM 50 steps):

* speed-up: the baseline and every technique setting are timed side by side, interleaved round by
  round in one process (each round runs every variant once, in a rotated order), with
  `torch.set_num_threads` fixed; the ratio is median(baseline) / median(variant);
* counted work: evaluations of the denoiser's work units (transformer blocks; UNet resnets,
  attentions and resamplers), in sample rows, from forward pre-hooks (`WorkCounter`), and their ratio
  to the baseline's;
* quality: PSNR to the baseline's images (same seeds, same conditions) with a bootstrap 95% CI over the
  N images, and FID to the held-out digits (digits feature network) when `planner.quality` is importable.

    python -m bench.techniques [--quick] [--out bench/results/techniques.json]

Results go to bench/results/techniques.json; the table is printed.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import backends
from backends.caching import (CFGReuseConfig, DeepCacheConfig, FirstBlockCacheConfig, TaylorSeerConfig,
                              TeaCacheConfig)
from backends.caching.common import WorkCounter
from backends.sampler import SamplerConfig
from ground.generation import default_request, generate

ROOT = Path(__file__).resolve().parent


def _settings(model: str, steps: int, profile_fn) -> list:
    if model == "digits-unet":
        out = [DeepCacheConfig(branch=0, interval=2), DeepCacheConfig(branch=0, interval=3),
               TaylorSeerConfig(interval=2, order=1), CFGReuseConfig(interval=2)]
    else:
        out = [FirstBlockCacheConfig(threshold=0.05, max_skips=2), FirstBlockCacheConfig(threshold=0.15, max_skips=3),
               TeaCacheConfig(threshold=0.3, max_skips=3), TaylorSeerConfig(interval=2, order=1),
               CFGReuseConfig(interval=2)]
    out += profile_fn()
    return out


def _profile_settings(pipe, model, sampler, request) -> list:
    """Profile-calibrated settings (TeaCache coefficients, block schedules) when the profiler is there."""
    try:
        from profiler import profile_pipeline
        from search_spaces.caching import CacheProfile, schedule_from_profile, teacache_threshold
    except ImportError:
        return []
    try:
        profile = profile_pipeline(pipe, request, sampler=sampler)
    except Exception as exc:  # noqa: BLE001 - the benchmark goes on without profile-based settings
        print(f"  (profiling failed: {type(exc).__name__}: {exc}; skipping calibrated settings)", file=sys.stderr)
        return []
    cp = CacheProfile.from_profile(profile)
    out = []
    for delta_scale in (2.0,):
        from search_spaces.schedule_solver import delta_range

        lo, hi = delta_range(cp.residual_change) if cp.residual_change is not None else (0.01, 1.0)
        config = schedule_from_profile(cp, pipe, delta=delta_scale * (lo * hi) ** 0.5)
        if config.reuse:
            out.append(config)
    if model == "digits-dit" and cp.indicator_change is not None and cp.coefficients is not None:
        out.append(TeaCacheConfig(threshold=teacache_threshold(2.0, cp.indicator_change, cp.coefficients),
                                  max_skips=3, coefficients=cp.coefficients))
    return out


def _random_pipeline(model: str):
    from diffusers import DDIMScheduler, DiTTransformer2DModel, UNet2DModel

    from planner.demo.architectures import dit_config, scheduler_config, unet_config
    from planner.demo.pipeline import DigitsDiTPipeline, DigitsUNetPipeline

    torch.manual_seed(0)
    if model == "digits-unet":
        return DigitsUNetPipeline(UNet2DModel(**unet_config()).eval(), DDIMScheduler(**scheduler_config()))
    return DigitsDiTPipeline(DiTTransformer2DModel(**dit_config()).eval(), DDIMScheduler(**scheduler_config()))


def _time_call(pipe, request, steps) -> float:
    t = time.perf_counter()
    generate(pipe, request, steps=steps)
    return time.perf_counter() - t


def _quality(images, base, model, extractor, reference):
    from planner.quality.paired import psnr

    result = {"psnr": psnr(images, base).to_dict()}
    if extractor is not None:
        from planner.quality.fid import fid

        result["fid"] = float(fid(extractor(images), reference.stats))
    return result


def bench_model(model: str, sampler: SamplerConfig, n_quality: int, timing_batch: int, repeats: int,
                extractor, reference) -> list[dict]:
    from planner.models import load_pipeline

    try:
        pipe = load_pipeline(model)
        trained = True
    except Exception:  # noqa: BLE001 - fall back to random weights, and say so
        pipe = _random_pipeline(model)
        trained = False
    pipe.set_progress_bar_config(disable=True)
    sampler_handle = backends.apply(pipe, sampler)
    steps = sampler.steps
    quality_request = default_request(pipe, n_quality, seed=1000)
    timing_request = default_request(pipe, timing_batch, seed=0)
    settings = _settings(model, steps, lambda: _profile_settings(pipe, model, sampler,
                                                                 default_request(pipe, 4, seed=500)))
    rows = []
    try:
        with WorkCounter(pipe) as counter:
            base = generate(pipe, quality_request, steps=steps)
        base_work = counter.rows
        variants = [None] + settings
        handles_info = {}
        outputs, works = {}, {}
        for i, config in enumerate(settings):
            handle = backends.apply(pipe, config)
            try:
                with WorkCounter(pipe) as counter:
                    outputs[i] = generate(pipe, quality_request, steps=steps)
                works[i] = counter.rows
                runtime = handle.info.get("runtime")
                handles_info[i] = dict(runtime.stats) if runtime is not None else {}
            finally:
                handle.remove()
        # timing: interleaved rounds, rotated order
        times: dict[int, list[float]] = {i: [] for i in range(-1, len(settings))}
        _time_call(pipe, timing_request, steps)  # warm-up
        for r in range(repeats):
            order = list(range(-1, len(settings)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                if i < 0:
                    times[i].append(_time_call(pipe, timing_request, steps))
                    continue
                handle = backends.apply(pipe, variants[i + 1])
                try:
                    times[i].append(_time_call(pipe, timing_request, steps))
                finally:
                    handle.remove()
        base_time = statistics.median(times[-1])
        base_quality = _quality(base, base, model, extractor, reference) if extractor is not None else {}
        rows.append({"model": model, "trained": trained, "sampler": sampler.name, "steps": steps,
                     "technique": "baseline", "config": None, "median_s": base_time, "times_s": times[-1],
                     "speedup": 1.0, "work_rows": base_work, "work_ratio": 1.0,
                     "fid": base_quality.get("fid"), "psnr": None, "steps_reused": 0})
        for i, config in enumerate(settings):
            t = statistics.median(times[i])
            q = _quality(outputs[i], base, model, extractor, reference)
            rows.append({"model": model, "trained": trained, "sampler": sampler.name, "steps": steps,
                         "technique": config.label(), "config": config.to_dict(), "median_s": t, "times_s": times[i],
                         "speedup": base_time / t, "work_rows": works[i], "work_ratio": works[i] / base_work,
                         "fid": q.get("fid"), "psnr": q["psnr"], "steps_reused": handles_info[i].get("reused", 0),
                         "steps_computed": handles_info[i].get("computed", 0)})
    finally:
        sampler_handle.remove()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "techniques.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-quality", type=int, default=16, help="images for PSNR/FID per variant")
    parser.add_argument("--timing-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="only merge these result files (one per model, run in parallel) into --out")
    parser.add_argument("--models", nargs="+", default=["digits-unet", "digits-dit"])
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m:20", "ddim:50"])
    parser.add_argument("--no-fid", action="store_true")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = dict(parts[0], rows=[r for part in parts for r in part["rows"]],
                      wall_s=max(p["wall_s"] for p in parts), merged_from=[str(p) for p in args.merge])
        args.out.write_text(json.dumps(merged, indent=1))
        _print(merged["rows"])
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    extractor = reference = None
    if not args.no_fid:
        try:
            from planner.models import load_pipeline
            from planner.quality.features import get_extractor
            from planner.quality.reference import resolve_reference

            digits = load_pipeline("digits-unet")
            extractor = get_extractor(None, pipe=digits)
            reference = resolve_reference(extractor, pipe=digits)
        except Exception as exc:  # noqa: BLE001 - PSNR only, and say why
            print(f"FID unavailable ({type(exc).__name__}: {exc}); reporting PSNR only", file=sys.stderr)
            extractor = reference = None

    started = time.time()
    rows = []
    for model in args.models:
        for spec in args.samplers:
            name, steps = spec.split(":")
            sampler = SamplerConfig(name=name, steps=int(steps))
            print(f"== {model} {name} x{steps}", file=sys.stderr, flush=True)
            new = bench_model(model, sampler, args.n_quality, args.timing_batch, args.repeats, extractor, reference)
            _print(new)
            rows += new
            _write(args, extractor, rows, started, partial=True)
    _write(args, extractor, rows, started, partial=False)
    return 0


def _write(args, extractor, rows, started, partial: bool) -> None:
    result = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": time.time() - started,
        "environment": {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                        "machine": platform.machine(), "note": "shared 2-core CPU; timings are noisy"},
        "protocol": {"n_quality": args.n_quality, "timing_batch": args.timing_batch, "repeats": args.repeats,
                     "speedup": "median(baseline)/median(variant), interleaved rotated rounds",
                     "work": "work-unit evaluations x sample rows (WorkCounter)",
                     "psnr": "vs baseline images, same seeds; bootstrap 95% CI over images",
                     "fid": "digits features vs held-out digits" if extractor is not None else None},
        "partial": partial,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['wall_s']:.0f}s)", file=sys.stderr)


def _print(rows) -> None:
    for r in rows:
        p = r["psnr"]
        psnr = f"{p['value']:.1f} [{p['ci_low']:.1f},{p['ci_high']:.1f}] n={p['n']}" if p else "-"
        fid = f"{r['fid']:.2f}" if r.get("fid") is not None else "-"
        print(f"{r['model']:<12} {r['sampler']:>8}x{r['steps']:<3} {r['technique'][:60]:<60} "
              f"x{r['speedup']:.2f}  work {r['work_ratio']:.2f}  psnr {psnr:<24} fid {fid}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
