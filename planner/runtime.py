"""Apply a plan to an already-loaded pipeline in production, in one call, and remove it.

    import planner
    handle = planner.apply(pipe, "plans/digits-unet.yaml")
    images = pipe(...)          # accelerated
    handle.remove()             # exactly the original pipeline again

Concurrency: calls on one accelerated pipeline are serialised by a per-pipeline lock, because cache
techniques keep per-call state. For parallel serving, load one pipeline per worker.
"""
from __future__ import annotations

import inspect
import threading
import warnings

from backends.call_override import wrap_call
from backends.technique import apply_all
from planner.environment import current_environment, differences
from planner.errors import PlannerError
from planner.models import denoiser_of, fingerprint
from planner.plan import Plan, load_plan


class PlanMismatch(PlannerError):
    """The plan was tuned for another model (or, with strict=True, another device or library)."""


class PlanHandle:
    def __init__(self, plan: Plan, techniques, undo_guard) -> None:
        self.plan = plan
        self.techniques = techniques
        self._undo_guard = undo_guard
        self.removed = False

    @property
    def setup_seconds(self) -> float:
        return sum(float(h.info.get("setup_s", 0.0)) for h in self.techniques.handles)

    def remove(self) -> None:
        if not self.removed:
            self._undo_guard()
            self.techniques.remove()
            self.removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _call_shape(signature, args, kwargs) -> tuple[int | None, int | None]:
    """(batch, resolution) a pipeline call asks for, where the arguments say it."""
    try:
        bound = signature.bind_partial(None, *args, **kwargs).arguments
    except TypeError:
        return None, None
    batch = None
    for key in ("class_labels", "prompt"):
        value = bound.get(key)
        if value is not None:
            batch = len(value) if isinstance(value, (list, tuple)) else (value.numel() if hasattr(value, "numel") else 1)
            break
    if batch is None and isinstance(bound.get("batch_size"), int):
        batch = bound["batch_size"]
    per_prompt = bound.get("num_images_per_prompt")
    if batch is not None and isinstance(per_prompt, int):
        batch *= per_prompt
    height = bound.get("height")
    return batch, height if isinstance(height, int) else None


def _guard(pipe, plan: Plan):
    """Serialise calls (per-pipeline lock) and warn once when the call's shapes differ from the tuned ones."""
    signature = inspect.signature(type(pipe).__call__)
    lock = threading.RLock()
    warned = []

    def make_call(base_call):
        def __call__(self, *args, **kwargs):
            batch, resolution = _call_shape(signature, args, kwargs)
            tuned = plan.shapes
            if not warned and ((batch and batch != tuned.batch) or (resolution and tuned.resolution
                                                                     and resolution != tuned.resolution)):
                warned.append(True)
                warnings.warn(f"plan tuned for batch {tuned.batch}, resolution {tuned.resolution}; this call "
                              f"asks for batch {batch}, resolution {resolution}: it runs, but the measured "
                              f"speed-up and quality were not checked at these shapes", stacklevel=2)
            with lock:
                return base_call(self, *args, **kwargs)
        return __call__
    return wrap_call(pipe, make_call)


def check_plan_fits(pipe, plan: Plan, strict: bool = False) -> None:
    here_fp = fingerprint(denoiser_of(pipe))
    if here_fp != plan.model.fingerprint:
        raise PlanMismatch(f"plan is for model {plan.model.name} ({plan.model.fingerprint}) but this pipeline's "
                           f"denoiser is {here_fp}; re-run `planner optimize` for this model")
    device = str(getattr(pipe, "device", "cpu"))
    diffs = differences(plan.environment.model_dump(), current_environment(device))
    if diffs:
        message = "plan tuned on another environment: " + "; ".join(diffs)
        if strict:
            raise PlanMismatch(message + " (strict=True)")
        warnings.warn(message + ": speed-up and quality may differ", stacklevel=3)


def apply(pipe, plan: str | Plan, strict: bool = False) -> PlanHandle:
    """Accelerate `pipe` in place with `plan` (a path or a Plan); returns a handle whose remove() undoes it."""
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    check_plan_fits(pipe, plan, strict=strict)
    techniques = apply_all(pipe, plan.technique_configs())
    try:
        undo_guard = _guard(pipe, plan)
    except BaseException:
        techniques.remove()
        raise
    return PlanHandle(plan, techniques, undo_guard)


__all__ = ["apply", "PlanHandle", "PlanMismatch", "check_plan_fits"]
