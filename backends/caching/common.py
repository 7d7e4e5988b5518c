"""What every cache shares: call interception outside compiled regions, per-call state, residual reuse.

Interception. A module is intercepted by swapping its class for a one-off subclass whose `__call__` runs
the cache's decision and then (when it computes) `super().__call__`, i.e. `nn.Module`'s own call path,
which is where an in-place `module.compile()` (regional compilation, as diffusers' `compile_repeated_blocks`
does) puts the compiled code. So every decision (step index, thresholds, rel-L1 tests) runs in plain
Python outside any compiled region, whichever order compilation and caching are applied in; a skipped
module never enters its `__call__`, so its forward hooks do not fire (tests count block evaluations that
way). `undo()` puts the original class back: parameters, buffers, `state_dict` keys and hooks never change.

State. A `CacheRuntime` holds the pipeline's shared `StepTracker`; all cached tensors are dropped on
`scheduler.set_timesteps` (the start of every pipeline call, whatever its batch size or step count). Within
a step the denoiser may be called several times (unbatched CFG); each call of a step gets its own cache
`slot`, so the second call of a step never reuses the first call's features.

Residuals. A block whose outputs have the shapes of its inputs (a transformer block, a same-channel UNet
resnet or attention) is skipped by adding a cached residual (output - input) to its current input. Blocks
returning `(encoder_hidden_states, hidden_states)` (SD3, Flux) are handled element by element.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from backends.steps import release_steps, track_steps
from planner.errors import PlannerError
from planner.models import denoiser_of

Interceptor = Callable[..., Any]   # fn(call, *args, **kwargs) where call(*args, **kwargs) runs the module


def intercept(module: torch.nn.Module, fn: Interceptor) -> Callable[[], None]:
    """Route calls of `module` through `fn(call, *args, **kwargs)`; the returned undo restores the class."""
    base = type(module)

    def __call__(self, *args, **kwargs):
        return fn(lambda *a, **k: base.__call__(self, *a, **k), *args, **kwargs)

    subclass = type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__,
                                              "__qualname__": base.__qualname__, "_planner_intercepted": True})
    object.__setattr__(module, "__class__", subclass)

    def undo() -> None:
        if type(module) is subclass:
            object.__setattr__(module, "__class__", base)
        else:  # removed out of order: a later interception still wraps ours; keep the chain working
            raise PlannerError(f"cache interception of {base.__name__} removed out of order; "
                               "remove handles in reverse order of application")
    return undo


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean|a - b| / mean|b| (the rel-L1 of TeaCache and first-block caches)."""
    denom = b.abs().mean()
    return float((a - b).abs().mean() / denom.clamp_min(1e-12))


# --------------------------------------------------------------------------------------------- blocks

def is_unet(denoiser: torch.nn.Module) -> bool:
    return hasattr(denoiser, "down_blocks") and hasattr(denoiser, "up_blocks")


def transformer_blocks(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The chain of transformer blocks in execution order (double-stream before single-stream)."""
    blocks = []
    for list_name in ("transformer_blocks", "single_transformer_blocks"):
        modules = getattr(denoiser, list_name, None)
        if isinstance(modules, torch.nn.ModuleList):
            blocks += [(f"{list_name}.{i}", m) for i, m in enumerate(modules)]
    return blocks


def _same_shape_resnet(module: torch.nn.Module) -> bool:
    return (type(module).__name__ == "ResnetBlock2D" and getattr(module, "conv_shortcut", None) is None
            and not getattr(module, "up", False) and not getattr(module, "down", False)
            and getattr(module, "in_channels", None) == getattr(module, "out_channels", None))


def residual_blocks(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Blocks whose output has the shape of their input, by qualified name.

    Transformers: their transformer blocks. UNets: every attention sub-block (self-attention with a
    residual connection, or a Transformer2DModel) and every resnet that keeps channels and resolution.
    """
    blocks = transformer_blocks(denoiser)
    if blocks:
        return blocks
    if not is_unet(denoiser):
        return []
    out = []
    for name, module in denoiser.named_modules():
        parts = name.split(".")
        if len(parts) < 2 or parts[0] not in ("down_blocks", "mid_block", "up_blocks"):
            continue
        if parts[-2] == "attentions" and parts[-1].isdigit():
            out.append((name, module))
        elif parts[-2] == "resnets" and parts[-1].isdigit() and _same_shape_resnet(module):
            out.append((name, module))
    return out


def unet_residual_is_sound(module: torch.nn.Module) -> bool:
    # UNet2DModel's attention blocks may be built without a residual connection; then skip them
    return getattr(module, "residual_connection", True) is not False


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

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.denoiser = denoiser_of(pipe)
        self.tracker = track_steps(pipe)
        self._undo: list[Callable[[], None]] = []
        self._undo.append(self.tracker.on_reset(self._reset))
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
        self._undo.append(intercept(module, fn))

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
        denoiser_of(pipe)
    except PlannerError as exc:
        return str(exc)
    if getattr(pipe, "scheduler", None) is None:
        return "pipeline has no scheduler (the step index comes from it)"
    return None


def needs_transformer_blocks(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    if not transformer_blocks(denoiser_of(pipe)):
        return (f"{type(denoiser_of(pipe)).__name__} has no transformer_blocks chain "
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


def work_units(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The units whose evaluations measure a denoiser's work: transformer blocks, or a UNet's resnets,
    attentions and resamplers (so skipping a whole UNet block and skipping one sub-block both count)."""
    blocks = transformer_blocks(denoiser)
    if blocks:
        return blocks
    units = []
    for name, module in denoiser.named_modules():
        parts = name.split(".")
        if (len(parts) >= 3 and parts[0] in ("down_blocks", "mid_block", "up_blocks")
                and parts[-2] in ("resnets", "attentions", "downsamplers", "upsamplers") and parts[-1].isdigit()):
            units.append((name, module))
    return units


class WorkCounter:
    """Counts evaluations of a denoiser's work units with forward pre-hooks (and the sample rows they
    process, so a half-batch CFG-reuse call counts half). Use as a context manager."""

    def __init__(self, pipe) -> None:
        self.denoiser = denoiser_of(pipe)
        self.calls = 0
        self.rows = 0
        self.denoiser_rows = 0
        self._handles = []
        for _, module in work_units(self.denoiser):
            self._handles.append(module.register_forward_pre_hook(self._unit, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_pre_hook(self._top, with_kwargs=True))

    @staticmethod
    def _batch(args, kwargs) -> int:
        for value in list(args) + list(kwargs.values()):
            if torch.is_tensor(value) and value.ndim > 0:
                return int(value.shape[0])
        return 1

    def _unit(self, module, args, kwargs) -> None:
        self.calls += 1
        self.rows += self._batch(args, kwargs)

    def _top(self, module, args, kwargs) -> None:
        self.denoiser_rows += self._batch(args, kwargs)

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "WorkCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
