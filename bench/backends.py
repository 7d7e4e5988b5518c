"""Speed-ups of the backends (precision / quantisation, compilation, token reduction) against eager.

    python bench/backends.py [--models digits-unet,digits-dit,sd64,dit256] [--seconds 40] [--threads 2]

For each model every variant gets its own copy of the denoiser (technique applied to the copy), is
warmed up (the first call's time is the build / compile / export time, reported apart), then the
variants are timed side by side: in each round every variant runs one denoiser call, in a rotating
order, so load on a shared machine hits them alike. Speed-up = median over rounds of eager / variant.
Accuracy: relative L2 error of the variant's output against eager on the same input.
Results go to bench/results/backends.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import backends  # noqa: E402
from backends.compile import CompileConfig, backend_unsupported  # noqa: E402
from backends.quantization import QuantizeConfig, mode_unsupported  # noqa: E402
from backends.technique import why_not_applicable  # noqa: E402
from backends.tokens import ToDoConfig, ToMeConfig  # noqa: E402


class Holder:
    def __init__(self, name: str, module) -> None:
        self.__dict__[name] = module
        self.name = name

    @property
    def denoiser(self):
        return self.__dict__[self.name]


def _demo(name: str):
    from ground.errors import PlannerError
    from planner.models import load_pipeline

    try:
        return load_pipeline(name), "trained"
    except PlannerError:
        sys.path.insert(0, str(ROOT / "tests" / "backends"))
        from backend_helpers import demo_pipeline

        return demo_pipeline(name), "random-init (weights not shipped yet)"


def build(model: str):
    """(attribute name, denoiser, inputs kwargs, description)."""
    g = torch.Generator().manual_seed(0)
    if model in ("digits-unet", "digits-dit"):
        pipe, weights = _demo(model)
        name = "unet" if model == "digits-unet" else "transformer"
        den = getattr(pipe, name).eval()
        b = 8  # 4 images x classifier-free guidance
        inputs = dict(args=(torch.randn(b, 1, 16, 16, generator=g), torch.full((b,), 500)),
                      kwargs={"class_labels": torch.arange(b) % 10})
        tokens = "64 tokens in attention (8x8)"
        return name, den, inputs, f"{model} ({weights}), batch {b}, 16x16, {tokens}"
    from planner.demo.tiny_pipelines import build_tiny_pipeline

    if model == "sd64":
        pipe = build_tiny_pipeline("sd", latent_size=64)
        den = pipe.unet.eval()
        b = 2
        inputs = dict(args=(torch.randn(b, 4, 64, 64, generator=g), torch.tensor(500)),
                      kwargs={"encoder_hidden_states": torch.randn(b, 77, den.config.cross_attention_dim, generator=g)})
        return "unet", den, inputs, "tiny-sd UNet at 64x64 latents (4096 tokens at full resolution), batch 2"
    if model == "dit256":
        pipe = build_tiny_pipeline("dit", sample_size=32, patch_size=2)
        den = pipe.transformer.eval()
        b = 2
        c = den.config.in_channels
        inputs = dict(args=(torch.randn(b, c, 32, 32, generator=g), torch.full((b,), 500)),
                      kwargs={"class_labels": torch.arange(b) % 10})
        return "transformer", den, inputs, "tiny-dit at 32x32 latents, patch 2 (256 tokens), batch 2"
    raise SystemExit(f"unknown model {model}")


SKIP: tuple[str, ...] = ()


def variants(holder) -> list[tuple[str, object]]:
    out = [("eager", None)]
    for cfg in (QuantizeConfig(mode="bf16"), QuantizeConfig(mode="fp16"), QuantizeConfig(mode="int8_dynamic"),
                QuantizeConfig(mode="int8_dynamic", backend="torchao"), QuantizeConfig(mode="int8_weight_only"),
                CompileConfig(backend="torch_regional"), CompileConfig(backend="torch_whole"),
                CompileConfig(backend="onnx"), CompileConfig(backend="tensorrt"),
                ToMeConfig(ratio=0.5), ToMeConfig(ratio=0.5, max_downsample=2), ToDoConfig(factor=2),
                ToDoConfig(factor=2, max_downsample=2)):
        if not any(word in cfg.label() for word in SKIP):
            out.append((cfg.label(), cfg))
    return out


def _unsupported(cfg, holder) -> str | None:
    if isinstance(cfg, QuantizeConfig):
        return mode_unsupported(cfg.mode, torch.device("cpu"), cfg.backend)
    if isinstance(cfg, CompileConfig):
        return backend_unsupported(cfg.backend, "cpu")
    return why_not_applicable(holder, cfg)


def _call(holder, inputs):
    with torch.no_grad():
        out = holder.denoiser(*inputs["args"], **inputs["kwargs"])
    return (out.sample if hasattr(out, "sample") else out[0]).float()


def bench_model(model: str, seconds: float) -> dict:
    name, den, inputs, description = build(model)
    print(f"== {model}: {description}", flush=True)
    base_holder = Holder(name, den)
    ref = _call(base_holder, inputs)
    entries = {}
    runners = []
    for label, cfg in variants(base_holder):
        holder = Holder(name, copy.deepcopy(den) if cfg is not None else den)
        if cfg is not None:
            reason = _unsupported(cfg, holder)
            if reason:
                entries[label] = {"skipped": reason}
                print(f"   skip {label}: {reason}", flush=True)
                continue
            if isinstance(cfg, (ToMeConfig, ToDoConfig)) and cfg.max_downsample == 2 and model != "digits-unet" \
                    and model != "sd64":
                continue  # transformer token grids are all alike: the level knob changes nothing
        print(f"   warm {label}", flush=True)
        try:
            t0 = time.perf_counter()
            handle = backends.apply(holder, cfg) if cfg is not None else None
            apply_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = _call(holder, inputs)
            first_s = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001
            entries[label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(f"   fail {label}: {entries[label]['error']}", flush=True)
            continue
        err = float((out - ref).norm() / ref.norm())
        if isinstance(cfg, (ToMeConfig, ToDoConfig)) and err == 0.0:
            entries[label] = {"skipped": "no attention in its range on this model (output unchanged)"}
            handle.remove()
            continue
        _call(holder, inputs)  # second warm-up call
        info = dict(handle.info) if handle is not None else {}
        entries[label] = {"rel_err": err, "apply_s": round(apply_s, 3), "first_call_s": round(first_s, 3),
                          "info": {k: v for k, v in info.items() if k in ("build_s", "exporter", "provider",
                                                                         "amortize_calls", "backend")}}
        runners.append((label, holder, handle))
    # interleaved timing
    times: dict[str, list[float]] = {label: [] for label, _, _ in runners}
    start = time.perf_counter()
    rounds = 0
    while rounds < 3 or (time.perf_counter() - start < seconds and rounds < 200):
        order = runners[rounds % len(runners):] + runners[:rounds % len(runners)]
        for label, holder, _ in order:
            t0 = time.perf_counter()
            _call(holder, inputs)
            times[label].append(time.perf_counter() - t0)
        rounds += 1
    eager = times["eager"]
    for label, _, handle in runners:
        ratios = [e / v for e, v in zip(eager, times[label])]
        e = entries[label]
        e["latency_ms"] = round(1000 * statistics.median(times[label]), 2)
        e["speedup"] = round(statistics.median(ratios), 3)
        if label != "eager" and "build_s" not in e["info"] and label.startswith("compile"):
            e["info"]["build_s"] = round(max(0.0, e["first_call_s"] - statistics.median(times[label])), 3)
        if handle is not None:
            handle.remove()
        print(f"   {label:70s} {e['latency_ms']:9.2f} ms  x{e['speedup']:.2f}  err {e['rel_err']:.2e}", flush=True)
    return {"description": description, "rounds": rounds, "variants": entries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="digits-unet,digits-dit,sd64,dit256")
    parser.add_argument("--seconds", type=float, default=40.0, help="interleaved timing per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated substrings of variant labels to leave out")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "backends.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    global SKIP
    SKIP = tuple(w for w in args.skip.split(",") if w)
    import os

    os.environ.setdefault("PLANNER_CACHE_DIR", "/tmp/planner-bench-cache")
    results = {"skipped_variants": list(SKIP), "torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
               "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "method": "denoiser forward latency; variants interleaved per round; speedup = median(eager/variant)",
               "models": {}}
    for model in args.models.split(","):
        results["models"][model] = bench_model(model, args.seconds)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
