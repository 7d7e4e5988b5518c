"""`planner run PLAN`: load the plan's model, apply the plan, generate a grid (production path from the shell)."""
from __future__ import annotations

import time


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="apply a plan to its model and generate samples")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--model", default=None, help="model to load (default: the plan's model name)")
    p.add_argument("--n", type=int, default=None, help="number of samples (default: the plan's batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--strict", action="store_true", help="refuse a plan tuned on another device or library version")
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png)")
    p.set_defaults(func=run)


def run(args) -> int:
    import planner
    from ground.errors import PlannerError
    from ground.generation import default_request, generate, save_grid
    from planner.models import load_pipeline
    from planner.plan import load_plan

    plan = load_plan(args.plan)
    n = args.n or plan.shapes.batch
    if n < 1:
        raise PlannerError("--n: must be at least 1")
    pipe = load_pipeline(args.model or plan.model.name, device=args.device)
    handle = planner.apply(pipe, plan, strict=args.strict)
    request = default_request(pipe, n, args.seed)
    start = time.perf_counter()
    images = generate(pipe, request, guidance_scale=plan.shapes.guidance_scale, batch_size=plan.shapes.batch)
    seconds = time.perf_counter() - start
    handle.remove()
    save_grid(images, args.out)
    print(f"wrote {args.out}: {n} samples with plan {args.plan} in {seconds:.2f}s")
    return 0
