"""`planner profile MODEL`: per-block, per-step latency and redundancy profile (JSON + heatmap PNG)."""
from __future__ import annotations

from planner.models import model_help

import argparse
from pathlib import Path

from ground.errors import PlannerError

SAMPLER_CHOICES = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "euler", "flow_euler")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "profile", help="profile where time goes and what repeats across steps, block by block",
        description="Run MODEL on a few (condition, seed) pairs with hooks on every block of its denoiser; "
                    "write a versioned JSON profile and a heatmap PNG beside it, and print a summary.")
    p.add_argument("model", help=model_help())
    p.add_argument("--steps", type=int, default=None, help="inference steps (default 20)")
    p.add_argument("--batch", type=int, default=2, help="(condition, seed) pairs per pipeline call (default 2)")
    p.add_argument("--samples", type=int, default=4, help="(condition, seed) pairs in all (default 4)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                   help="sampler to profile at (default: the pipeline's own scheduler)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                   help="load the model in this dtype (default: as stored)")
    p.add_argument("--out", default="profile.json", help="JSON profile to write; the PNG goes beside it "
                                                         "(default profile.json, profile.png)")
    p.add_argument("--cache-dir", default=None,
                   help="reuse a stored profile with the same key from DIR/profiles, or store this one there")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    for name in ("steps", "batch", "samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise PlannerError(f"--{name}: must be at least 1, got {value}")
    if args.batch > args.samples:
        raise PlannerError(f"--batch ({args.batch}) cannot exceed --samples ({args.samples})")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise PlannerError(f"--out: must name a .json file, got {args.out}")
    if out.parent and not out.parent.exists():
        raise PlannerError(f"--out: folder {out.parent} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PlannerError("--device cuda: no CUDA device available")

    from planner.models import load_pipeline
    from profiler import cached_profile, profile_pipeline
    from profiler.report import heatmap, summary

    dtype = getattr(torch, args.dtype) if args.dtype else None
    pipe = load_pipeline(args.model, device=args.device, dtype=dtype)
    sampler = None
    if args.sampler:
        from backends.sampler import SamplerConfig, available_samplers

        if args.sampler not in available_samplers(pipe):
            raise PlannerError(f"--sampler {args.sampler}: not usable with {args.model}; choose one of "
                               + ", ".join(available_samplers(pipe)))
        sampler = SamplerConfig(name=args.sampler, steps=args.steps or 20)
    steps = None if sampler is not None else args.steps
    kwargs = dict(batch=args.batch, samples=args.samples, guidance_scale=args.guidance, model=args.model)
    if args.cache_dir:
        profile = cached_profile(pipe, None, sampler, steps, cache_dir=args.cache_dir, seed=args.seed, **kwargs)
    else:
        profile = profile_pipeline(pipe, None, sampler, steps, seed=args.seed, **kwargs)
    profile.save(out)
    png = heatmap(profile, out.with_suffix(".png"))
    print(summary(profile))
    print(f"\nwrote {out} and {png}")
    return 0
