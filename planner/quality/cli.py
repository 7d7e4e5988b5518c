"""`planner evaluate`: does a candidate keep the quality budget against the model's baseline?

    planner evaluate MODEL (--plan PLAN | --candidate-steps K) --budget EXPR [--samples N] [--seed S]
                     [--features inception|digits|PATH] [--reference DIR] [--steps K] [--sampler NAME]

Prints one row per clause (metric, baseline, candidate, measured quantity, CI, N, verdicts) and exits
0 when the budget holds, 1 when it does not, 2 on bad input or when a clause cannot be evaluated.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from ground.errors import PlannerError
from planner.commands.common import add_condition_arguments
from planner.models import model_help

DEFAULT_SAMPLES = 500
DEFAULT_STEPS = 50
SAMPLERS = ("ddim", "ddpm", "euler", "dpm", "keep")


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="check a candidate against the baseline under a quality budget",
        description="Generate baseline and candidate images on the same conditions and seeds, measure the "
                    "budget's metrics with bootstrap CIs, and exit 0 when the budget holds, 1 when not.")
    p.add_argument("model", metavar="MODEL", help=model_help())
    cand = p.add_mutually_exclusive_group()
    cand.add_argument("--plan", metavar="PLAN", help="a plan file to apply to the model (the candidate)")
    cand.add_argument("--candidate-steps", type=int, metavar="K",
                      help="the candidate is the baseline sampler with K steps (no plan needed)")
    p.add_argument("--budget", required=True, metavar="EXPR",
                   help="comma-joined clauses that must all hold, e.g. 'fid+2,acc-1' or 'psnr>=30,ssim>=0.9'")
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"samples per side (default {DEFAULT_SAMPLES})")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="first seed; samples use S..S+N-1 (default 0)")
    p.add_argument("--features", default=None, metavar="inception|digits|PATH",
                   help="FID/KID features (default: digits for the demo models and 1-channel images, else inception)")
    p.add_argument("--reference", type=Path, default=None, metavar="DIR",
                   help="folder of reference images for FID/KID (default: held-out digits for the demo models, "
                        "else the baseline's outputs on disjoint seeds)")
    p.add_argument("--steps", type=int, default=None, metavar="K",
                   help=f"baseline sampling steps (default: the steps of the baseline the plan was measured "
                        f"against, measured.baseline_steps; else {DEFAULT_STEPS})")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="baseline scheduler (default: keep = the pipeline's own with --plan, as the search "
                        "used; ddim with --candidate-steps)")
    add_condition_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--boot", type=int, default=200, metavar="B", help="bootstrap replicates (default 200)")
    p.add_argument("--verdict", choices=("conservative", "point"), default="conservative",
                   help="exit 0 only when every clause holds at its CI's unfavourable end (conservative, "
                        "default) or at the measured value (point)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write .planner-cache/ ($PLANNER_CACHE)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the evaluation as JSON")
    p.set_defaults(func=cmd_evaluate)
    return p


def set_sampler(pipe, name: str) -> Callable[[], None]:
    """Give `pipe` the baseline sampler `name` (a named scheduler replacement, listed by
    `ground.hooks.attached`); returns its undo. Named "baseline.sampler", not "planner.*": it is the
    evaluation's starting point, not a technique, so a plan can still be applied on top."""
    import diffusers

    from ground.hooks import replace_attribute

    if name == "keep":
        return lambda: None
    cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler,
           "euler": diffusers.EulerDiscreteScheduler, "dpm": diffusers.DPMSolverMultistepScheduler}[name]
    if isinstance(pipe.scheduler, cls):
        return lambda: None
    return replace_attribute(pipe, "scheduler", cls.from_config(pipe.scheduler.config), "baseline.sampler")


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise PlannerError(f"{name} must be at least {minimum}, got {value}")


def _load_plan(path):
    try:
        from planner.plan import load_plan
        from planner.runtime import apply
    except ImportError:
        raise PlannerError("--plan needs the plan runtime (planner.runtime), which this installation lacks; "
                           "use --candidate-steps K to evaluate a fewer-steps candidate") from None
    return load_plan(path), apply


def cmd_evaluate(args) -> int:
    from planner.quality.budget import parse_budget

    from ground.devices import parse_dtype, resolve_device
    from planner.commands.common import check_seed, conditions_from_args
    from planner.models import resolve_model

    budget = parse_budget(args.budget)
    _positive("--samples", args.samples, 2)
    _positive("--steps", args.steps)
    _positive("--candidate-steps", args.candidate_steps)
    _positive("--boot", args.boot, 0)
    for flag, value in (("--samples", args.samples), ("--boot", args.boot)):
        if value > 100_000:
            raise PlannerError(f"{flag}: at most 100000, got {value}")
    for flag, value in (("--steps", args.steps), ("--candidate-steps", args.candidate_steps)):
        if value is not None and value > 1000:   # diffusers' schedulers refuse more steps than they were trained on
            raise PlannerError(f"{flag}: must be 1..1000, got {value}")
    check_seed(args.seed)
    if args.plan is None and args.candidate_steps is None:
        raise PlannerError("give the candidate: --plan PLAN or --candidate-steps K")
    if args.plan is not None and not Path(args.plan).is_file():
        raise PlannerError(f"--plan {args.plan}: no such file")
    if args.reference is not None and not args.reference.is_dir():
        raise PlannerError(f"--reference {args.reference}: not a folder of images")
    if args.json is not None:
        from ground.files import check_writable

        check_writable(args.json, "--json")
    resolve_device(args.device)
    conditions, size = conditions_from_args(args)
    plan, apply_plan = _load_plan(args.plan) if args.plan is not None else (None, None)
    model = args.model
    if plan is not None:
        from planner.runtime import model_for_plan

        model = model_for_plan(plan, args.model)
        conditions = conditions or plan.conditions
        args.dtype = args.dtype or plan.shapes.dtype
    else:
        resolve_model(model)
    if plan is not None:
        # The baseline is the one the plan was measured against, not the plan's own step count.
        measured_steps = plan.measured.baseline_steps if plan.measured is not None else None
        args.steps = args.steps or measured_steps
        args.guidance = args.guidance if args.guidance is not None else plan.shapes.guidance_scale
    args.steps = args.steps or DEFAULT_STEPS
    args.sampler = args.sampler or ("keep" if plan is not None else "ddim")

    from ground.anatomy import anatomy_of
    from planner.conditions import check_fits, make_request
    from planner.models import load_pipeline
    from planner.quality.evaluate import REFERENCE_SEED_OFFSET, Evaluator
    from planner.quality.features import get_extractor
    from planner.quality.reference import resolve_reference
    from planner.quality.store import DiskCache, cached_features, cached_generate, generation_key

    cache = None if args.no_cache else DiskCache()
    pipe = load_pipeline(model, device=args.device, dtype=parse_dtype(args.dtype))
    if conditions is not None:
        check_fits(conditions, pipe)
    set_sampler(pipe, args.sampler)
    request = make_request(pipe, args.samples, args.seed, conditions, "verify", args.negative_prompt, size)
    gen = dict(guidance_scale=args.guidance, sampler=args.sampler, cache=cache)
    print(f"planner: generating {args.samples} baseline images ({args.sampler}, {args.steps} steps)", file=sys.stderr)
    baseline = cached_generate(pipe, request, steps=args.steps, **gen)
    if apply_plan is not None:
        from ground.generation import generate

        print(f"planner: generating {args.samples} candidate images (plan {args.plan})", file=sys.stderr)
        handle = apply_plan(pipe, plan)
        try:  # the plan's techniques set the candidate's own steps and sampler
            candidate = generate(pipe, request, guidance_scale=args.guidance)
        finally:
            handle.remove()
    else:
        print(f"planner: generating {args.samples} candidate images ({args.candidate_steps} steps)", file=sys.stderr)
        candidate = cached_generate(pipe, request, steps=args.candidate_steps, **gen)

    reference = extractor = base_feats = None
    if budget.metrics & {"fid", "kid"}:
        extractor = get_extractor(args.features, pipe=pipe)
        ref_request = make_request(pipe, args.samples, args.seed + REFERENCE_SEED_OFFSET, conditions, "search",
                                   args.negative_prompt, size)
        ref_key = generation_key(pipe, ref_request, args.steps, args.guidance, args.sampler)
        reference = resolve_reference(
            extractor, pipe=pipe, reference_dir=args.reference,
            generate_reference=lambda: cached_generate(pipe, ref_request, steps=args.steps, **gen),
            cache=cache, cache_key=dict(ref_key, kind="reference"))
        base_key = generation_key(pipe, request, args.steps, args.guidance, args.sampler)
        base_feats = cached_features(baseline, extractor, cache, base_key)
    classifier = anatomy_of(pipe).label_classifier() if "acc" in budget.metrics else None
    evaluator = Evaluator(budget, baseline, reference, extractor, list(request.conditions),
                          n_boot=args.boot, seed=args.seed, baseline_features=base_feats, classifier=classifier)
    result = evaluator.evaluate(candidate)
    cand_label = f"plan {args.plan}" if args.plan else f"{args.candidate_steps} steps"
    print(f"model {args.model}  baseline {args.steps} steps ({args.sampler})  candidate {cand_label}  "
          f"N {args.samples}  seeds {args.seed}..{args.seed + args.samples - 1}")
    if reference is not None:
        print(f"reference: {reference.source}  features: {extractor.ident}")
    print(result.table())
    if args.json is not None:
        from ground.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(dict(result.to_dict(), model=args.model), indent=2, default=str) + "\n")
    if not result.available:
        for message in result.unavailable_messages():
            print(f"planner: error: {message}", file=sys.stderr)
        return 2
    holds = result.verdict(args.verdict)
    print(f"budget {budget}: {'holds' if holds else 'does NOT hold'} ({args.verdict} verdict)")
    return 0 if holds else 1


def main(argv=None) -> int:
    """Stand-alone entry (`python -m planner.quality.cli evaluate ...`) until planner/cli.py wires it."""
    parser = argparse.ArgumentParser(prog="planner")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PlannerError as exc:
        print(f"planner: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
