"""planner: an auto-tuning acceleration planner for diffusion-model inference.

    import planner
    handle = planner.apply(pipe, "plan.yaml")   # accelerate an already-loaded pipeline
    handle.remove()                              # and restore it exactly
"""
from ground import __version__  # noqa: F401
from ground.errors import BudgetNotMet, PlannerError  # noqa: F401

from planner import demo as _demo  # noqa: F401,E402  the built-in models register themselves


def apply(pipe, plan, strict: bool = False):
    """Apply a plan (path or `planner.plan.Plan`) to a loaded pipeline; see planner.runtime."""
    from planner.runtime import apply as _apply

    return _apply(pipe, plan, strict=strict)


def load_plan(path):
    from planner.plan import load_plan as _load

    return _load(path)
