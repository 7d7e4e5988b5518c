"""The profile document: the recorder's measurements assembled into the JSON that profiler/SCHEMA.md
describes (one row per block, one column per step)."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np
import torch

from ground import __version__
from profiler.profile import SCHEMA_NAME, SCHEMA_VERSION, fit_polynomial, key_hash
from profiler.recorder import Recorder


@dataclass(frozen=True, kw_only=True)
class ProfileRun:
    """Everything one profiling run measured, before it becomes a document."""

    pipe: object
    denoiser: torch.nn.Module
    key: dict
    specs: list
    recorder: Recorder
    request: object
    chunks: list
    steps: int
    call_ms: list
    warmup_ms: float | None
    peak_bytes: int
    peak_method: str
    flops: dict
    total_flops: int | None
    peaks: dict
    denoiser_peak: int | None
    token_threshold: float
    max_tokens: int
    analyse: bool


def cfg_layout(cfg_calls: list[bool], step_calls: list[int]) -> str:
    """How the pipeline ran classifier-free guidance, from the denoiser calls observed: "batched" (one
    call per step on twice the rows), "separate" (two calls per step), or "none"."""
    if cfg_calls and all(cfg_calls):
        return "batched"
    if step_calls and min(step_calls) == max(step_calls) == 2:
        return "separate"
    return "none"


def assemble(run: ProfileRun) -> dict:
    import diffusers

    pipe, denoiser, key, specs, rec = run.pipe, run.denoiser, run.key, run.specs, run.recorder
    request, chunks, steps, call_ms, warmup_ms = run.request, run.chunks, run.steps, run.call_ms, run.warmup_ms
    peak_bytes, peak_method, flops, total_flops = run.peak_bytes, run.peak_method, run.flops, run.total_flops
    peaks, denoiser_peak, token_threshold, max_tokens = run.peaks, run.denoiser_peak, run.token_threshold, run.max_tokens
    analyse = run.analyse
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
    layout = cfg_layout(rec.cfg_calls, rec.step_calls)
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
                        "planner": __version__, "threads": torch.get_num_threads(),
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
        "cfg": {"detected": cfg_detected, "layout": layout,
                "calls_per_step": max(rec.step_calls) if rec.step_calls else None,
                "note": "layout: batched (one denoiser call per step on both halves), separate (one call per "
                        "branch), none; detected: batched; cfg_* series: similarity of the two halves"},
        "indicators": indicators,
    }


