"""`planner plan-from-study --study-name NAME`: the plan of a finished (multi-worker) study, no new trials."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plan-from-study", help="select, verify and write the plan of an existing study (no new trials)",
        description="Reads the settings `planner optimize` stored in the study, re-verifies its fastest feasible "
                    "trials on unseen seeds and writes the plan, as the last worker of a search would.")
    p.add_argument("--study-name", required=True, help="the study the workers shared")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL the workers used (default: $PLANNER_STORAGE, else the journal "
                        "file in the cache's studies/ folder)")
    p.add_argument("--out", default=None, help="plan YAML to write (default ./MODEL.plan.yaml; checked first)")
    p.add_argument("--model", default=None, help="the model to load (default: the one the study recorded)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, fixed for timing (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ground.errors import PlannerError
    from planner.search.optimize import plan_from_study

    if args.threads is not None and not 1 <= args.threads <= 4096:
        raise PlannerError(f"--threads: must be 1..4096, got {args.threads}")
    plan_from_study(args.study_name, args.storage, args.out, args.threads, model=args.model)
    return 0
