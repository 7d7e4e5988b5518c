"""Helpers of `bench.gpu`: technique configs, JSON hygiene, the predicted-vs-measured section, the summary."""
from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time

import torch


def technique_config(name: str):
    from backends.caching import (DeepCacheConfig, FirstBlockCacheConfig, TaylorSeerConfig,
                                  TeaCacheConfig)
    from backends.quantization import QuantizeConfig
    from backends.tokens import ToDoConfig, ToMeConfig

    return {"fp8": lambda: QuantizeConfig(mode="fp8"),
            "int8_weight_only": lambda: QuantizeConfig(mode="int8_weight_only"),
            "deepcache": lambda: DeepCacheConfig(branch=0, interval=3),
            "fbcache": lambda: FirstBlockCacheConfig(threshold=0.08),
            "teacache": lambda: TeaCacheConfig(threshold=0.1),
            "taylorseer": lambda: TaylorSeerConfig(interval=3),
            "tome": lambda: ToMeConfig(ratio=0.5),
            "todo": lambda: ToDoConfig(factor=2)}[name]()


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def json_safe(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (int, str, bool)) or v is None:
        return v
    return str(v)


def clone_tree(v):
    if torch.is_tensor(v):
        return v.detach().clone()
    if isinstance(v, (tuple, list)):
        return type(v)(clone_tree(x) for x in v)
    if isinstance(v, dict):
        return {k: clone_tree(x) for k, x in v.items()}
    return v


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


def predict(doc: dict, state: dict, steps: int) -> None:
    """Predicted vs measured speed-up: the profile's per-block times and each cache's counters."""
    import numpy as np
    pred = doc["prediction"] = {"method": (
        "profile (bf16) top-level ms per step: a reused step costs the io entries plus the blocks the cache "
        "still runs; predicted pipeline ms = ref * (1 - D + D * r), D = denoiser share of the bf16 pipeline "
        "call, r = predicted denoiser work ratio"), "caches": {}}
    for name, st in state.items():
        prof, rows = st.get("profile"), doc["models"][name]["techniques"]
        if prof is None or "ref_ms" not in st:
            continue
        lat = np.nan_to_num(np.array(prof.latency, dtype=float))[prof.top_level].sum(axis=1) / prof.steps
        names = [b for b, k in zip(prof.block_names, prof.top_level) if k]
        roles = [b["role"] for b in prof.blocks if b["level"] == 0]
        full = lat.sum()
        io = sum(v for v, r in zip(lat, roles) if r != "block")
        blocks = [(n, v) for n, v, r in zip(names, lat, roles) if r == "block"]
        D = min(1.0, full * steps / st["ref_ms"]) if st["ref_ms"] else 1.0
        n_up = sum(1 for n, _ in blocks if n.startswith("up_blocks."))
        for label, row in rows.items():
            stats = row.get("stats") or {}
            done, reused = stats.get("computed", 0), stats.get("reused", 0)
            if not done + reused or "speedup" not in row:
                continue
            if label == "deepcache":
                deep = sum(v for n, v in blocks if n not in ("down_blocks.0", f"up_blocks.{n_up - 1}"))
                reused_cost = full - deep
            elif label in ("fbcache", "teacache"):
                reused_cost = io + blocks[0][1]
            else:   # taylorseer: transformer blocks all forecast (io runs); UNet output forecast
                reused_cost = io if name != "sd15" else 0.0
            r = (done * full + reused * reused_cost) / ((done + reused) * full)
            predicted = 1 / (1 - D + D * r)
            pred["caches"][f"{name}.{label}"] = {"predicted_speedup": predicted, "measured_speedup": row["speedup"],
                                                 "work_ratio": r, "denoiser_share": D, "computed": done,
                                                 "reused": reused}
    opt = doc.get("optimize", {})
    pred["plan"] = {"work_ratio": opt.get("work_ratio"), "latency_ratio": opt.get("latency_ratio"),
                    "note": "counted FLOPs ratio (plan's measured.work_ratio) vs measured latency ratio"}


def summary(doc: dict) -> str:
    models = list(doc["models"])

    def cells(get, fmt: str) -> list[str]:
        out = []
        for m in models:
            value = get(doc["models"][m])
            out.append("-" if value is None else format(value, fmt))
        return out
    rows = [["", *models], ["params (M)", *cells(lambda r: r["info"]["denoiser_params"] / 1e6, ".1f")]]
    for d in ("fp16", "bf16"):
        rows.append([f"{d} denoiser ms", *cells(lambda r: r["baseline"].get(d, {}).get("denoiser_ms"), ".2f")])
    rows.append(["bf16 pipeline ms", *cells(lambda r: r.get("pipeline_bf16", {}).get("ms"), ".1f")])
    rows.append(["profiler blocks/denoiser", *cells(lambda r: r.get("profiler", {}).get("block_sum_ratio"), ".3f")])
    rows.append(["profiler overhead x", *cells(lambda r: r.get("profiler", {}).get("overhead_ratio"), ".2f")])
    labels = list(dict.fromkeys(k for m in models for k in doc["models"][m]["techniques"]))
    for label in labels:
        row = [label]
        for m in models:
            r = doc["models"][m]["techniques"].get(label, {})
            build = f" b{r['build_s']:.0f}s" if r.get("build_s") is not None and "speedup" in r else ""
            row.append(f"{r['speedup']:.2f}x e{r['rel_l2']:.1e}{build}" if "speedup" in r else
                       ("n/a" if "error" in r else "skip" if "skipped" in r else "-"))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("cells: speed-up over the bf16 pipeline call, e = relative L2 of the final latents vs it, b = build "
                 "s (compile: first call); n/a = not applicable or failed, skip = budget or dry run (JSON says why)")
    caches = doc.get("prediction", {}).get("caches", {})
    if caches:
        lines.append("predicted/measured speed-up: " + ", ".join(
            f"{k} {v['predicted_speedup']:.2f}/{v['measured_speedup']:.2f}" for k, v in caches.items()))
    opt, gate = doc.get("optimize", {}), doc.get("gate", {})
    lines.append(f"optimize rc={opt.get('returncode')} speed-up={opt.get('speedup')} work_ratio={opt.get('work_ratio')}"
                 f" (plan latency ratio {opt.get('latency_ratio')}); gate rc={gate.get('returncode')}"
                 f" verdict={gate.get('verdict', gate.get('skipped'))}")
    return "\n".join(lines)


@contextlib.contextmanager
def dynamo_backend(name: str | None):
    """Inside: `nn.Module.compile` uses dynamo backend `name` (the tiny dry run's "eager": dynamo traces, no
    inductor codegen); None changes nothing."""
    original = torch.nn.Module.compile
    if name is not None:
        torch.nn.Module.compile = lambda self, *a, **kw: original(self, *a, **{**kw, "backend": name})
    try:
        yield
    finally:
        torch.nn.Module.compile = original


def run_cli(cmd: list[str], env: dict, limit: float, cwd) -> dict:
    """Run a command line with a timeout; its exit code (or "timeout") and the tail of its output."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=limit)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:
        parts = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)]
        rc, out = "timeout", "".join(parts)
    lines = [ln for ln in out.splitlines() if "Warning" not in ln and ln.strip()]
    return {"command": " ".join(cmd[1:]), "returncode": rc, "seconds": time.perf_counter() - t,
            "timeout_s": limit, "tail": "\n".join(lines[-25:])}


def environment(device: torch.device) -> dict:
    """Versions and the GPU; `torchao_error` when fp8 / int8 weight-only cannot run for want of torchao."""
    import importlib.util
    import platform

    import diffusers
    env = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device),
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    try:
        import onnxruntime
        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception as exc:  # noqa: BLE001
        env["onnxruntime_providers"] = one_line(exc)
    if importlib.util.find_spec("torchao") is None:
        env["torchao"] = env["torchao_error"] = "unavailable: torchao not packed"
    else:   # import it in a child first: a C++-extension ABI mismatch can abort the process
        from importlib.metadata import version
        env["torchao"] = version("torchao")
        p = subprocess.run([sys.executable, "-c", "import torchao.quantization"], capture_output=True, text=True,
                           timeout=120)
        if p.returncode:
            env["torchao_error"] = f"unavailable: import torchao failed (exit {p.returncode}): " \
                + (p.stderr.strip().splitlines() or [""])[-1][:300]
    return env
