"""The peers of `bench/peers.py`: what a user would pick instead of a plan, each through its own package.

A `Peer` has a label, its parameters and `setup(pipe, env) -> undo`, which accelerates a freshly loaded
pipeline in place the way the package's documentation says to, or raises `Unavailable(reason)` when the
method cannot act on that model (the row is then listed with the reason, not dropped).

Two pieces of glue stand between a package and a pipeline that does not follow its conventions, and
neither changes what the method computes:

* DeepCache reads the step from `timestep.item()`: Stable Diffusion pipelines pass one scalar timestep,
  the demo pipelines one per row (all equal). The UNet gets the scalar, which UNet2DModel broadcasts to
  exactly the same values.
* diffusers' cache hooks keep their state per "cache context", which diffusers' own pipelines enter
  around every denoiser call (`with transformer.cache_context("cond")`) and reset at the end of a call.
  `_HookDriver` does the same for any pipeline, and gives the hooks that ask for one the current
  timestep (`current_timestep_callback`).
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import io
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

    steps: int                                   # denoiser calls per pipeline call at the baseline
    calibrate: Callable[[object], object]        # generates a small batch with a pipeline (MagCache)


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

def _steps(name: str, steps: int) -> Callable:
    def setup(pipe, env):
        import backends
        from backends.sampler import SamplerConfig
        from backends.technique import NotApplicable

        # `Scheduler.from_config(pipe.scheduler.config)` keeps the model's own timestep spacing: so do we.
        spacing = dict(pipe.scheduler.config).get("timestep_spacing", "leading")
        spacing = spacing if spacing in ("leading", "trailing", "linspace") else "leading"
        try:
            return backends.apply(pipe, SamplerConfig(name=name, steps=steps, spacing=spacing)).remove
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
    """MagCache's documented calibration: one run with `calibrate=True`, which prints the ratios."""
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


def _magcache(hooks, driver, env, pipe, tr):
    ratios = _mag_ratios(pipe, tr, hooks, env)
    return hooks.MagCacheConfig(mag_ratios=ratios, num_inference_steps=env.steps)


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
             "techniques": [c.label() for c in configs]})


ATTN_IDS = r"^(single_)?transformer_blocks\.\d+\.attn\d?"   # every block attention, whatever its suffix


def all_peers(model: str, plans_dir: Path) -> list[Peer]:
    """The same list for every model: those that cannot act on it are listed with the reason."""
    diffusers = version("diffusers")
    plan_path = plans_dir / f"{model}.yaml"
    plan_method, plan_params = _plan_label(plan_path)
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
             _diffusers_cache("MagCacheConfig", _magcache)),
        Peer("cache-dit DBCache (default F8B0)", "cache", version("cache-dit"), {"defaults": True}, _cache_dit()),
        Peer("cache-dit DBCache F1B0", "cache", version("cache-dit"), {"Fn_compute_blocks": 1, "Bn_compute_blocks": 0},
             _cache_dit(Fn_compute_blocks=1, Bn_compute_blocks=0)),
        Peer(plan_method, "plan", "planner", plan_params, _plan(plan_path)),
    ]
