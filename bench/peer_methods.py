"""The peers of `bench/peers.py`: what a user would pick instead of a plan, each through its own package.

A `Peer` has a label, its parameters and `setup(pipe, env) -> undo`, which accelerates a freshly loaded
pipeline in place the way the package's documentation says to, or raises `Unavailable(reason)` when the
method cannot act on that model (the row is then listed with the reason, not dropped). `all_peers` are the
default recipes; `tunables` the same peers with the one knob a user tunes (its grid, safest value first,
and its default as the first probe); `stack_peer` the hand stack; `plan_peer` a plan applied with
`planner.apply`.

Two pieces of glue stand between a package and a pipeline that does not follow its conventions, and
neither changes what the method computes:

* DeepCache reads the step from `timestep.item()`: Stable Diffusion pipelines pass one scalar timestep,
  the demo pipelines one per row (all equal). The UNet gets the scalar, which UNet2DModel broadcasts to
  exactly the same values.
* diffusers' cache hooks keep their state per "cache context", which diffusers' own pipelines enter
  around every denoiser call (`with transformer.cache_context("cond")`) and reset at the end of a call.
  `_HookDriver` does the same for any pipeline, and gives the hooks that ask for one the current
  timestep (`current_timestep_callback`).

Longer than ~400 lines because each peer (DeepCache, tomesd, cache-dit, diffusers' hooks) needs its own
adapter to the demo pipelines, with the reason for each quirk stated beside it.
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import io
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


class Unavailable(Exception):
    """This peer cannot act on this model; the message says why."""


@dataclass
class Env:
    """What a setup may need besides the pipeline."""

    steps: int                                   # denoiser calls per pipeline call (the baseline's, or a stack's)
    calibrate: Callable[[object], object]        # generates a small batch with a pipeline (MagCache)
    memo: dict = field(default_factory=dict)     # calibrations already made (MagCache ratios per setting)
    setting: str = ""                            # what was applied before the cache (keys `memo`)


@dataclass(frozen=True)
class Peer:
    method: str
    family: str          # steps | cache | tokens | plan
    package: str
    params: dict = field(default_factory=dict)
    setup: Callable = None   # (pipe, env) -> undo


def version(dist: str) -> str:
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} (not installed)"


def _import(module: str, dist: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{dist} is not installed ({exc}); pip install -e '.[peers]'") from None


def _has_class(module, name: str) -> bool:
    return any(c.__name__ == name for c in type(module).__mro__)


def _unet(pipe, method: str):
    unet = getattr(pipe, "unet", None)
    if unet is None or not hasattr(unet, "up_blocks"):
        raise Unavailable(f"{method} acts on a UNet (pipe.unet); this pipeline's denoiser is a transformer")
    return unet


def _transformer(pipe, method: str):
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise Unavailable(f"{method} acts on a transformer's block list (pipe.transformer); this pipeline has a UNet")
    return transformer


# ------------------------------------------------------------------------------------- fewer steps

def _steps(name: str, steps: int, spacing: str | None = None) -> Callable:
    """`spacing` None: the model's own, as `Scheduler.from_config(pipe.scheduler.config)` keeps it (the
    default recipes); the tuned rows set "trailing", as a user tuning the step count would."""
    def setup(pipe, env):
        import backends
        from backends.sampler import SamplerConfig
        from backends.technique import NotApplicable

        own = dict(pipe.scheduler.config).get("timestep_spacing", "leading")
        own = own if own in ("leading", "trailing", "linspace") else "leading"
        try:
            return backends.apply(pipe, SamplerConfig(name=name, steps=steps, spacing=spacing or own)).remove
        except NotApplicable as exc:
            raise Unavailable(str(exc)) from None
    return setup


# ---------------------------------------------------------------------------------- DeepCache, tomesd

def _deepcache(interval: int, branch: int) -> Callable:
    def setup(pipe, env):
        unet = _unet(pipe, "DeepCache")
        helper_cls = _import("DeepCache", "DeepCache").DeepCacheSDHelper
        helper = helper_cls(pipe=pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        helper.enable()
        cached_forward = unet.forward

        def forward(sample, timestep, *args, **kwargs):
            if torch.is_tensor(timestep) and timestep.ndim == 1 and len(timestep) \
                    and bool((timestep == timestep[0]).all()):
                timestep = timestep[0]   # see the module doc: DeepCache needs one scalar timestep
            return cached_forward(sample, timestep, *args, **kwargs)
        unet.forward = forward

        def undo():
            helper.disable()                    # puts back the original bound forward as an instance attribute
            unet.__dict__.pop("forward", None)  # ... which we drop, so the class's forward is used again
        return undo
    return setup


def _tomesd(ratio: float) -> Callable:
    def setup(pipe, env):
        unet = getattr(pipe, "unet", None)
        if unet is None:
            raise Unavailable("tomesd patches Stable Diffusion UNets (pipe.unet); this pipeline has a transformer")
        if not any(_has_class(m, "BasicTransformerBlock") for m in unet.modules()):
            raise Unavailable("tomesd merges tokens inside diffusers' BasicTransformerBlock; this UNet2DModel has "
                              "none, so the patch changes nothing")
        tomesd = _import("tomesd", "tomesd")
        tomesd.apply_patch(pipe, ratio=ratio)
        return lambda: tomesd.remove_patch(pipe)
    return setup


# ------------------------------------------------------------------------------ diffusers' cache hooks

class _HookDriver:
    """Cache context around each denoiser call, state reset at each new pipeline call (see module doc)."""

    def __init__(self, pipe, transformer) -> None:
        from diffusers.hooks import HookRegistry

        from ground.steps import track_steps

        try:
            from diffusers.hooks.hooks import CacheContext, _set_cache_context  # what `cache_context` does
        except ImportError:  # older diffusers: hooks keep one state, no context needed
            CacheContext = _set_cache_context = None
        self._context_cls, self._set_context = CacheContext, _set_cache_context
        self.pipe, self.transformer, self.registry = pipe, transformer, HookRegistry
        self.timestep = 1000.0
        self.tracker = track_steps(pipe)
        self._undo = [self.tracker.on_reset(self._new_call),
                      transformer.register_forward_pre_hook(self._enter).remove,
                      transformer.register_forward_hook(self._leave).remove]

    def current_timestep(self) -> float:
        return self.timestep

    def _new_call(self) -> None:
        self.registry.check_if_exists_or_initialize(self.transformer).reset_stateful_hooks(recurse=True)

    def _enter(self, module, args) -> None:
        timesteps = self.pipe.scheduler.timesteps
        step = min(self.tracker.step, len(timesteps) - 1)
        self.timestep = float(timesteps[step])   # the scheduler's scale (0-1000), whatever the model is fed
        if self._set_context is not None:
            self._set_context(module, self._context_cls("cond", step_index=step, num_inference_steps=len(timesteps),
                                                        timestep=self.timestep))

    def _leave(self, module, args, output) -> None:
        if self._set_context is not None:
            self._set_context(module, None)

    def close(self) -> None:
        from ground.steps import release_steps

        for undo in reversed(self._undo):
            undo()
        release_steps(self.tracker)


def _remove_diffusers_hooks(transformer) -> None:
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            for name in list(registry.hooks):
                registry.remove_hook(name, recurse=False)


def _hooked(transformer) -> int:
    """How many of the transformer's modules (itself excluded) carry a diffusers hook."""
    return sum(bool(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks)
               for name, m in transformer.named_modules() if name)


def _apply_hook(transformer, hooks, config) -> None:
    apply = {"FirstBlockCacheConfig": "apply_first_block_cache", "FasterCacheConfig": "apply_faster_cache",
             "PyramidAttentionBroadcastConfig": "apply_pyramid_attention_broadcast",
             "TaylorSeerCacheConfig": "apply_taylorseer_cache", "MagCacheConfig": "apply_mag_cache"}
    getattr(hooks, apply[type(config).__name__])(transformer, config)
    # as `enable_cache` does: registries found before the hooks existed are stale
    registry = hooks.HookRegistry.check_if_exists_or_initialize(transformer)
    if hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()


def _mag_ratios(pipe, transformer, hooks, env) -> list[float]:
    """MagCache's documented calibration: one run with `calibrate=True`, which prints the ratios (once per
    setting: a threshold sweep reuses them, as a user would)."""
    key = ("magcache", env.steps, env.setting)
    if key not in env.memo:
        env.memo[key] = _calibrate_mag_ratios(pipe, transformer, hooks, env)
    return env.memo[key]


def _calibrate_mag_ratios(pipe, transformer, hooks, env) -> list[float]:
    _apply_hook(transformer, hooks, hooks.MagCacheConfig(calibrate=True, num_inference_steps=env.steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            env.calibrate(pipe)
    finally:
        _remove_diffusers_hooks(transformer)
    lines = [line.strip() for line in printed.getvalue().splitlines() if line.strip().startswith("[")]
    ratios = [ast.literal_eval(line) for line in lines if not line.startswith("[MagCache]")]
    if not ratios:
        raise RuntimeError("MagCache calibration printed no ratios")
    return [float(r) for r in ratios[-1]]


def _diffusers_cache(config_name: str, make: Callable) -> Callable:
    """`make(hooks, driver, env, pipe, transformer) -> config` builds the config from library defaults."""
    def setup(pipe, env):
        transformer = _transformer(pipe, f"diffusers {config_name}")
        hooks = importlib.import_module("diffusers.hooks")
        if not hasattr(hooks, config_name):
            raise Unavailable(f"{version('diffusers')} has no {config_name}")
        driver = _HookDriver(pipe, transformer)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _apply_hook(transformer, hooks, make(hooks, driver, env, pipe, transformer))
            if not _hooked(transformer):
                raise Unavailable(f"{config_name}'s block identifiers match no module of {type(transformer).__name__}: "
                                  f"nothing would be cached")
        except BaseException:
            _remove_diffusers_hooks(transformer)
            driver.close()
            raise

        def undo():
            _remove_diffusers_hooks(transformer)
            driver.close()
        return undo
    return setup


def _fbc(threshold):
    return lambda hooks, driver, env, pipe, tr: hooks.FirstBlockCacheConfig(threshold=threshold)


def _faster_cache(hooks, driver, env, pipe, tr):
    # CFG approximation off: FasterCache splits [uncond, cond] batches only in keyword inputs, and these
    # pipelines pass the latents positionally (and the demo ones put cond first). Attention reuse: defaults.
    return hooks.FasterCacheConfig(current_timestep_callback=driver.current_timestep, tensor_format="BCHW",
                                   is_guidance_distilled=True)


def _pab(hooks, driver, env, pipe, tr):
    # skip range 2: what diffusers falls back to when none is given
    return hooks.PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                 current_timestep_callback=driver.current_timestep)


def _taylorseer(identifiers=None):
    # The default identifiers are full-matched against module names: `^transformer_blocks.*attn` matches
    # FLUX's `attn` but not the `attn1`/`attn2` of diffusers' BasicTransformerBlock (DiT, PixArt).
    return lambda hooks, driver, env, pipe, tr: hooks.TaylorSeerCacheConfig(cache_identifiers=identifiers)


def _magcache(threshold: float = 0.06):
    def make(hooks, driver, env, pipe, tr):
        ratios = _mag_ratios(pipe, tr, hooks, env)
        return hooks.MagCacheConfig(threshold=threshold, mag_ratios=ratios, num_inference_steps=env.steps)
    return make


# ----------------------------------------------------------------------------------------- cache-dit

def _cache_dit(**config) -> Callable:
    def setup(pipe, env):
        transformer = _transformer(pipe, "cache-dit")
        blocks = sum(len(getattr(transformer, name, None) or ())
                     for name in ("transformer_blocks", "single_transformer_blocks"))
        fixed = config.get("Fn_compute_blocks", 8) + config.get("Bn_compute_blocks", 0)   # DBCacheConfig's defaults
        if fixed >= blocks:
            raise Unavailable(f"DBCache computes its first Fn and last Bn blocks ({fixed}) at every step; "
                              f"{type(transformer).__name__} has {blocks}: nothing is left to cache")
        os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")   # read once, at import: one line per call otherwise
        cache_dit = _import("cache_dit", "cache-dit")
        # cache-dit wraps the pipeline *class*'s __call__: a class of its own keeps the baseline pipeline
        # (same class, same process) out of it
        pipe.__class__ = type(type(pipe).__name__, (type(pipe),), {})
        if cache_dit.BlockAdapterRegister.is_supported(pipe):
            target = pipe
        else:
            from diffusers import DiTTransformer2DModel

            if not isinstance(transformer, DiTTransformer2DModel):
                raise Unavailable(f"cache-dit has no adapter for {type(pipe).__name__}")
            from cache_dit.caching.patch_functors import DiTPatchFunctor

            # the adapter cache-dit registers for diffusers' DiTPipeline, on this pipeline's DiT
            target = cache_dit.BlockAdapter(pipe=pipe, transformer=transformer, blocks=transformer.transformer_blocks,
                                            forward_pattern=cache_dit.ForwardPattern.Pattern_3,
                                            patch_functor=DiTPatchFunctor(), check_forward_pattern=True)
        cache_dit.enable_cache(target, cache_config=cache_dit.DBCacheConfig(**config))
        return lambda: cache_dit.disable_cache(target)
    return setup


# ------------------------------------------------------------------------------------- the plan

def _plan(path: Path) -> Callable:
    def setup(pipe, env):
        import planner
        from planner.runtime import PlanMismatch

        if not path.exists():
            raise Unavailable(f"no shipped plan for this model ({path.name} not found)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # another library version or batch: measured as is
                handle = planner.apply(pipe, path)
        except PlanMismatch as exc:
            raise Unavailable(f"{path.name} does not fit these weights ({exc})") from None
        return handle.remove
    return setup


def _plan_label(path: Path) -> tuple[str, dict]:
    if not path.exists():
        return "planner plan", {"plan": str(path.name)}
    from planner.plan import load_plan

    plan = load_plan(path)
    configs = plan.technique_configs()
    from bench.common import short_label

    return ("planner plan: " + short_label([c.to_dict() for c in configs]),
            {"plan": path.name, "budget": plan.budget, "plan_speedup": round(plan.measured.speedup, 2),
             "plan_work_ratio": plan.measured.work_ratio, "techniques": [c.label() for c in configs],
             "compiled": any(c.to_dict().get("type") == "compile" for c in configs)})


ATTN_IDS = r"^(single_)?transformer_blocks\.\d+\.attn\d?"   # every block attention, whatever its suffix


def plan_peer(path: Path) -> Peer:
    method, params = _plan_label(path)
    return Peer(method, "plan", "planner", params, _plan(path))


def all_peers(model: str) -> list[Peer]:
    """The default recipes, the same list for every model: those that cannot act on it are listed with the reason."""
    diffusers = version("diffusers")
    return [
        Peer("DPM-Solver++ 2M, 20 steps", "steps", diffusers, {"sampler": "dpmpp_2m", "steps": 20},
             _steps("dpmpp_2m", 20)),
        Peer("DDIM, 25 steps", "steps", diffusers, {"sampler": "ddim", "steps": 25}, _steps("ddim", 25)),
        Peer("DeepCache interval 3", "cache", version("DeepCache"), {"cache_interval": 3, "cache_branch_id": 0},
             _deepcache(3, 0)),
        Peer("DeepCache interval 5", "cache", version("DeepCache"), {"cache_interval": 5, "cache_branch_id": 0},
             _deepcache(5, 0)),
        Peer("tomesd ratio 0.5", "tokens", version("tomesd"), {"ratio": 0.5}, _tomesd(0.5)),
        Peer("First Block Cache 0.08", "cache", diffusers, {"threshold": 0.08},
             _diffusers_cache("FirstBlockCacheConfig", _fbc(0.08))),
        Peer("First Block Cache 0.12", "cache", diffusers, {"threshold": 0.12},
             _diffusers_cache("FirstBlockCacheConfig", _fbc(0.12))),
        Peer("FasterCache", "cache", diffusers, {"defaults": True, "is_guidance_distilled": True},
             _diffusers_cache("FasterCacheConfig", _faster_cache)),
        Peer("Pyramid Attention Broadcast", "cache", diffusers, {"spatial_attention_block_skip_range": 2},
             _diffusers_cache("PyramidAttentionBroadcastConfig", _pab)),
        Peer("TaylorSeer (diffusers)", "cache", diffusers, {"defaults": True},
             _diffusers_cache("TaylorSeerCacheConfig", _taylorseer())),
        Peer("TaylorSeer (diffusers), attn1/attn2 matched", "cache", diffusers, {"cache_identifiers": [ATTN_IDS]},
             _diffusers_cache("TaylorSeerCacheConfig", _taylorseer([ATTN_IDS]))),
        Peer("MagCache", "cache", diffusers, {"threshold": 0.06, "mag_ratios": "calibrated (1 run)"},
             _diffusers_cache("MagCacheConfig", _magcache())),
        Peer("cache-dit DBCache (default F8B0)", "cache", version("cache-dit"), {"defaults": True}, _cache_dit()),
        Peer("cache-dit DBCache F1B0", "cache", version("cache-dit"), {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0},
             _cache_dit(Fn_compute_blocks=1, Bn_compute_blocks=0)),
    ]


# ------------------------------------------------------------------------------------- tuned peers

def _teacache(threshold: float) -> Callable:
    """TeaCache has no package that acts on diffusers pipelines (its scripts patch one model class each; the
    PyPI packages are MLX ports): the planner's own TeaCache stands in, without a profile, i.e. with its
    identity polynomial: uncalibrated for this model, as a user running a TeaCache script with the
    coefficients it ships for another model is. No cap on consecutive skips (the scripts have none)."""
    def setup(pipe, env):
        import backends
        from backends.caching.teacache import TeaCacheConfig
        from backends.technique import NotApplicable

        _transformer(pipe, "TeaCache")
        try:
            return backends.apply(pipe, TeaCacheConfig(threshold=threshold, max_skips=100, coefficients=None)).remove
        except NotApplicable as exc:
            raise Unavailable(str(exc)) from None
    return setup


def geometric_grid(start: float, low: float, high: float, per_decade: int = 6) -> tuple[float, ...]:
    """start * f^k for every integer k that stays in [low, high], f = 10^(1/per_decade): the grid holds the
    package's default exactly, and one notch is a factor f (1.47 at 6 per decade)."""
    f = 10 ** (1 / per_decade)
    k_low = math.ceil(math.log(low / start) / math.log(f) - 1e-9)
    k_high = math.floor(math.log(high / start) / math.log(f) + 1e-9)
    return tuple(float(f"{start * f ** k:.3g}") for k in range(k_low, k_high + 1))


@dataclass(frozen=True)
class Tunable:
    """A peer with the one knob a user would tune. `grid` runs from the safest value (best quality) to the
    most aggressive; quality is assumed to fall monotonically along it (the sweep bisects)."""

    name: str
    family: str                   # steps | cache | tokens
    knob: str
    grid: tuple
    start: float                  # the default recipe's value: where a user starts, the sweep's first probe
    package: str
    make: Callable = None         # value -> setup(pipe, env)
    fixed: dict = field(default_factory=dict)   # parameters the sweep leaves at the package's defaults
    scale: str = "log"            # bisection midpoints: geometric (log) or arithmetic (linear) in the value
    note: str = ""
    compile_docs: str = ""        # where the package's docs recommend torch.compile with it (the hand stack adds it)

    def index(self, value) -> int:
        return min(range(len(self.grid)), key=lambda i: abs(self.grid[i] - value))

    def describe(self, value) -> str:
        if self.knob == "steps":
            return f"{value} steps"
        return f"{self.knob.replace('_', ' ')} {value:g}"

    def peer(self, value, kind: str = "tuned") -> Peer:
        return Peer(f"{self.name}, {kind}: {self.describe(value)}", self.family, self.package,
                    dict(self.fixed, **{self.knob: value}), self.make(value))


def tunables(baseline_steps: int) -> list[Tunable]:
    """Every peer with its knob, the same list for every model (those that cannot act on it say why)."""
    diffusers = version("diffusers")
    steps = tuple(range(baseline_steps, 1, -1))   # safest first: the baseline's count down to 2

    def sampler(name, label, start):
        return Tunable(label, "steps", "steps", steps, min(start, baseline_steps), diffusers,
                       lambda k, name=name: _steps(name, int(k), "trailing"), {"sampler": name, "spacing": "trailing"},
                       note="the pipeline's scheduler config, trailing spacing (backends.sampler.SamplerConfig)")

    cache_dit = dict(Fn_compute_blocks=1, Bn_compute_blocks=0)
    return [
        sampler("dpmpp_2m", "DPM-Solver++ 2M", 20),
        sampler("unipc", "UniPC", 20),
        sampler("ddim", "DDIM", 25),
        sampler("euler", "Euler", 20),
        Tunable("DeepCache", "cache", "cache_interval", tuple(range(2, 11)), 3, version("DeepCache"),
                lambda k: _deepcache(int(k), 0), {"cache_branch_id": 0}, scale="linear"),
        Tunable("First Block Cache", "cache", "threshold", geometric_grid(0.08, 0.01, 1.0), 0.08, diffusers,
                lambda t: _diffusers_cache("FirstBlockCacheConfig", _fbc(t)),
                compile_docs="ParaAttention's First Block Cache docs pair it with torch.compile"),
        Tunable("TeaCache", "cache", "rel_l1_thresh", geometric_grid(0.25, 0.05, 2.0), 0.25, "planner (stand-in)",
                _teacache, {"coefficients": "none (identity)", "max_skips": 100},
                note="no TeaCache package acts on diffusers pipelines: the planner's TeaCache without a profile"),
        Tunable("MagCache", "cache", "threshold", geometric_grid(0.06, 0.01, 1.0), 0.06, diffusers,
                lambda t: _diffusers_cache("MagCacheConfig", _magcache(t)), {"mag_ratios": "calibrated (1 run)"}),
        Tunable("cache-dit DBCache F1B0", "cache", "residual_diff_threshold", geometric_grid(0.08, 0.01, 1.0), 0.08,
                version("cache-dit"), lambda t: _cache_dit(**cache_dit, residual_diff_threshold=t), cache_dit,
                compile_docs="cache-dit's docs pair DBCache with torch.compile"),
        Tunable("tomesd", "tokens", "ratio", tuple(round(0.1 * i, 1) for i in range(1, 10)), 0.5, version("tomesd"),
                _tomesd, scale="linear"),
    ]


def stack_peer(sampler: str | None, steps: int, cache: Tunable | None, value, bf16: bool, compile_: bool) -> Peer:
    """The hand stack: the tuned sampler and step count (`sampler` None: no step count verified, so the
    baseline's own scheduler and steps), the best cache peer at `value`, bf16, and regional torch.compile,
    applied in the planner's order (sampler, precision, cache, compile) to one pipeline. The cache's setup
    sees the stack's steps (MagCache is calibrated at them)."""
    head = f"{sampler} {steps} steps" if sampler else f"baseline scheduler, {steps} steps"
    parts = [head] + ([f"{cache.name} {cache.describe(value)}"] if cache else []) \
        + (["bf16"] if bf16 else []) + (["torch.compile (regional)"] if compile_ else [])
    params = {"sampler": sampler or "baseline's own", "steps": steps, "spacing": "trailing" if sampler else "own",
              "bf16": bf16, "compile": compile_}
    if cache is not None:
        params.update({"cache": cache.name, cache.knob: value})

    def setup(pipe, env):
        import dataclasses

        import backends
        from backends.quantization import QuantizeConfig
        from backends.sampler import SamplerConfig, pin_call_arguments

        if sampler:
            undo = [backends.apply(pipe, SamplerConfig(name=sampler, steps=steps, spacing="trailing")).remove]
        else:
            undo = [pin_call_arguments(pipe, {"num_inference_steps": steps}, "bench.stack.steps")]
        try:
            if bf16:
                undo.append(backends.apply(pipe, QuantizeConfig(mode="bf16")).remove)
            if cache is not None:
                setting = f"{sampler or 'own'} {steps}" + (" bf16" if bf16 else "")
                undo.append(cache.make(value)(pipe, dataclasses.replace(env, steps=steps, setting=setting)))
            if compile_:
                from backends.compile import CompileConfig

                handle = backends.apply(pipe, CompileConfig(backend="torch_regional"))
                env.memo.setdefault("compile_handles", []).append(handle)
                undo.append(handle.remove)
        except BaseException:
            _undo_all(undo)
            raise
        return lambda: _undo_all(undo)
    package = "planner backends (sampler, bf16, compile) + " + (cache.package if cache else "no cache")
    return Peer(" + ".join(parts), "stack", package, params, setup)


def _undo_all(undo: list) -> None:
    """Best effort, last applied first: a package's undo may already have taken another's hooks with it
    (diffusers' cache removal clears the whole hook registry); the pipeline is discarded anyway."""
    for fn in reversed(undo):
        try:
            fn()
        except Exception:  # noqa: BLE001
            pass
