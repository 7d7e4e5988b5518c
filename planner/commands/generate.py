"""`planner generate MODEL`: write a PNG grid of samples (and optionally the raw tensor)."""
from __future__ import annotations

from planner.models import model_help

import argparse
import time

from ground.errors import PlannerError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate a grid of samples from a model (optionally with a plan)",
                              description="Generate N samples (conditions cycle over classes or built-in prompts).")
    p.add_argument("model", help=model_help())
    p.add_argument("--n", type=int, default=20, help="number of samples (default 20)")
    p.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed+i (default 0)")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default: the pipeline's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--plan", default=None, help="apply this plan YAML before generating")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ground.generation import default_request, generate, save_grid
    from planner.models import load_pipeline

    if args.n < 1:
        raise PlannerError("--n: must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise PlannerError("--steps: must be at least 1")
    pipe = load_pipeline(args.model, device=args.device)
    handle = None
    if args.plan:
        from planner.runtime import apply as apply_plan

        handle = apply_plan(pipe, args.plan)
    request = default_request(pipe, args.n, args.seed)
    start = time.perf_counter()
    images = generate(pipe, request, steps=args.steps, guidance_scale=args.guidance)
    seconds = time.perf_counter() - start
    save_grid(images, args.out)
    if handle is not None:
        handle.remove()
    print(f"wrote {args.out}: {len(images)} samples from {args.model} in {seconds:.1f}s "
          f"(conditions {list(request.conditions[:10])}{' ...' if len(request) > 10 else ''})")
    return 0
