"""`planner validate PLAN...`: check plan files without loading any model; exit 0 if all are valid."""
from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="check plan files (schema, techniques, values); exit 2 if invalid")
    p.add_argument("plans", nargs="+", help="plan YAML files")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.plan import load_plan
    from ground.errors import PlannerError

    bad = 0
    for path in args.plans:
        try:
            plan = load_plan(path)
        except PlannerError as exc:
            print(f"planner: error: {exc}", file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: valid plan v{plan.version} for {plan.model.name} ({len(plan.techniques)} techniques)")
    return 2 if bad else 0
