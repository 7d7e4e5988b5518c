"""Change what a pipeline's own `__call__` does, without touching its code.

The pipeline's class is swapped for a one-off subclass whose `__call__` wraps the original, so every
diffusers pipeline is covered; `undo()` puts the original class back. Wrappers nest: remove them in
reverse order (the composite handle does).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable


def wrap_call(pipe, make_call: Callable[[Callable], Callable]) -> Callable[[], None]:
    """`make_call(base_call)` returns the new `__call__(self, *args, **kwargs)`; returns the undo."""
    cls = type(pipe)
    base_call = cls.__call__
    new_call = functools.wraps(base_call)(make_call(base_call))  # keeps the signature others inspect
    subclass = type(cls.__name__, (cls,), {"__call__": new_call, "__module__": cls.__module__})
    object.__setattr__(pipe, "__class__", subclass)

    def undo() -> None:
        if type(pipe) is subclass:
            object.__setattr__(pipe, "__class__", cls)
    return undo


def override_call(pipe, overrides: dict[str, Any]) -> Callable[[], None]:
    """Make the pipeline use `overrides` (steps, timesteps) whatever the caller passes."""
    signature = inspect.signature(type(pipe).__call__)
    unknown = [k for k in overrides if k not in signature.parameters]
    if unknown:
        raise TypeError(f"{type(pipe).__name__}.__call__ has no parameter {unknown[0]!r}")

    def make_call(base_call):
        def __call__(self, *args, **kwargs):
            arguments = dict(signature.bind_partial(self, *args, **kwargs).arguments)
            arguments.pop("self", None)
            arguments.update(arguments.pop("kwargs", {}) if "kwargs" in signature.parameters else {})
            arguments.update(overrides)
            return base_call(self, **arguments)
        return __call__
    return wrap_call(pipe, make_call)


def call_parameters(pipe) -> set[str]:
    return set(inspect.signature(type(pipe).__call__).parameters)
