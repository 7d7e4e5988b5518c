"""`planner gate PLAN`: re-check, on fresh seeds, that a plan still keeps its budget and its speed.

Exit 0 when every budget clause holds at the conservative end of its CI and the speed-up measured side
by side with the baseline has not dropped below (1 - tolerance) x the plan's (the upper end of its CI
reaches that floor); 1 when either no longer holds; 2 on bad input.
"""
from __future__ import annotations

import time
import warnings
from xml.sax.saxutils import escape, quoteattr

GATE_SEED = 3_000_000  # fresh seeds: never the plan's search or verification seeds


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("gate", help="CI gate: re-measure a plan's quality and speed-up; exit 1 if either regressed")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--model", default=None, help="model to load (default: the plan's model name)")
    p.add_argument("--samples", type=int, default=500, help="samples on fresh seeds (default 500)")
    p.add_argument("--seed", type=int, default=GATE_SEED, help=f"first fresh seed (default {GATE_SEED})")
    p.add_argument("--speed-tolerance", type=float, default=0.1,
                   help="allowed relative drop of the speed-up vs the plan's (default 0.1)")
    p.add_argument("--repeats", type=int, default=7, help="interleaved latency repeats (default 7)")
    p.add_argument("--features", default=None, help="FID features: digits, inception, or a TorchScript PATH")
    p.add_argument("--reference", default=None, help="folder of reference images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for timing (default: the thread count the plan's speed-up was measured at)")
    p.add_argument("--junit", default=None, help="write a JUnit XML report here")
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
    import torch

    from ground.errors import PlannerError
    from planner.plan import load_plan

    start = time.time()
    if args.samples < 20:
        raise PlannerError("--samples: at least 20 are needed for a confidence interval")
    if not 0 <= args.speed_tolerance < 1:
        raise PlannerError("--speed-tolerance: must be in [0, 1)")
    plan = load_plan(args.plan)
    if plan.measured is None:
        raise PlannerError(f"{args.plan}: the plan has no measured section to gate against")
    # A speed-up depends on the thread count (a small candidate batch parallelises worse than the baseline):
    # compare like with like unless told otherwise.
    threads = args.threads or plan.measured.threads
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _gate(args, plan, start)
    finally:
        torch.set_num_threads(previous)   # callers in the same process keep their setting


def _gate(args, plan, start) -> int:
    import planner
    from planner.models import load_pipeline
    from planner.quality.budget import parse_budget
    from planner.search.context import SearchContext, SearchSettings
    from planner.search.latency import interleaved_ratio

    model = args.model or plan.model.name
    base_pipe = load_pipeline(model, device=args.device)
    cand_pipe = load_pipeline(model, device=args.device)
    handle = planner.apply(cand_pipe, plan)
    settings = SearchSettings(model=model, budget=plan.budget, seed=args.seed, device=args.device,
                              batch=plan.shapes.batch, samples=args.samples, cheap_samples=min(20, args.samples),
                              verify_samples=args.samples, baseline_steps=plan.measured.baseline_steps,
                              guidance_scale=plan.shapes.guidance_scale, features=args.features,
                              reference=args.reference)
    ctx = SearchContext(settings, parse_budget(plan.budget), base_pipe, cand_pipe, plan.model.fingerprint)
    with warnings.catch_warnings():
        # Quality images are generated in larger batches, exactly as the search generated them; the
        # speed-up below is timed at the tuned batch. The runtime's shape warning is noise here.
        warnings.filterwarnings("ignore", message="plan tuned for batch")
        images = ctx.generate_candidate(ctx.search.request)
    evaluation = ctx.search.evaluator.evaluate(images)
    latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch, repeats=args.repeats)
    handle.remove()
    floor = plan.measured.speedup * (1 - args.speed_tolerance)
    # Timing on shared machines is noisy: speed has regressed when even the CI's upper end of the measured
    # speed-up is below the floor, i.e. the drop is real, not a burst of load during the measurement.
    speed_ok = latency.speedup_ci[1] >= floor
    print(f"gate {args.plan} ({model}) on {args.samples} fresh seeds from {args.seed}:")
    print(evaluation.table())
    print(f"speed-up {latency.speedup:.2f}x (95% CI {latency.speedup_ci[0]:.2f}-{latency.speedup_ci[1]:.2f}, median of "
          f"{latency.repeats} interleaved pairs, {latency.threads} thread(s)); plan says {plan.measured.speedup:.2f}x, floor {floor:.2f}x: "
          f"{'holds' if speed_ok else 'REGRESSED (whole CI below the floor)'}")
    if args.device == "cpu" and plan.measured.threads and latency.threads != plan.measured.threads:
        print(f"note: the plan's speed-up was measured at {plan.measured.threads} thread(s), this gate timed "
              f"{latency.threads}: speed-ups at different thread counts are not comparable")
    cases = []
    for r in evaluation.results:
        if r.measured is None:
            cases.append((str(r.clause), False, r.message or "unavailable"))
        else:
            m = r.measured
            cases.append((str(r.clause), bool(r.conservative),
                          f"{m.name} = {m.value:.4g} [{m.ci_low:.4g}, {m.ci_high:.4g}] n={m.n}, bound {r.clause.bound:g}"))
    cases.append(("speed-up", speed_ok, f"{latency.speedup:.3f}x measured (95% CI {latency.speedup_ci[0]:.3f}-"
                                        f"{latency.speedup_ci[1]:.3f}) vs floor {floor:.3f}x"))
    if args.junit:
        _junit(args.junit, args.plan, cases, time.time() - start)
    ok = all(passed for _, passed, _ in cases)
    print("gate: PASS" if ok else "gate: FAIL (" + ", ".join(name for name, passed, _ in cases if not passed) + ")")
    return 0 if ok else 1
