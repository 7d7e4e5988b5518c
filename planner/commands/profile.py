"""`planner profile MODEL`: per-block, per-step latency and redundancy profile (JSON + heatmap PNG)."""
from __future__ import annotations

from planner.models import model_help

import argparse
from pathlib import Path

from ground.devices import parse_dtype, resolve_device
from ground.errors import PlannerError
from ground.files import check_writable
from planner.commands.common import add_condition_arguments, check_seed, conditions_from_args

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
    add_condition_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default="profile.json", help="JSON profile to write; the PNG goes beside it "
                                                         "(default profile.json, profile.png)")
    p.add_argument("--cache-dir", default=None,
                   help="reuse a stored profile with the same key from DIR/profiles, or store this one there")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.models import resolve_model

    for name, top in (("steps", 1000), ("batch", 4096), ("samples", 4096)):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= top:
            raise PlannerError(f"--{name}: must be 1..{top}, got {value}")
    check_seed(args.seed)
    if args.batch > args.samples:
        raise PlannerError(f"--batch ({args.batch}) cannot exceed --samples ({args.samples})")
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise PlannerError(f"--out: must name a .json file, got {args.out}")
    check_writable(out, "--out")
    resolve_device(args.device)
    resolve_model(args.model)
    conditions, size = conditions_from_args(args)

    from planner.conditions import check_fits, make_request
    from planner.models import load_pipeline
    from profiler import cached_profile, profile_pipeline
    from profiler.report import heatmap, summary

    pipe = load_pipeline(args.model, device=args.device, dtype=parse_dtype(args.dtype))
    if conditions is not None:
        check_fits(conditions, pipe)
    request = make_request(pipe, args.samples, args.seed, conditions, "search", args.negative_prompt, size)
    sampler = None
    if args.sampler:
        from backends.sampler import SamplerConfig, available_samplers

        if args.sampler not in available_samplers(pipe):
            raise PlannerError(f"--sampler {args.sampler}: not usable with {args.model}; choose one of "
                               + ", ".join(available_samplers(pipe)))
        sampler = SamplerConfig(name=args.sampler, steps=args.steps or 20)
    steps = None if sampler is not None else args.steps
    kwargs = dict(batch=args.batch, guidance_scale=args.guidance, model=args.model)
    if size is not None:   # part of the profile's key (resolution)
        kwargs.update(height=size[0], width=size[1])
    if args.cache_dir:
        profile = cached_profile(pipe, request, sampler, steps, cache_dir=args.cache_dir, **kwargs)
    else:
        profile = profile_pipeline(pipe, request, sampler, steps, **kwargs)
    profile.save(out)
    png = heatmap(profile, out.with_suffix(".png"))
    print(summary(profile))
    print(f"\nwrote {out} and {png}")
    return 0
