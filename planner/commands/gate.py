"""`planner gate PLAN`: re-check, on fresh seeds, that a plan still keeps its budget and its speed.

Exit 0 when every budget clause holds at the conservative end of its CI and the speed-up measured side
by side with the baseline has not dropped below (1 - tolerance) x the plan's (the upper end of its CI
reaches that floor); 1 when either no longer holds; 2 on bad input. The gate runs on the conditions,
shapes and dtype the plan recorded, on seeds neither its search nor its verification used.
"""
from __future__ import annotations

import time
from xml.sax.saxutils import escape, quoteattr

from planner.gating import GATE_SEED


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("gate", help="CI gate: re-measure a plan's quality and speed-up; exit 1 if either regressed")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--model", default=None,
                   help="model to load (default: the plan's model; a hub id is loaded only when given here)")
    p.add_argument("--samples", type=int, default=None,
                   help="cap of the sample sizes on fresh seeds (default: the verification's caps)")
    p.add_argument("--seed", type=int, default=GATE_SEED, help=f"first fresh seed (default {GATE_SEED})")
    p.add_argument("--speed-tolerance", type=float, default=0.1,
                   help="allowed relative drop of the speed-up vs the plan's (default 0.1)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved latency repeats (default 7)")
    p.add_argument("--features", default=None, help="FID features: inception, a registered name, or a TorchScript PATH")
    p.add_argument("--reference", default=None, help="folder of reference images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for timing (default: the thread count the plan's speed-up was measured at)")
    p.add_argument("--junit", default=None, help="write a JUnit XML report here (checked before any work)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a plan tuned on another device, library version or component")
    p.add_argument("--allow-lora", action="store_true",
                   help="let a plan made for the base model carry over to a pipeline with LoRA adapters")
    p.set_defaults(func=run)


def _junit(path: str, plan_path: str, cases: list[tuple[str, bool, str]], seconds: float) -> None:
    from ground.files import write_text_atomic

    failures = sum(not ok for _, ok, _ in cases)
    lines = ['<?xml version="1.0" encoding="utf-8"?>',
             f'<testsuite name="planner gate" tests="{len(cases)}" failures="{failures}" time="{seconds:.1f}">']
    for name, ok, detail in cases:
        lines.append(f'  <testcase classname={quoteattr(plan_path)} name={quoteattr(name)}>')
        if not ok:
            lines.append(f'    <failure message={quoteattr(detail)}>{escape(detail)}</failure>')
        else:
            lines.append(f'    <system-out>{escape(detail)}</system-out>')
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    write_text_atomic(path, "\n".join(lines) + "\n")


def run(args) -> int:
    from ground.devices import resolve_device, torch_threads
    from ground.errors import PlannerError
    from ground.files import check_writable
    from planner.plan import load_plan
    from planner.commands.common import check_seed
    from planner.runtime import model_for_plan

    start = time.time()
    if args.samples is not None and not 8 <= args.samples <= 100_000:
        raise PlannerError("--samples: must be 8..100000 (a confidence interval needs at least 8)")
    if not 0 <= args.speed_tolerance < 1:
        raise PlannerError("--speed-tolerance: must be in [0, 1)")
    check_seed(args.seed)
    if not 1 <= args.repeats <= 1000:
        raise PlannerError(f"--repeats: must be 1..1000, got {args.repeats}")
    if args.threads is not None and not 1 <= args.threads <= 4096:
        raise PlannerError(f"--threads: must be 1..4096, got {args.threads}")
    resolve_device(args.device)
    if args.junit:
        check_writable(args.junit, "--junit")
    plan = load_plan(args.plan)
    if plan.measured is None:
        raise PlannerError(f"{args.plan}: the plan has no measured section to gate against")
    model = model_for_plan(plan, args.model)
    # A speed-up depends on the thread count (a small candidate batch parallelises worse than the baseline):
    # compare like with like unless told otherwise.
    with torch_threads(args.threads or plan.measured.threads):
        return _gate(args, plan, model, start)


def _gate(args, plan, model: str, start: float) -> int:
    from ground.devices import parse_dtype
    from planner.gating import gate
    from planner.models import load_pipeline
    from planner.search.logs import quiet_third_party

    with quiet_third_party():
        pipe = load_pipeline(model, device=args.device, dtype=parse_dtype(plan.shapes.dtype))
        result = gate(pipe, plan, seed=args.seed, samples=args.samples, repeats=args.repeats,
                      speed_tolerance=args.speed_tolerance, features=args.features, reference=args.reference,
                      strict=args.strict, allow_lora=args.allow_lora, name=model)
    print("\n".join(result.lines))
    if args.junit:
        _junit(args.junit, args.plan, result.cases, time.time() - start)
    return 0 if result.passed else 1
