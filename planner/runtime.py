"""Apply a plan to an already-loaded pipeline in production, in one call, and remove it.

    import planner
    handle = planner.apply(pipe, "plans/digits-unet.yaml")
    images = pipe(...)          # accelerated
    handle.attached()           # [(where, hook name), ...]: what the plan attached
    handle.remove()             # exactly the original pipeline again

One plan per pipeline: `apply` on a pipeline that is already accelerated (by a plan, or by techniques
attached directly with `backends.apply`) is refused with one line; remove the first, then apply the
other. A plan whose techniques fail to apply leaves the pipeline untouched.

Concurrency: calls on one accelerated pipeline are serialised by a per-pipeline lock (the plan's named
call hook, outermost), because cache techniques keep per-call state. For parallel serving, load one
pipeline per worker.
"""
from __future__ import annotations

import inspect
import threading
import warnings

from backends.technique import apply_all
from ground.anatomy import anatomy_of, denoiser_of
from ground.environment import current_environment, differences
from ground.errors import PlannerError
from ground.hooks import add_call_hook, attached
from ground.identity import components, fingerprint, lora_adapters, structure
from planner.plan import Plan, load_plan

HOOK = "planner.plan"
ACTIVE = "_planner_active_plan"   # pipe.__dict__: the PlanHandle applied now


class PlanMismatch(PlannerError):
    """The plan was tuned for another model (or, with strict=True, another device or library)."""


class PlanHandle:
    def __init__(self, pipe, plan: Plan, techniques, undo_guard, source: str, lock=None) -> None:
        self.pipe = pipe
        self.lock = lock   # the per-pipeline lock every call of the accelerated pipeline holds (re-entrant)
        self.plan = plan
        self.techniques = techniques
        self.source = source
        self._undo_guard = undo_guard
        self.removed = False

    @property
    def setup_seconds(self) -> float:
        return sum(float(h.info.get("setup_s", 0.0)) for h in self.techniques.handles)

    def attached(self) -> list[tuple[str, str]]:
        """The named hooks on the pipeline (empty once removed)."""
        return attached(self.pipe)

    def remove(self) -> None:
        if self.removed:
            return
        self._undo_guard()
        self.techniques.remove()
        if self.pipe.__dict__.get(ACTIVE) is self:
            del self.pipe.__dict__[ACTIVE]
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


def _guard(pipe, plan: Plan, lock):
    """Serialise calls (per-pipeline lock) and warn once when the call's shapes differ from the tuned ones."""
    signature = inspect.signature(type(pipe).__call__)
    warned = []

    def guarded(call, *args, **kwargs):
        batch, resolution = _call_shape(signature, args, kwargs)
        tuned = plan.shapes
        if not warned and ((batch and batch != tuned.batch) or (resolution and tuned.resolution
                                                                 and resolution != tuned.resolution)):
            warned.append(True)
            warnings.warn(f"plan tuned for batch {tuned.batch}, resolution {tuned.resolution}; this call "
                          f"asks for batch {batch}, resolution {resolution}: it runs, but the measured "
                          f"speed-up and quality were not checked at these shapes", stacklevel=3)
        with lock:
            return call(*args, **kwargs)
    return add_call_hook(pipe, HOOK, guarded)


def refuse_if_accelerated(pipe) -> None:
    """One line when `pipe` already carries a plan or planner techniques: one state per pipeline."""
    active = pipe.__dict__.get(ACTIVE)
    if active is not None and not active.removed:
        raise PlannerError(f"pipeline already accelerated by {active.source} (plan for {active.plan.model.name}); "
                           "remove it first (handle.remove())")
    ours = [f"{where}: {name}" for where, name in attached(pipe) if name.startswith("planner.")]
    if ours:
        raise PlannerError(f"pipeline already has planner techniques attached ({ours[0]}, ...); "
                           "remove them first")


def model_for_plan(plan: Plan, model: str | None = None) -> str:
    """What to load for `plan`: `model` when given, else the plan's model name; checked before any weight
    is read (it exists, its pipeline class is the plan's). A plan naming a hub id does not make anything
    download: the user passes the id (or a local copy) explicitly."""
    from pathlib import Path

    from planner.models import builtin, pipeline_class_name, resolve_model

    name = model or plan.model.name
    kind = resolve_model(name)
    if kind == "hub" and model is None:
        raise PlannerError(f"the plan names the hub id {name}; it is loaded only when you ask for it: "
                           f"pass --model {name} (or a local folder)")
    found = pipeline_class_name(Path(name).expanduser()) if kind == "folder" else \
        (builtin(name).pipeline if kind == "builtin" else None)
    if found is not None and found != plan.model.pipeline:
        raise PlanMismatch(f"plan is for a {plan.model.pipeline} ({plan.model.name}) but {name} is a {found}")
    return name


def check_plan_fits(pipe, plan: Plan, strict: bool = False, allow_lora: bool = False) -> None:
    denoiser = denoiser_of(pipe)
    here_fp = fingerprint(denoiser)
    if here_fp != plan.model.fingerprint:
        adapters = lora_adapters(pipe)
        same_base = plan.model.structure is not None and structure(denoiser) == plan.model.structure
        if not (adapters and same_base):
            raise PlanMismatch(f"plan is for model {plan.model.name} ({plan.model.fingerprint}) but this pipeline's "
                               f"denoiser is {here_fp}; re-run `planner optimize` for this model")
        names = ", ".join(f"{a} ({scale:g})" for a, scale in sorted(adapters.items()))
        if not allow_lora:
            raise PlanMismatch(f"this pipeline has LoRA adapter(s) {names} and the plan was made for the base "
                               f"model {plan.model.name}: pass allow_lora=True (--allow-lora) to carry it over, "
                               "or run `planner optimize` on this pipeline")
        warnings.warn(f"plan made for the base model {plan.model.name}, carried over to LoRA {names}: its quality "
                      "and speed-up were not measured with them", stacklevel=3)
    here = components(pipe)
    changed = [n for n, fp in plan.model.components.items() if n in here and n != denoiser_name(pipe)
               and fingerprint(here[n]) != fp]
    if changed:
        message = f"component(s) {', '.join(changed)} differ from the ones the plan was verified with"
        if strict:
            raise PlanMismatch(message + " (strict=True)")
        warnings.warn(message + ": quality may differ", stacklevel=3)
    device = str(getattr(pipe, "device", "cpu"))
    diffs = differences(plan.environment.model_dump(), current_environment(device))
    if diffs:
        message = "plan tuned on another environment: " + "; ".join(diffs)
        if strict:
            raise PlanMismatch(message + " (strict=True)")
        warnings.warn(message + ": speed-up and quality may differ", stacklevel=3)


def denoiser_name(pipe) -> str:
    return anatomy_of(pipe).denoiser_name


def apply(pipe, plan: str | Plan, strict: bool = False, allow_lora: bool = False) -> PlanHandle:
    """Accelerate `pipe` in place with `plan` (a path or a Plan); returns a handle whose remove() undoes it.

    `strict`: refuse (rather than warn about) another device, library version or component.
    `allow_lora`: let a plan made for the base model carry over to this pipeline with LoRA adapters."""
    refuse_if_accelerated(pipe)
    source = "a Plan object" if isinstance(plan, Plan) else str(plan)
    if not isinstance(plan, Plan):
        plan = load_plan(plan)
    check_plan_fits(pipe, plan, strict=strict, allow_lora=allow_lora)
    techniques = apply_all(pipe, plan.technique_configs())
    lock = threading.RLock()
    try:
        undo_guard = _guard(pipe, plan, lock)
    except BaseException:
        techniques.remove()
        raise
    handle = PlanHandle(pipe, plan, techniques, undo_guard, source, lock)
    pipe.__dict__[ACTIVE] = handle
    return handle


__all__ = ["apply", "PlanHandle", "PlanMismatch", "check_plan_fits", "model_for_plan", "refuse_if_accelerated"]
