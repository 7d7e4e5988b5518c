"""`planner validate PLAN...`: check plan files without loading any model; exit 0 if all are valid."""
from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="check plan files (schema, techniques, values); exit 2 if invalid")
    p.add_argument("plans", nargs="+", help="plan YAML files")
    p.set_defaults(func=run)


def run(args) -> int:
    from ground.errors import PlannerError, printable
    from planner.plan import load_plan

    bad = 0
    for path in args.plans:
        try:
            plan = load_plan(path)
        except PlannerError as exc:
            print(f"planner: error: {printable(exc, 2000)}", file=sys.stderr)
            bad += 1
            continue
        print(f"{printable(path)}: valid plan v{plan.version} for {printable(plan.model.name)} "
              f"({len(plan.techniques)} techniques)")
    return 2 if bad else 0
