"""profile_pipeline: run a pipeline on a few (condition, seed) pairs with hooks on every block, and
assemble the profile document; cached_profile: the same, reusing a stored profile with a matching key."""
from __future__ import annotations

import datetime as _dt
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

from planner.errors import PlannerError
from profiler.blocks import discover_blocks, primary_output
from profiler.profile import SCHEMA_NAME, SCHEMA_VERSION, Profile, fit_polynomial, key_hash
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
    from planner.models import denoiser_of

    denoiser = denoiser_of(pipe)
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
        return {k: v for k, v in sampler.model_dump(mode="json").items() if k != "steps"}
    return {"name": "pipeline:" + type(pipe.scheduler).__name__}


def profile_key(pipe, sampler=None, steps: int | None = None, batch: int = DEFAULT_BATCH,
                guidance_scale: float | None = None, model: str | None = None, extra: dict | None = None) -> dict:
    """What a profile is valid for: the cache looks profiles up by exactly this."""
    from planner.models import denoiser_of, fingerprint

    denoiser = denoiser_of(pipe)
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
            def hook(m, a):
                torch.cuda.synchronize(device)
                base[i] = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            return hook

        def post(i):
            def hook(m, a, o):
                torch.cuda.synchronize(device)
                peaks[i] = int(torch.cuda.max_memory_allocated(device) - base[i])
            return hook

        for i, spec in enumerate(specs):
            if spec.level == 0:
                handles.append(spec.module.register_forward_pre_hook(pre(i)))
                handles.append(spec.module.register_forward_hook(post(i)))
        try:
            start = torch.cuda.memory_allocated(device)
            denoiser(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
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

    `sampler` (a backends.sampler.SamplerConfig) is applied for the run and removed after; without it
    the pipeline's own scheduler runs `steps` steps. Outputs are those of an unprofiled run, bit for bit.
    """
    from planner.generation import Request, default_request, generate
    from planner.models import denoiser_of

    steps = _resolve_steps(sampler, steps)
    request = request if request is not None else default_request(pipe, samples, seed)
    if len(request) < 1:
        raise PlannerError("request: needs at least one (condition, seed) pair")
    batch = min(batch or min(DEFAULT_BATCH, len(request)), len(request))
    if batch < 1:
        raise PlannerError("batch: must be at least 1")
    denoiser = denoiser_of(pipe)
    key = profile_key(pipe, sampler, steps, batch, guidance_scale, model, extra)
    param = next(iter(denoiser.parameters()))
    device = param.device
    gen_kwargs = dict(extra)
    if guidance_scale is not None:
        gen_kwargs["guidance_scale"] = guidance_scale
    chunks = [Request(request.conditions[i:i + batch], request.seeds[i:i + batch])
              for i in range(0, len(request), batch)]

    handle = None
    if sampler is not None:
        import backends

        handle = backends.apply(pipe, sampler)
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

        specs = discover_blocks(denoiser)
        recorder = Recorder(pipe, denoiser, specs, use_cuda_events=device.type == "cuda", analyse=analyse,
                            token_threshold=token_threshold, max_tokens=max_tokens)
        hooks_before = {id(m): (len(m._forward_hooks), len(m._forward_pre_hooks)) for m in denoiser.modules()}
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
        hooks_after = {id(m): (len(m._forward_hooks), len(m._forward_pre_hooks)) for m in denoiser.modules()}
        if hooks_after != hooks_before:
            raise RuntimeError("profiler hooks were not all removed")
        flops, total_flops, peaks, denoiser_peak = _flops_and_memory(denoiser, recorder, specs, device)
    finally:
        if handle is not None:
            handle.remove()

    profile = Profile(_assemble(pipe, denoiser, key, specs, recorder, request, chunks, steps, call_ms,
                                warmup_ms, peak_bytes, peak_method, flops, total_flops, peaks, denoiser_peak,
                                token_threshold, max_tokens, analyse))
    if keep_images:
        profile.images = torch.cat(images)
    return profile


def _assemble(pipe, denoiser, key, specs, rec: Recorder, request, chunks, steps, call_ms, warmup_ms,
              peak_bytes, peak_method, flops, total_flops, peaks, denoiser_peak, token_threshold, max_tokens,
              analyse) -> dict:
    import diffusers

    import planner

    calls = len(chunks)
    num_steps = max([s for (_, s) in rec.denoiser_time] + [steps - 1]) + 1
    ran = sorted(rec.first_seen, key=lambda i: rec.first_seen[i])
    # keep discovery's grouping (parents before their subs) but order by first execution
    order = [i for i in ran if specs[i].level == 0]
    ordered: list[int] = []
    for i in order:
        ordered.append(i)
        ordered.extend(j for j in ran if specs[j].parent == specs[i].name)

    def per_call_mean(values_by_call_step: dict, i=None) -> list:
        row = []
        for s in range(num_steps):
            vals = [values_by_call_step.get((i, c, s) if i is not None else (c, s)) for c in range(calls)]
            vals = [v for v in vals if v is not None]
            row.append(float(np.mean(vals)) * 1000 if vals else None)
        return row

    def stat_matrix(metric: str) -> list:
        rows = []
        for i in ordered:
            row = []
            for s in range(num_steps):
                vals = [rec.stats[(c, s)].get(metric, {}).get(i) for c in range(calls) if (c, s) in rec.stats]
                vals = [v for v in vals if v is not None and np.isfinite(v)]
                row.append(float(np.mean(vals)) if vals else None)
            rows.append(row)
        return rows

    def step_stat(metric: str) -> list:
        out = []
        for s in range(num_steps):
            vals = [rec.stats[(c, s)].get(metric) for c in range(calls) if (c, s) in rec.stats]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            out.append(float(np.mean(vals)) if vals else None)
        return out

    blocks = []
    for i in ordered:
        spec = specs[i]
        in_shape, out_shape = rec.shapes.get(i, (None, None))
        blocks.append({
            "name": spec.name, "kind": type(spec.module).__name__, "level": spec.level, "role": spec.role,
            "parent": spec.parent, "attention": spec.attention,
            "input_shape": list(in_shape) if in_shape else None,
            "output_shape": list(out_shape) if out_shape else None,
            "shapes_match": bool(in_shape is not None and in_shape == out_shape),
            "param_bytes": int(sum(p.numel() * p.element_size() for p in spec.module.parameters())),
            "flops": flops.get(i),
            "activation_bytes": rec.activation_bytes.get(i),
            "peak_mem_bytes": peaks.get(i),
        })

    # first block whose output has its input's shape: FBCache-style indicator
    # (execution order: a UNet's first block downsamples, so its first resnet is taken)
    first = next((k for k, b in enumerate(blocks) if b["role"] in ("block", "sub") and b["shapes_match"]), None)

    def points(x_metric: str, block: int | None = None):
        xs, ys = [], []
        for (c, s), st in rec.stats.items():
            y = st.get("denoiser_rel_l1_rows")
            x = st.get(x_metric) if block is None else st.get(x_metric, {}).get(block)
            if x is None or y is None or len(x) != len(y):
                continue
            xs.extend(np.asarray(x).tolist())
            ys.extend(np.asarray(y).tolist())
        return xs, ys

    xs, ys = points("indicator_rel_l1_rows")
    indicators = {"primary": "modulated_input",
                  "modulated_input": {"source": rec.indicator_source,
                                      "rel_l1": step_stat("indicator_rel_l1"),
                                      "points": {"x": xs, "y": ys}, "fit": fit_polynomial(xs, ys)}}
    if first is not None:
        fi = ordered[first]
        xs2, ys2 = points("residual_rel_l1_rows", fi)
        indicators["first_block_residual"] = {
            "source": f"{blocks[first]['name']} residual (output - input)",
            "rel_l1": [row for row in stat_matrix("residual_rel_l1")[first]],
            "points": {"x": xs2, "y": ys2}, "fit": fit_polynomial(xs2, ys2)}

    cfg_detected = bool(rec.cfg_calls) and all(rec.cfg_calls)
    denoiser_ms = per_call_mean(rec.denoiser_time)
    step_ms = per_call_mean(rec.step_time)
    latency = [per_call_mean(rec.latency, i) for i in ordered]
    latency = [[0.0 if v is None else v for v in row] for row in latency]
    device_type = next(iter(denoiser.parameters())).device.type
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "key": key,
        "key_hash": key_hash(key),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "planner": planner.__version__, "threads": torch.get_num_threads(),
                        "pipeline": type(pipe).__name__, "denoiser": type(denoiser).__name__},
        "settings": {"samples": len(request), "batch": key["batch"], "calls": calls,
                     "conditions": [c if isinstance(c, (int, str)) or c is None else str(c)
                                    for c in request.conditions],
                     "seeds": list(request.seeds), "warmup": warmup_ms is not None, "analysed": analyse},
        "timesteps": rec.timesteps,
        "timing": {
            "method": "cuda_events" if device_type == "cuda" else "perf_counter",
            "note": "ms; mean over pipeline calls; hook bookkeeping subtracted from every region",
            "pipeline_ms": float(np.mean([c[0] for c in call_ms])),
            "pipeline_ms_with_profiler": float(np.mean([c[1] for c in call_ms])),
            "warmup_ms": warmup_ms,
            "denoiser_ms": denoiser_ms,
            "step_ms": step_ms,
            "hook_overhead_ms": rec.overhead * 1000 / calls,
            "analysis_ms": rec.analysis_seconds * 1000 / calls,
        },
        "flops": {"method": "torch.utils.flop_counter.FlopCounterMode on a replay of the first denoiser "
                            "call (matmul/conv/attention FLOPs; elementwise ops count 0)",
                  "denoiser_call": total_flops},
        "memory": {"method": peak_method, "peak_bytes": peak_bytes, "denoiser_peak_bytes": denoiser_peak,
                   "param_bytes": int(sum(p.numel() * p.element_size() for p in denoiser.parameters())),
                   "block_activation_bytes": "bytes of every tensor a block returns (one call)",
                   "block_peak_mem_bytes": "cuda only: max_memory_allocated increase inside each level-0 entry"},
        "blocks": blocks,
        "latency_ms": latency,
        "redundancy": {m: stat_matrix(m) for m in ("output_rel_l1", "output_cos", "residual_rel_l1", "residual_cos")},
        "tokens": {"threshold": token_threshold, "max_tokens": max_tokens,
                   "token_frac": stat_matrix("token_frac"), "token_mean_max": stat_matrix("token_mean_max")},
        "per_step": {
            "denoiser_rel_l1": step_stat("denoiser_rel_l1"),
            "denoiser_cos": step_stat("denoiser_cos"),
            "indicator_rel_l1": step_stat("indicator_rel_l1"),
            "first_block_residual_rel_l1": indicators.get("first_block_residual", {}).get("rel_l1", [None] * num_steps),
            "cfg_rel_l1": step_stat("cfg_rel_l1") if cfg_detected else [None] * num_steps,
            "cfg_cos": step_stat("cfg_cos") if cfg_detected else [None] * num_steps,
        },
        "cfg": {"detected": cfg_detected,
                "note": "denoiser batch is [cond; uncond]: similarity of the two halves of its output"},
        "indicators": indicators,
    }


# ---- cache ----------------------------------------------------------------------------------------------
def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else $PLANNER_CACHE, else ./.planner-cache."""
    return Path(cache_dir or os.environ.get("PLANNER_CACHE") or ".planner-cache")


def cached_profile(pipe, request=None, sampler=None, steps: int | None = None, *, batch: int | None = None,
                   samples: int = DEFAULT_SAMPLES, guidance_scale: float | None = None, cache_dir=None,
                   refresh: bool = False, model: str | None = None, **kwargs) -> Profile:
    """A stored profile with the same key (and at least as many samples), else a fresh one, stored.

    Files live at <cache_root>/profiles/<key hash>.json.
    """
    n = len(request) if request is not None else samples
    batch = min(batch or min(DEFAULT_BATCH, n), n)
    key = profile_key(pipe, sampler, steps, batch, guidance_scale, model, kwargs)
    lookup = {k: v for k, v in key.items() if k != "model"}
    path = cache_root(cache_dir) / "profiles" / f"{key_hash(key)}.json"
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
