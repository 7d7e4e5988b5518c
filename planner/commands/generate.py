"""`planner generate MODEL`: write a PNG grid of samples."""
from __future__ import annotations

import argparse
import time

from ground.errors import PlannerError
from planner.commands.common import add_condition_arguments, check_seed, conditions_from_args
from planner.models import model_help


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate a grid of samples from a model (optionally with a plan)",
                              description="Generate N samples (conditions cycle over your prompts, the classes or "
                                          "built-in prompts).")
    p.add_argument("model", help=model_help())
    p.add_argument("--n", type=int, default=20, help="number of samples, 1..10000 (default 20)")
    p.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed+i (default 0)")
    p.add_argument("--steps", type=int, default=None, help="inference steps, 1..1000 (default: the pipeline's)")
    add_condition_arguments(p)
    p.add_argument("--plan", default=None, help="apply this plan YAML before generating")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png; checked first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ground.devices import parse_dtype, resolve_device
    from ground.files import check_writable
    from ground.generation import generate, save_grid
    from planner.conditions import check_fits, make_request
    from planner.models import load_pipeline, resolve_model

    if not 1 <= args.n <= 10_000:
        raise PlannerError(f"--n: must be 1..10000, got {args.n}")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise PlannerError(f"--steps: must be 1..1000, got {args.steps}")
    check_seed(args.seed)
    resolve_device(args.device)
    resolve_model(args.model)
    check_writable(args.out, "--out")
    conditions, size = conditions_from_args(args)
    plan = None
    if args.plan:
        from planner.plan import load_plan

        plan = load_plan(args.plan)
    pipe = load_pipeline(args.model, device=args.device, dtype=parse_dtype(args.dtype))
    if conditions is not None:
        check_fits(conditions, pipe)
    handle = None
    if plan is not None:
        import planner

        handle = planner.apply(pipe, plan)
    try:
        request = make_request(pipe, args.n, args.seed, conditions, "search", args.negative_prompt, size)
        start = time.perf_counter()
        images = generate(pipe, request, steps=args.steps, guidance_scale=args.guidance)
        seconds = time.perf_counter() - start
    finally:
        if handle is not None:
            handle.remove()
    save_grid(images, args.out)
    print(f"wrote {args.out}: {len(images)} samples from {args.model} in {seconds:.1f}s "
          f"(conditions {list(request.conditions[:10])}{' ...' if len(request) > 10 else ''})")
    return 0
