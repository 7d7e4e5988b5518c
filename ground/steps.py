"""Which denoising step is running, for any diffusers pipeline, without touching its code.

Every pipeline calls `scheduler.set_timesteps` at the start of a call and `scheduler.step` once per model
evaluation. A `StepTracker` is shared by everything that needs the step of one pipeline (caches index
their schedules by it, the profiler files its measurements under it). It attaches a call hook to the
pipeline; at the start of each call it hooks the two methods of whatever scheduler the pipeline holds
*then* (so a sampler swapped in or out in any order is followed), and unhooks them when the call ends.

Events: `on_reset` fires at `set_timesteps` (the start of a schedule: per-call state resets there, whatever
the batch size or step count); `on_step_end(step)` after each `scheduler.step`; `on_call_end` when the call
returns or raises (caches drop their tensors there, so a failed request leaves nothing behind).

`num_steps` counts the model evaluations the call will actually run: for img2img and inpainting that is
the schedule after `strength` cut it (`scheduler.begin_index`, or where the first step's timestep sits
in the schedule for schedulers without one), not `num_inference_steps`.
"""
from __future__ import annotations

from typing import Callable

from ground.hooks import add_call_hook, add_method_hook

TRACKER = "_planner_step_tracker"
HOOK = "planner.steps"


class StepTracker:
    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.step = 0            # index of the model evaluation in progress within the current call
        self.calls = 0           # pipeline calls seen
        self.users = 0
        self.scheduler = None    # the scheduler of the call in progress (None between calls)
        self._last_num_steps = 0
        self._offset = 0         # schedule entries the call skips (img2img strength), known at its first step
        self._on_reset: list[Callable[[], None]] = []
        self._on_step_end: list[Callable[[int], None]] = []
        self._on_call_end: list[Callable[[], None]] = []
        self._undo_call = add_call_hook(pipe, HOOK, self._around_call)

    @property
    def num_steps(self) -> int:
        """Model evaluations of the current (else the last) call's schedule, after any strength cut."""
        scheduler = self.scheduler
        if scheduler is None:
            return self._last_num_steps
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None:
            return self._last_num_steps
        begin = max(int(getattr(scheduler, "begin_index", None) or 0), self._offset)
        self._last_num_steps = max(len(timesteps) - begin, 0)
        return self._last_num_steps

    # events --------------------------------------------------------------------------------------------
    def on_reset(self, fn: Callable[[], None]) -> Callable[[], None]:
        return self._subscribe(self._on_reset, fn)

    def on_step_end(self, fn: Callable[[int], None]) -> Callable[[], None]:
        return self._subscribe(self._on_step_end, fn)

    def on_call_end(self, fn: Callable[[], None]) -> Callable[[], None]:
        return self._subscribe(self._on_call_end, fn)

    @staticmethod
    def _subscribe(listeners: list, fn) -> Callable[[], None]:
        listeners.append(fn)
        return lambda: listeners.remove(fn) if fn in listeners else None

    # hooks -----------------------------------------------------------------------------------------------
    def _around_call(self, call, *args, **kwargs):
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is None or self.scheduler is not None:   # no scheduler, or a nested call: just run
            return call(*args, **kwargs)
        self.scheduler, self.step, self._offset = scheduler, 0, 0
        undo = [add_method_hook(scheduler, "set_timesteps", HOOK, self._set_timesteps),
                add_method_hook(scheduler, "step", HOOK, self._step)]
        try:
            return call(*args, **kwargs)
        finally:
            for fn in reversed(undo):
                fn()
            self.num_steps  # noqa: B018 - remember this call's count for readers after it
            self.scheduler = None
            for fn in list(self._on_call_end):
                fn()

    def _set_timesteps(self, call, *args, **kwargs):
        result = call(*args, **kwargs)
        self.step, self.calls, self._offset = 0, self.calls + 1, 0
        for fn in list(self._on_reset):
            fn()
        return result

    def _step(self, call, *args, **kwargs):
        if self.step == 0:
            self._offset = self._start_index(args[1] if len(args) > 1 else kwargs.get("timestep"))
        result = call(*args, **kwargs)
        for fn in list(self._on_step_end):
            fn(self.step)
        self.step += 1
        return result

    def _start_index(self, timestep) -> int:
        """Where in the schedule the call's first step is (img2img starts part-way; a scheduler without
        `begin_index` does not say so otherwise)."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timestep is None or timesteps is None:
            return 0
        value = float(timestep.flatten()[0]) if hasattr(timestep, "flatten") else float(timestep)
        for i, t in enumerate(timesteps):
            if abs(float(t) - value) < 1e-6:
                return i
        return 0

    def close(self) -> None:
        self._undo_call()


def track_steps(pipe) -> StepTracker:
    """The pipeline's shared tracker (created on first use); pair every call with `release_steps`."""
    tracker = pipe.__dict__.get(TRACKER)
    if tracker is None:
        tracker = StepTracker(pipe)
        pipe.__dict__[TRACKER] = tracker
    tracker.users += 1
    return tracker


def release_steps(tracker: StepTracker) -> None:
    tracker.users -= 1
    if tracker.users <= 0:
        tracker.close()
        tracker.pipe.__dict__.pop(TRACKER, None)
