"""Which denoising step is running, for any diffusers pipeline, without touching its code.

Every pipeline calls `scheduler.set_timesteps` once at the start of a call and `scheduler.step` once per
model evaluation. A tracker wraps those two methods on the scheduler instance: state-holding
techniques reset on `set_timesteps` (so nothing stale survives between calls, whatever the batch size or
step count) and index their schedules by `tracker.step`. The profiler uses the same tracker: it only
observes, so outputs stay bit-identical.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

_MISSING = object()


def patch_attr(obj: Any, name: str, value: Any) -> Callable[[], None]:
    """Set `obj.name = value` on the instance; the returned undo restores exactly what was there."""
    previous = obj.__dict__.get(name, _MISSING)
    setattr(obj, name, value)

    def undo() -> None:
        if previous is _MISSING:
            obj.__dict__.pop(name, None)
        else:
            setattr(obj, name, previous)
    return undo


class StepTracker:
    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.step = 0            # index of the model evaluation in progress within the current call
        self.num_steps = 0       # evaluations planned for the current call (len(scheduler.timesteps))
        self.calls = 0           # pipeline calls seen
        self.users = 0
        self._on_reset: list[Callable[[], None]] = []
        self._on_step_end: list[Callable[[int], None]] = []
        original_set, original_step = scheduler.set_timesteps, scheduler.step

        # functools.wraps keeps the signature visible: pipelines (Flux, SD3) inspect
        # `set_timesteps` for `sigmas`/`timesteps` support before calling it
        @functools.wraps(original_set)
        # functools.wraps keeps the signatures visible: pipelines inspect them (generator, timesteps).
        @functools.wraps(original_set)
        def set_timesteps(*args, **kwargs):
            result = original_set(*args, **kwargs)
            self.step, self.calls = 0, self.calls + 1
            self.num_steps = len(scheduler.timesteps)
            for fn in list(self._on_reset):
                fn()
            return result

        @functools.wraps(original_step)
        @functools.wraps(original_step)
        def step(*args, **kwargs):
            result = original_step(*args, **kwargs)
            for fn in list(self._on_step_end):
                fn(self.step)
            self.step += 1
            return result

        self._undo = [patch_attr(scheduler, "set_timesteps", set_timesteps), patch_attr(scheduler, "step", step)]

    def on_reset(self, fn: Callable[[], None]) -> Callable[[], None]:
        self._on_reset.append(fn)
        return lambda: self._on_reset.remove(fn) if fn in self._on_reset else None

    def on_step_end(self, fn: Callable[[int], None]) -> Callable[[], None]:
        self._on_step_end.append(fn)
        return lambda: self._on_step_end.remove(fn) if fn in self._on_step_end else None

    def close(self) -> None:
        for undo in reversed(self._undo):
            undo()


def track_steps(pipe) -> StepTracker:
    """The pipeline's shared tracker (created on first use); pair every call with `release_steps`."""
    scheduler = pipe.scheduler
    tracker = scheduler.__dict__.get("_planner_step_tracker")
    if tracker is None:
        tracker = StepTracker(scheduler)
        scheduler.__dict__["_planner_step_tracker"] = tracker
    tracker.users += 1
    return tracker


def release_steps(tracker: StepTracker) -> None:
    tracker.users -= 1
    if tracker.users <= 0:
        tracker.close()
        tracker.scheduler.__dict__.pop("_planner_step_tracker", None)
