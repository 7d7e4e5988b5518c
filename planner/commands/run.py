"""`planner run PLAN`: load the plan's model, apply the plan, generate a grid (production path from the shell)."""
from __future__ import annotations

import time

from planner.commands.common import add_condition_arguments, check_seed, conditions_from_args


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("run", help="apply a plan to its model and generate samples")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--model", default=None,
                   help="model to load (default: the plan's model; a hub id is loaded only when given here)")
    p.add_argument("--n", type=int, default=None, help="number of samples (default: the plan's batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--strict", action="store_true",
                   help="refuse a plan tuned on another device, library version or component")
    p.add_argument("--allow-lora", action="store_true",
                   help="let a plan made for the base model carry over to a pipeline with LoRA adapters")
    add_condition_arguments(p, dtype=False)
    p.add_argument("--out", default="grid.png", help="PNG grid to write (default grid.png; checked first)")
    p.set_defaults(func=run)


def run(args) -> int:
    import planner
    from ground.devices import parse_dtype, resolve_device
    from ground.errors import PlannerError
    from ground.files import check_writable
    from ground.generation import generate, save_grid
    from planner.conditions import check_fits, make_request
    from planner.models import load_pipeline
    from planner.plan import load_plan
    from planner.runtime import model_for_plan

    if args.n is not None and not 1 <= args.n <= 10_000:
        raise PlannerError(f"--n: must be 1..10000, got {args.n}")
    check_seed(args.seed)
    resolve_device(args.device)
    check_writable(args.out, "--out")
    conditions, size = conditions_from_args(args)
    plan = load_plan(args.plan)
    model = model_for_plan(plan, args.model)
    n = args.n or plan.shapes.batch
    conditions = conditions or plan.conditions
    size = size or ((plan.shapes.resolution, plan.shapes.width) if plan.shapes.width else None)
    pipe = load_pipeline(model, device=args.device, dtype=parse_dtype(plan.shapes.dtype))
    if conditions is not None:
        check_fits(conditions, pipe)
    handle = planner.apply(pipe, plan, strict=args.strict, allow_lora=args.allow_lora)
    try:
        request = make_request(pipe, n, args.seed, conditions, "verify", args.negative_prompt, size)
        guidance = args.guidance if args.guidance is not None else plan.shapes.guidance_scale
        start = time.perf_counter()
        images = generate(pipe, request, guidance_scale=guidance, batch_size=plan.shapes.batch)
        seconds = time.perf_counter() - start
    finally:
        handle.remove()
    save_grid(images, args.out)
    print(f"wrote {args.out}: {n} samples with plan {args.plan} in {seconds:.2f}s")
    return 0
