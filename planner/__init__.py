"""planner: an auto-tuning acceleration planner for diffusion-model inference.

    import planner
    handle = planner.apply(pipe, "plan.yaml")   # accelerate an already-loaded pipeline
    handle.remove()                              # and restore it exactly
"""
from ground import __version__  # noqa: F401
from ground.errors import BudgetNotMet, PlannerError  # noqa: F401

from planner import demo as _demo  # noqa: F401,E402  the built-in models register themselves


def apply(pipe, plan, strict: bool = False, allow_lora: bool = False):
    """Apply a plan (path or `planner.plan.Plan`) to a loaded pipeline; see planner.runtime."""
    from planner.runtime import apply as _apply

    return _apply(pipe, plan, strict=strict, allow_lora=allow_lora)


def gate(pipe, plan, **options):
    """Re-check a plan's quality and speed-up on `pipe` on fresh seeds; see planner.gate."""
    from planner.gating import gate as _gate

    return _gate(pipe, plan, **options)


def load_plan(path):
    from planner.plan import load_plan as _load

    return _load(path)


def optimize(pipe, budget: str, *, prompts=None, name: str | None = None, out=None, **settings):
    """Search a plan for an already-built pipeline (a LoRA fused, your own scheduler, your class) and
    return it; with `out=`, also write it. The search keeps this one pipeline in memory and leaves it
    as it found it.

        plan = planner.optimize(pipe, budget="psnr>=30", prompts=["a cat", ...], trials=20, out="my.plan.yaml")

    `settings` are `planner.search.context.SearchSettings` fields (trials, batch, samples, baseline_steps,
    guidance_scale, negative_prompt, height, width, techniques, seed, ...); device and dtype are the pipeline's.
    """
    from ground.anatomy import anatomy_of
    from ground.devices import DTYPE_NAMES
    from planner.conditions import conditions_from_prompts
    from planner.search.context import SearchSettings
    from planner.search.optimize import optimize as _optimize

    anatomy = anatomy_of(pipe)
    conditions = conditions_from_prompts(list(prompts)) if prompts is not None else None
    label = name or getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
    settings = SearchSettings(name=str(label), budget=budget, conditions=conditions, device=str(anatomy.device),
                              dtype=DTYPE_NAMES.get(anatomy.dtype), out=None if out is None else str(out),
                              command=f"planner.optimize(pipe, budget={budget!r}, ...)", **settings)
    return _optimize(settings, pipe=pipe).plan
