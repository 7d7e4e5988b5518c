"""`planner show PLAN`: what a plan does and what was measured, in a few readable lines; with
`--pipeline`, also every named hook the plan attaches to its model."""
from __future__ import annotations

from ground.errors import printable


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("show", help="summarise a plan: techniques, tuned shapes, measured speed and quality")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--pipeline", action="store_true",
                   help="load the plan's model, apply the plan and list the named hooks it attaches")
    p.add_argument("--model", default=None, help="with --pipeline: the model to load (default: the plan's)")
    p.set_defaults(func=run)


def describe(plan) -> str:
    t = printable   # everything below came from a file: no terminal escape codes reach the screen
    lines = [f"plan v{plan.version} for {t(plan.model.name)} ({t(plan.model.pipeline)}, {plan.model.fingerprint})",
             f"tuned on {t(plan.environment.device)} ({t(plan.environment.device_name)}), torch "
             f"{t(plan.environment.torch)}, diffusers {t(plan.environment.diffusers)}",
             f"shapes: batch {plan.shapes.batch}, resolution {plan.shapes.resolution}"
             + (f"x{plan.shapes.width}" if plan.shapes.width else "") + f", steps {plan.shapes.steps}"
             + (f", dtype {plan.shapes.dtype}" if plan.shapes.dtype else ""),
             f"budget: {t(plan.budget)}"]
    if plan.model.lora:
        lines.append("LoRA when tuned: " + ", ".join(f"{t(a)} ({s:g})" for a, s in plan.model.lora.items()))
    if plan.conditions is not None:
        c = plan.conditions
        lines.append(f"conditions: {t(c.source)}, {len(c.search)} search and {len(c.verify)} verification rows")
    lines.append("techniques (in order):")
    for config in sorted(plan.technique_configs(), key=lambda c: c.stage):
        lines.append(f"  - {t(config.label(), 300)}")
    if not plan.techniques:
        lines.append("  (none: identity plan)")
    m = plan.measured
    if m is not None:
        ci = f" (95% CI {m.speedup_ci[0]:.2f}-{m.speedup_ci[1]:.2f})" if m.speedup_ci else ""
        lines.append(f"speed-up: {m.speedup:.2f}x{ci}, {m.plan_latency_s * 1e3:.1f} ms vs {m.baseline_latency_s * 1e3:.1f} ms"
                     f" per call (median of {m.latency_repeats}, interleaved)"
                     + (f"; counted work ratio {m.work_ratio:.2f}" if m.work_ratio is not None else ""))
        if m.setup_s:
            lines.append(f"setup (compile/export): {m.setup_s:.1f} s once, over {m.amortised_over_calls} calls")
        for r in m.metrics:
            base = f" (baseline {r.baseline:.3f})" if r.baseline is not None else ""
            lines.append(f"  {t(r.clause):<12} {t(r.metric)} {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] ({r.ci_level:.2%} CI) n={r.n}{base} "
                         f"holds={'yes' if r.holds_conservative else 'no'}")
        lines.append(f"seeds: search {m.search_seeds[0]}+{m.search_seeds[1]}, verification {m.verify_seeds[0]}+{m.verify_seeds[1]}")
        if m.decisions is not None:
            d = m.decisions
            failed = sum(1 for r in d.rows if not r.verify_holds) // max(1, len({r.clause for r in d.rows}))
            agreement = "n/a" if d.agreement is None else f"{d.agreement:.0%}"
            lines.append(f"decisions: {failed} verified candidate(s) failed before this one; search verdicts agreed "
                         f"with the verification's {agreement}; search - verification "
                         + (", ".join(f"{t(k)} {v:+.3g}" for k, v in d.bias.items()) or "n/a"))
        if m.search_cost is not None:
            c = m.search_cost
            lines.append(f"search cost: {c.wall_s / 60:.1f} min = {c.bie:.0f} baseline-image equivalents "
                         f"({c.images} images, {c.trials} trials)")
    lines.append(f"reproduce: {t(plan.provenance.command, 1000)}")
    return "\n".join(lines)


def run(args) -> int:
    from planner.plan import load_plan

    plan = load_plan(args.plan)
    print(describe(plan))
    if args.pipeline:
        import planner
        from ground.devices import parse_dtype
        from planner.models import load_pipeline
        from planner.runtime import model_for_plan

        pipe = load_pipeline(model_for_plan(plan, args.model), dtype=parse_dtype(plan.shapes.dtype))
        handle = planner.apply(pipe, plan)
        try:
            hooks = handle.attached()
        finally:
            handle.remove()
        print(f"attached to the pipeline ({len(hooks)} named hooks):")
        for where, name in hooks:
            print(f"  {where}: {name}")
    return 0
