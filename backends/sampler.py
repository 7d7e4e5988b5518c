"""Sampler and step count: swap the scheduler, choose the timestep spacing, pin the number of steps.

While applied, the pipeline runs the plan's sampler and steps whatever `num_inference_steps` the caller
passes: the plan was tuned, and its cache schedules indexed, for exactly those steps.
"""
from __future__ import annotations

import inspect
from typing import Literal

from pydantic import Field, field_validator, model_validator

from backends.technique import STAGE_SAMPLER, ConfigError, Handle, NotApplicable, TechniqueConfig, register
from ground.anatomy import anatomy_of
from ground.hooks import add_call_hook, replace_attribute

HOOK = "planner.sampler"

SAMPLERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "euler", "flow_euler")
KEEP = "keep"   # the pipeline's own scheduler, steps pinned (for models whose schedule must not change)
FLOW_SAMPLERS = ("flow_euler",)


class SamplerConfig(TechniqueConfig):
    type = "sampler"
    version = 1
    stage = STAGE_SAMPLER

    name: Literal["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "euler", "flow_euler", "keep"] = "dpmpp_2m"
    steps: int = Field(20, ge=1, le=1000)
    spacing: Literal["leading", "trailing", "linspace"] = "trailing"
    karras: bool = False
    timesteps: list[int] | None = Field(None, min_length=1, max_length=1000)

    @field_validator("timesteps")
    @classmethod
    def _decreasing(cls, value):
        if value is not None and any(b >= a for a, b in zip(value, value[1:])):
            raise ValueError("must be strictly decreasing")
        if value is not None and min(value) < 0:
            raise ValueError("must be non-negative")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.timesteps is not None and len(self.timesteps) != self.steps:
            raise ValueError(f"steps ({self.steps}) must equal len(timesteps) ({len(self.timesteps)})")
        if self.karras and self.name in ("ddim", "flow_euler", KEEP):
            raise ValueError(f"karras sigmas are not supported by {self.name}")
        if self.name == KEEP and self.timesteps is not None:
            raise ValueError("keep pins the pipeline's own scheduler to `steps`; it takes no timesteps")
        return self


def is_flow_matching(pipe) -> bool:
    return "FlowMatch" in type(pipe.scheduler).__name__


def available_samplers(pipe) -> tuple[str, ...]:
    return FLOW_SAMPLERS if is_flow_matching(pipe) else tuple(s for s in SAMPLERS if s not in FLOW_SAMPLERS)


def build_scheduler(pipe, config: SamplerConfig):
    import diffusers

    if config.name == KEEP:
        return pipe.scheduler
    base = dict(pipe.scheduler.config)
    if config.name == "flow_euler":
        if not is_flow_matching(pipe):
            raise NotApplicable("sampler flow_euler needs a flow-matching model")
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(base)
    if is_flow_matching(pipe):
        raise NotApplicable(f"sampler {config.name} needs a noise-prediction model; "
                            f"{type(pipe).__name__} is flow-matching (use flow_euler)")
    kwargs: dict = {"timestep_spacing": config.spacing}
    if config.name == "ddim":
        cls = diffusers.DDIMScheduler
        kwargs["set_alpha_to_one"] = config.spacing != "trailing"
    elif config.name in ("dpmpp_2m", "dpmpp_3m"):
        cls = diffusers.DPMSolverMultistepScheduler
        kwargs.update(algorithm_type="dpmsolver++", solver_order=2 if config.name == "dpmpp_2m" else 3,
                      use_karras_sigmas=config.karras)
    elif config.name == "unipc":
        cls = diffusers.UniPCMultistepScheduler
        kwargs.update(use_karras_sigmas=config.karras)
    else:
        cls = diffusers.EulerDiscreteScheduler
        kwargs.update(use_karras_sigmas=config.karras)
    return cls.from_config(base, **kwargs)


def _drop_foreign_step_kwargs(scheduler) -> None:
    """DDIMPipeline passes DDIM-only keywords (`eta`, `use_clipped_model_output`) to `scheduler.step`;
    another sampler's `step` rejects them. Drop what this scheduler does not take (it is a fresh
    object owned by the handle, so patching the instance needs no undo)."""
    params = inspect.signature(scheduler.step).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    original = scheduler.step

    def step(*args, **kwargs):
        return original(*args, **{k: v for k, v in kwargs.items() if k in params})
    scheduler.step = step


def _has_scheduler(pipe) -> str | None:
    return None if getattr(pipe, "scheduler", None) is not None else "pipeline has no scheduler"


def pin_call_arguments(pipe, overrides: dict, name: str):
    """A call hook making the pipeline use `overrides` (steps, timesteps) whatever the caller passes."""
    signature = inspect.signature(type(pipe).__call__)
    unknown = [k for k in overrides if k not in signature.parameters]
    if unknown:
        raise NotApplicable(f"{type(pipe).__name__}.__call__ has no parameter {unknown[0]!r}")

    def pinned(call, *args, **kwargs):
        arguments = dict(signature.bind_partial(None, *args, **kwargs).arguments)
        arguments.pop(next(iter(signature.parameters)), None)   # `self`
        arguments.update(arguments.pop("kwargs", {}) if "kwargs" in signature.parameters else {})
        arguments.update(overrides)
        return call(**arguments)
    return add_call_hook(pipe, name, pinned)


@register(SamplerConfig, applicable=_has_scheduler)
def apply_sampler(pipe, config: SamplerConfig) -> Handle:
    scheduler = build_scheduler(pipe, config)
    params = anatomy_of(pipe).call_parameters
    if "num_inference_steps" not in params:
        raise NotApplicable(f"{type(pipe).__name__}.__call__ takes no num_inference_steps")
    overrides: dict = {"num_inference_steps": config.steps}
    if config.timesteps is not None:
        if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ConfigError(f"params.timesteps: sampler {config.name} does not accept a custom timestep list")
        if "timesteps" not in params:
            raise NotApplicable(f"{type(pipe).__name__}.__call__ takes no custom timesteps")
        if max(config.timesteps) >= scheduler.config.num_train_timesteps:
            raise ConfigError(f"params.timesteps: must be below {scheduler.config.num_train_timesteps}")
        overrides = {"num_inference_steps": None, "timesteps": list(config.timesteps)}
    undo_call = pin_call_arguments(pipe, overrides, HOOK)
    if config.name == KEEP:
        return Handle(config, undo_call, info={"scheduler": type(scheduler).__name__})
    _drop_foreign_step_kwargs(scheduler)
    undo_scheduler = replace_attribute(pipe, "scheduler", scheduler, HOOK)

    def undo() -> None:
        undo_call()
        undo_scheduler()
    return Handle(config, undo, info={"scheduler": type(scheduler).__name__})
