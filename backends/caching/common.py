"""What every cache shares: call interception outside compiled regions, per-call state, residual reuse.

Interception. Every cache attaches named call hooks (`ground.hooks.add_call_hook`, named
"planner.<technique>") to the denoiser and the modules it may skip. A call hook runs around
`nn.Module.__call__`, which is where an in-place `module.compile()` (regional compilation, as diffusers'
`compile_repeated_blocks` does) puts the compiled code: every decision (step index, thresholds, rel-L1
tests) runs in plain Python outside any compiled region, whichever order compilation and caching are
applied in. A skipped module never enters its `__call__`, so its forward hooks do not fire (tests count
block evaluations that way). Removing the hooks leaves parameters, buffers, `state_dict` keys and the
module's class exactly as they were, in any order of removal.

State. A `CacheRuntime` holds the pipeline's shared `StepTracker`; all cached tensors are dropped on
`scheduler.set_timesteps` (the start of every schedule, whatever its batch size or step count) and when a
pipeline call ends, normally or by an exception (nothing leaks into the next request). Within a step the
denoiser may be called several times (unbatched CFG); each call of a step gets its own cache `slot`, so
the second call of a step never reuses the first call's features.

Residuals. A block whose outputs have the shapes of its inputs (a transformer block, a same-channel UNet
resnet or attention) is skipped by adding a cached residual (output - input) to its current input. Blocks
returning `(encoder_hidden_states, hidden_states)` (SD3, Flux) are handled element by element.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ground.anatomy import anatomy_of
from ground.errors import PlannerError
from ground.hooks import Observer, add_call_hook, add_forward_hook
from ground.steps import release_steps, track_steps

Interceptor = Callable[..., Any]   # fn(call, *args, **kwargs) where call(*args, **kwargs) runs the module


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean|a - b| / mean|b| (the rel-L1 of TeaCache and first-block caches)."""
    denom = b.abs().mean()
    return float((a - b).abs().mean() / denom.clamp_min(1e-12))


# --------------------------------------------------------------------------------------------- blocks
# One enumeration of blocks for everything: the pipeline's anatomy (ground.anatomy).

def is_unet(pipe) -> bool:
    return anatomy_of(pipe).is_unet


def transformer_blocks(pipe) -> list[tuple[str, torch.nn.Module]]:
    """The chain of transformer blocks in execution order (double-stream before single-stream)."""
    return [(b.name, b.module) for b in anatomy_of(pipe).transformer_blocks()]


def residual_blocks(pipe) -> list[tuple[str, torch.nn.Module]]:
    return anatomy_of(pipe).residual_blocks()


# ------------------------------------------------------------------------------------------ residuals

def _block_inputs(args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    found = {}
    hidden = kwargs.get("hidden_states", kwargs.get("input_tensor"))
    if hidden is None and args and torch.is_tensor(args[0]):
        hidden = args[0]
    if torch.is_tensor(hidden):
        found["h"] = hidden
    encoder = kwargs.get("encoder_hidden_states")
    if torch.is_tensor(encoder):
        found["e"] = encoder
    return found


class ResidualCodec:
    """How a block's output maps onto its inputs; learned from one computed call.

    spec: ("tensor", key) or ("tuple", [key | None per element]); key is "h" (hidden_states) or "e"
    (encoder_hidden_states). None when the block cannot be expressed as input + residual.
    """

    def __init__(self) -> None:
        self.spec = None
        self.learned = False

    def learn(self, inputs: dict, out) -> None:
        if self.learned:
            return
        self.learned = True

        def match(t, prefer):
            if t is None:
                return "none"
            if not torch.is_tensor(t):
                return None
            keys = [k for k, v in inputs.items() if v.shape == t.shape and v.dtype == t.dtype]
            if len(keys) == 1:
                return keys[0]
            if len(keys) > 1:
                return prefer
            return None

        if torch.is_tensor(out):
            key = match(out, "h")
            self.spec = ("tensor", key) if key not in (None, "none") else None
        elif isinstance(out, tuple) and out:
            # diffusers' joint blocks return (encoder_hidden_states, hidden_states)
            prefer = ["e", "h"] if len(out) == 2 else ["h"] * len(out)
            keys = [match(t, prefer[i]) for i, t in enumerate(out)]
            self.spec = ("tuple", keys) if None not in keys and "h" in keys else None
        else:
            self.spec = None

    def residual(self, inputs: dict, out):
        if self.spec is None:
            return None
        if self.spec[0] == "tensor":
            return (out - inputs[self.spec[1]],)
        return tuple(None if k == "none" else t - inputs[k] for k, t in zip(self.spec[1], out))

    def fits(self, inputs: dict, residual) -> bool:
        if self.spec is None or residual is None:
            return False
        keys = (self.spec[1],) if self.spec[0] == "tensor" else self.spec[1]
        for k, r in zip(keys, residual):
            if k == "none":
                continue
            if k not in inputs or inputs[k].shape != r.shape:
                return False
        return True

    def rebuild(self, inputs: dict, residual):
        if self.spec[0] == "tensor":
            return inputs[self.spec[1]] + residual[0]
        return tuple(None if k == "none" else inputs[k] + r for k, r in zip(self.spec[1], residual))


# ------------------------------------------------------------------------------------------- runtime

class CacheRuntime:
    """Per-application state of one cache technique: tracker, interceptions, slots, counters."""

    hook_name = "planner.cache"   # subclasses: "planner.<technique type>"

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.anatomy = anatomy_of(pipe)
        self.denoiser = self.anatomy.denoiser
        self.tracker = track_steps(pipe)
        self._undo: list[Callable[[], None]] = []
        self._undo.append(self.tracker.on_reset(self._reset))
        self._undo.append(self.tracker.on_call_end(self._reset))
        self.slot = 0
        self._last_step = -1
        self.stats = {"computed": 0, "reused": 0}
        self.intercept(self.denoiser, self._denoiser_call)

    # subclasses -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every cached tensor."""

    def on_denoiser_call(self, args: tuple, kwargs: dict) -> None:
        """Per denoiser call, before it runs: make this call's decision."""

    # machinery --------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.tracker.step

    def intercept(self, module, fn: Interceptor) -> None:
        self._undo.append(add_call_hook(module, self.hook_name, fn))

    def _reset(self) -> None:
        self.slot, self._last_step = 0, -1
        self.reset()

    def _denoiser_call(self, call, *args, **kwargs):
        step = self.tracker.step
        if step != self._last_step:
            self.slot, self._last_step = 0, step
        else:
            self.slot += 1
        self.on_denoiser_call(args, kwargs)
        return self.run_denoiser(call, args, kwargs)

    def run_denoiser(self, call, args: tuple, kwargs: dict):
        """Run (or replace) one denoiser call; the default runs it."""
        return call(*args, **kwargs)

    def remove(self) -> None:
        self._reset()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        release_steps(self.tracker)


def slot_dict(store: dict, slot: int) -> dict:
    return store.setdefault(slot, {})


def needs_denoiser(pipe) -> str | None:
    try:
        anatomy_of(pipe).denoiser
    except PlannerError as exc:
        return str(exc)
    if getattr(pipe, "scheduler", None) is None:
        return "pipeline has no scheduler (the step index comes from it)"
    return None


def needs_transformer_blocks(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    if not transformer_blocks(pipe):
        return (f"{type(anatomy_of(pipe).denoiser).__name__} has no chain of transformer blocks "
                "(this cache skips transformer blocks; for UNets use deepcache or block_schedule)")
    return None


# ------------------------------------------------------------------------------------ block reuse

class BlockReuseRuntime(CacheRuntime):
    """Skip chosen residual blocks by adding a cached residual to their current input.

    Subclasses decide with `want_reuse(k)` (called before block k would run) and may replace the cached
    residual (`reused_residual`, e.g. a Taylor extrapolation) or react to a computed block
    (`after_compute`). A block is only skipped when a residual of the right shapes is cached for this
    call slot; otherwise it runs, so a first call, a new batch size or a new resolution is always safe.
    """

    keep = 1   # residuals kept per block (TaylorSeer keeps 2)

    def __init__(self, pipe, blocks: list[tuple[str, torch.nn.Module]]) -> None:
        super().__init__(pipe)
        self.names = [name for name, _ in blocks]
        self.codecs = [ResidualCodec() for _ in blocks]
        self.history: dict[int, dict[int, list]] = {}   # slot -> block -> [(step, residual), ...]
        self.block_stats = {"computed": 0, "reused": 0}
        for k, (_, module) in enumerate(blocks):
            self.intercept(module, self._make(k))

    def reset(self) -> None:
        self.history.clear()

    def want_reuse(self, k: int) -> bool:
        return False

    def reused_residual(self, k: int, entries: list):
        return entries[-1][1]

    def after_compute(self, k: int, inputs: dict, residual) -> None:
        pass

    def _make(self, k: int):
        def block_call(call, *args, **kwargs):
            inputs = _block_inputs(args, kwargs)
            codec = self.codecs[k]
            entries = self.history.get(self.slot, {}).get(k)
            if entries and codec.spec is not None and self.want_reuse(k):
                residual = self.reused_residual(k, entries)
                if codec.fits(inputs, residual):
                    self.block_stats["reused"] += 1
                    return codec.rebuild(inputs, residual)
            out = call(*args, **kwargs)
            self.block_stats["computed"] += 1
            codec.learn(inputs, out)
            residual = codec.residual(inputs, out)
            if residual is not None:
                kept = self.history.setdefault(self.slot, {}).setdefault(k, [])
                kept.append((self.step, residual))
                del kept[:-self.keep]
            self.after_compute(k, inputs, residual)
            return out
        return block_call


# ------------------------------------------------------------------------------------------ counting

class FirstBlockDecidesRuntime(BlockReuseRuntime):
    """The first block always runs; after it, `decide(state)` says whether the rest of the stack is
    reused this step (first-block cache, TeaCache). Holds the per-slot state, the consecutive-skip
    count and the statistics those caches share."""

    def __init__(self, pipe, blocks) -> None:
        super().__init__(pipe, blocks)
        self.state: dict[int, dict] = {}
        self.skip_rest = False

    def reset(self) -> None:
        super().reset()
        self.state.clear()
        self.skip_rest = False

    def on_denoiser_call(self, args, kwargs) -> None:
        self.skip_rest = False

    def want_reuse(self, k: int) -> bool:
        return k > 0 and self.skip_rest

    def record(self, state: dict, skip: bool) -> None:
        """Book-keeping after the decision; a full step restarts the consecutive-skip count."""
        if skip:
            state["skips"] += 1
            self.stats["reused"] += 1
        else:
            state["skips"] = 0
            self.stats["computed"] += 1
        self.skip_rest = skip


class WorkCounter:
    """Counts evaluations of a denoiser's work units with named forward hooks ("planner.work_counter",
    observers: a skipped unit never runs its forward, so it is not counted), and the sample rows they
    process, so a half-batch CFG-reuse call counts half. Use as a context manager."""

    def __init__(self, pipe) -> None:
        anatomy = anatomy_of(pipe)
        self.denoiser = anatomy.denoiser
        self.calls = 0
        self.rows = 0
        self.denoiser_rows = 0
        self._handles = [add_forward_hook(module, "planner.work_counter", Observer(pre=self._unit))
                         for _, module in anatomy.work_units()]
        self._handles.append(add_forward_hook(self.denoiser, "planner.work_counter", Observer(pre=self._top)))

    @staticmethod
    def _batch(args, kwargs) -> int:
        for value in list(args) + list(kwargs.values()):
            if torch.is_tensor(value) and value.ndim > 0:
                return int(value.shape[0])
        return 1

    def _unit(self, args, kwargs) -> None:
        self.calls += 1
        self.rows += self._batch(args, kwargs)

    def _top(self, args, kwargs) -> None:
        self.denoiser_rows += self._batch(args, kwargs)

    def close(self) -> None:
        for undo in reversed(self._handles):
            undo()
        self._handles.clear()

    def __enter__(self) -> "WorkCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
