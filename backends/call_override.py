"""Make a pipeline's own `__call__` use the plan's arguments (steps, timesteps), whatever the caller passes.

The pipeline's class is swapped for a one-off subclass whose `__call__` rewrites the arguments, so
every diffusers pipeline is covered without touching its code; `undo()` puts the original class back.
Overrides nest: remove them in reverse order (the composite handle does).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable


def override_call(pipe, overrides: dict[str, Any]) -> Callable[[], None]:
    cls = type(pipe)
    base_call = cls.__call__
    signature = inspect.signature(base_call)
    unknown = [k for k in overrides if k not in signature.parameters]
    if unknown:
        raise TypeError(f"{cls.__name__}.__call__ has no parameter {unknown[0]!r}")

    @functools.wraps(base_call)
    def __call__(self, *args, **kwargs):
        bound = signature.bind_partial(self, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        extra = arguments.pop("kwargs", {}) if "kwargs" in signature.parameters else {}
        arguments.update(extra)
        arguments.update(overrides)
        return base_call(self, **arguments)

    subclass = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
    object.__setattr__(pipe, "__class__", subclass)

    def undo() -> None:
        if type(pipe) is subclass:
            object.__setattr__(pipe, "__class__", cls)
    return undo


def call_parameters(pipe) -> set[str]:
    return set(inspect.signature(type(pipe).__call__).parameters)
