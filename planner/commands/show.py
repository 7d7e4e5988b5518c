"""`planner show PLAN`: what a plan does and what was measured, in a few readable lines."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="summarise a plan: techniques, tuned shapes, measured speed and quality")
    p.add_argument("plan", help="plan YAML file")
    p.set_defaults(func=run)


def describe(plan) -> str:
    lines = [f"plan v{plan.version} for {plan.model.name} ({plan.model.pipeline}, {plan.model.fingerprint})",
             f"tuned on {plan.environment.device} ({plan.environment.device_name}), torch {plan.environment.torch}, "
             f"diffusers {plan.environment.diffusers}",
             f"shapes: batch {plan.shapes.batch}, resolution {plan.shapes.resolution}, steps {plan.shapes.steps}",
             f"budget: {plan.budget}", "techniques (in order):"]
    for config in sorted(plan.technique_configs(), key=lambda c: c.stage):
        lines.append(f"  - {config.label()}")
    if not plan.techniques:
        lines.append("  (none: identity plan)")
    m = plan.measured
    if m is not None:
        ci = f" (95% CI {m.speedup_ci[0]:.2f}-{m.speedup_ci[1]:.2f})" if m.speedup_ci else ""
        lines.append(f"speed-up: {m.speedup:.2f}x{ci}, {m.plan_latency_s * 1e3:.1f} ms vs {m.baseline_latency_s * 1e3:.1f} ms"
                     f" per call (median of {m.latency_repeats}, interleaved)"
                     + (f"; counted work ratio {m.work_ratio:.2f}" if m.work_ratio is not None else ""))
        for r in m.metrics:
            base = f" (baseline {r.baseline:.3f})" if r.baseline is not None else ""
            lines.append(f"  {r.clause:<12} {r.metric} {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] n={r.n}{base} "
                         f"holds={'yes' if r.holds_conservative else 'no'}")
        lines.append(f"seeds: search {m.search_seeds[0]}+{m.search_seeds[1]}, verification {m.verify_seeds[0]}+{m.verify_seeds[1]}")
    lines.append(f"reproduce: {plan.provenance.command}")
    return "\n".join(lines)


def run(args) -> int:
    from planner.plan import load_plan

    print(describe(load_plan(args.plan)))
    return 0
