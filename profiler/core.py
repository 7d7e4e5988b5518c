"""profile_pipeline: run a pipeline on a few (condition, seed) pairs with hooks on every block, and
assemble the profile document; cached_profile: the same, reusing a stored profile with a matching key.

The sampler to profile at is an argument: any object with `steps`, `to_dict()` and `apply(pipe)`
returning a handle with `remove()` (a `backends.sampler.SamplerConfig` is one), applied for the run and
removed after. The profiler itself imports nothing of the planner but its ground layer.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

from ground.anatomy import anatomy_of
from ground.cache import cache_dir
from ground.errors import PlannerError
from ground.generation import default_request, generate
from ground.hooks import Observer, add_forward_hook, attached
from ground.identity import fingerprint
from profiler.blocks import discover_blocks
from profiler.document import ProfileRun, assemble
from profiler.profile import Profile, key_hash
from profiler.recorder import Recorder

DEFAULT_STEPS = 20
DEFAULT_SAMPLES = 4
DEFAULT_BATCH = 2


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def default_resolution(pipe, extra: dict | None = None) -> list[int] | None:
    """[height, width] of the generated images, known before generating (None when undiscoverable)."""
    extra = extra or {}
    if extra.get("height") and extra.get("width"):
        return [int(extra["height"]), int(extra["width"])]
    denoiser = anatomy_of(pipe).denoiser
    cfg = getattr(denoiser, "config", {})
    size = getattr(pipe, "default_sample_size", None) or cfg.get("sample_size")
    if size is None:
        return None
    if isinstance(size, (list, tuple)):
        h, w = size[0], size[-1]
    else:
        h = w = int(size)
    scale = getattr(pipe, "vae_scale_factor", None) if getattr(pipe, "vae", None) is not None else 1
    scale = scale or 1
    return [int(h * scale), int(w * scale)]


def _sampler_key(pipe, sampler) -> dict:
    if sampler is not None:
        return {k: v for k, v in sampler.to_dict()["params"].items() if k != "steps"}
    return {"name": "pipeline:" + type(pipe.scheduler).__name__}


def profile_key(pipe, sampler=None, steps: int | None = None, batch: int = DEFAULT_BATCH,
                guidance_scale: float | None = None, model: str | None = None, extra: dict | None = None) -> dict:
    """What a profile is valid for: the cache looks profiles up by exactly this."""
    denoiser = anatomy_of(pipe).denoiser
    param = next(iter(denoiser.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = str(param.dtype).replace("torch.", "") if param is not None else "unknown"
    steps = _resolve_steps(sampler, steps)
    return {
        "model": model,
        "fingerprint": fingerprint(denoiser),
        "device": _device_label(device),
        "dtype": dtype,
        "resolution": default_resolution(pipe, extra),
        "batch": int(batch),
        "sampler": _sampler_key(pipe, sampler),
        "steps": int(steps),
        "guidance_scale": guidance_scale,
    }


def _resolve_steps(sampler, steps):
    if sampler is not None:
        if steps is not None and steps != sampler.steps:
            raise PlannerError(f"steps ({steps}) disagrees with the sampler's steps ({sampler.steps})")
        return sampler.steps
    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 1:
        raise PlannerError("steps: must be at least 1")
    return steps


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda.max_memory_allocated over one unhooked pipeline call"
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * 1024, "cpu: resource.getrusage ru_maxrss of the whole process (high-water mark, upper bound)"


@torch.no_grad()
def _flops_and_memory(denoiser, recorder: Recorder, specs, device) -> tuple[dict, int | None, dict, int | None]:
    """Replay the first denoiser call under FlopCounterMode (per-module FLOPs); on CUDA replay it once
    more with peak-memory hooks on the level-0 entries."""
    from torch.utils.flop_counter import FlopCounterMode

    if recorder.denoiser_args is None:
        return {}, None, {}, None
    args, kwargs = recorder.denoiser_args
    root = type(denoiser).__name__
    counter = FlopCounterMode(display=False)
    with counter:
        denoiser(*args, **kwargs)
    counts = counter.get_flop_counts()
    flops = {}
    for i, spec in enumerate(specs):
        per_op = counts.get(f"{root}.{spec.name}")
        flops[i] = int(sum(per_op.values())) if per_op else 0
    total = int(sum(counts.get(root, counts.get("Global", {})).values()))
    peaks: dict = {}
    denoiser_peak = None
    if device.type == "cuda":
        handles = []
        base = {}

        def pre(i):
            def hook(args, kwargs):
                torch.cuda.synchronize(device)
                base[i] = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            return hook

        def post(i):
            def hook(output):
                torch.cuda.synchronize(device)
                peaks[i] = int(torch.cuda.max_memory_allocated(device) - base[i])
            return hook

        for i, spec in enumerate(specs):
            if spec.level == 0:
                handles.append(add_forward_hook(spec.module, "planner.profiler.memory",
                                                Observer(pre=pre(i), post=post(i))))
        try:
            start = torch.cuda.memory_allocated(device)
            denoiser(*args, **kwargs)
        finally:
            for undo in reversed(handles):
                undo()
        torch.cuda.reset_peak_memory_stats(device)
        denoiser(*args, **kwargs)
        denoiser_peak = int(torch.cuda.max_memory_allocated(device) - start)
    return flops, total, peaks, denoiser_peak


def profile_pipeline(pipe, request=None, sampler=None, steps: int | None = None, *, batch: int | None = None,
                     samples: int = DEFAULT_SAMPLES, seed: int = 0, guidance_scale: float | None = None,
                     warmup: bool = True, analyse: bool = True, keep_images: bool = False,
                     token_threshold: float = 0.9, max_tokens: int = 1024, model: str | None = None,
                     **extra) -> Profile:
    """Profile `pipe` generating `request` (default: `samples` pairs from `seed`) in batches of `batch`.

    `sampler` (see the module doc) is applied for the run and removed after; without it the pipeline's
    own scheduler runs `steps` steps. Outputs are those of an unprofiled run, bit for bit.
    """
    steps = _resolve_steps(sampler, steps)
    request = request if request is not None else default_request(pipe, samples, seed)
    if len(request) < 1:
        raise PlannerError("request: needs at least one (condition, seed) pair")
    batch = min(batch or min(DEFAULT_BATCH, len(request)), len(request))
    if batch < 1:
        raise PlannerError("batch: must be at least 1")
    denoiser = anatomy_of(pipe).denoiser
    key = profile_key(pipe, sampler, steps, batch, guidance_scale, model, extra)
    param = next(iter(denoiser.parameters()))
    device = param.device
    gen_kwargs = dict(extra)
    if guidance_scale is not None:
        gen_kwargs["guidance_scale"] = guidance_scale
    chunks = [request.rows(i, i + batch) for i in range(0, len(request), batch)]

    handle = sampler.apply(pipe) if sampler is not None else None
    try:
        warmup_ms = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        if warmup:
            t0 = time.perf_counter()
            generate(pipe, chunks[0], steps=steps, batch_size=batch, **gen_kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            warmup_ms = (time.perf_counter() - t0) * 1000
        peak_bytes, peak_method = _peak_memory(device)

        specs = discover_blocks(pipe)
        recorder = Recorder(pipe, denoiser, specs, use_cuda_events=device.type == "cuda", analyse=analyse,
                            token_threshold=token_threshold, max_tokens=max_tokens)
        hooks_before = attached(pipe)
        images, call_ms = [], []
        recorder.attach()
        try:
            for chunk in chunks:
                recorder.expected_rows = len(chunk)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                overhead0 = recorder.overhead + recorder.analysis_seconds
                t0 = time.perf_counter()
                out = generate(pipe, chunk, steps=steps, batch_size=batch, **gen_kwargs)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                wall = time.perf_counter() - t0
                spent = recorder.overhead + recorder.analysis_seconds - overhead0
                call_ms.append(((wall - spent) * 1000, wall * 1000))
                if keep_images:
                    images.append(out)
        finally:
            recorder.detach()
        if attached(pipe) != hooks_before:
            raise RuntimeError("profiler hooks were not all removed")
        flops, total_flops, peaks, denoiser_peak = _flops_and_memory(denoiser, recorder, specs, device)
    finally:
        if handle is not None:
            handle.remove()

    profile = Profile(assemble(ProfileRun(
        pipe=pipe, denoiser=denoiser, key=key, specs=specs, recorder=recorder, request=request, chunks=chunks,
        steps=steps, call_ms=call_ms, warmup_ms=warmup_ms, peak_bytes=peak_bytes, peak_method=peak_method,
        flops=flops, total_flops=total_flops, peaks=peaks, denoiser_peak=denoiser_peak,
        token_threshold=token_threshold, max_tokens=max_tokens, analyse=analyse)))
    if keep_images:
        profile.images = torch.cat(images)
    return profile


# ---- cache ----------------------------------------------------------------------------------------------
def profiles_dir(root=None) -> Path:
    """`<root>/profiles`, by default under the cache root (ground.cache)."""
    return Path(root) / "profiles" if root is not None else cache_dir("profiles")


def cached_profile(pipe, request=None, sampler=None, steps: int | None = None, *, batch: int | None = None,
                   samples: int = DEFAULT_SAMPLES, guidance_scale: float | None = None, cache_dir=None,
                   refresh: bool = False, model: str | None = None, **kwargs) -> Profile:
    """A stored profile with the same key (and at least as many samples), else a fresh one, stored.

    Files live at <cache_dir, else the cache root>/profiles/<key hash>.json.
    """
    n = len(request) if request is not None else samples
    batch = min(batch or min(DEFAULT_BATCH, n), n)
    key = profile_key(pipe, sampler, steps, batch, guidance_scale, model, kwargs)
    lookup = {k: v for k, v in key.items() if k != "model"}
    path = profiles_dir(cache_dir) / f"{key_hash(key)}.json"
    if path.exists() and not refresh:
        try:
            stored = Profile.load(path)
            same = {k: v for k, v in stored.key.items() if k != "model"} == lookup
            if same and stored.data["settings"]["samples"] >= n:
                return stored
        except PlannerError:
            pass  # unreadable or older version: profile again and overwrite
    profile = profile_pipeline(pipe, request, sampler, steps, batch=batch, samples=samples,
                               guidance_scale=guidance_scale, model=model, **kwargs)
    profile.save(path)
    return profile
