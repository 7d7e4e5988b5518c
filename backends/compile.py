"""Compilation of the denoiser: `compile(backend=...)`.

* `eager`: identity (the baseline).
* `torch_regional`: `torch.compile` of the repeated blocks, in place (`module.compile()`, as diffusers'
  `compile_repeated_blocks`); models without `_repeated_blocks` get their transformer / down / mid / up
  blocks. Caches intercept a block's `__call__` outside the compiled code, so they compose.
* `torch_whole`: `torch.compile` of the whole denoiser (refused when caches intercept blocks inside it:
  their decisions would be traced into the graph).
* `onnx`: the denoiser exported with `torch.onnx.export` (batch dimension dynamic) at its first call, with
  the actual arguments, and run by onnxruntime (CPUExecutionProvider here; CUDA where present). The
  pipeline's component is swapped for `OrtDenoiser`, called like the original module (returns an object
  with `.sample`, or a tuple with `return_dict=False`; `.config`, `.dtype`, `.device` and any other
  attribute read through to the original). Exports are cached on disk keyed by the model fingerprint and
  the input signature.
* `tensorrt`: the same ONNX graph built into a TensorRT engine, through onnxruntime's TensorRT execution
  provider or, without it, the `tensorrt` package. Needs a CUDA GPU.

Setup time (compile / export / engine build, measured on the first call of each input signature) is
kept apart from per-call latency in `handle.info["setup_s"]`, with `amortize_calls`, the number of calls
a plan expects to spread it over, and `setup_s_per_call`; a plan records it as `measured.setup_s`.
The ONNX Runtime and TensorRT paths live in `backends/onnx.py`.
"""
from __future__ import annotations

import importlib.util
import os
import time
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from backends.technique import STAGE_COMPILE, Handle, NotApplicable, TechniqueConfig, register
from ground.anatomy import anatomy_of
from ground.cache import cache_dir
from ground.devices import device_of
from ground.hooks import add_call_hook, is_hooked, replace_attribute

HOOK = "planner.compile"

Backend = Literal["eager", "torch_regional", "torch_whole", "onnx", "tensorrt"]
BACKENDS = ("eager", "torch_regional", "torch_whole", "onnx", "tensorrt")


class CompileConfig(TechniqueConfig):
    type = "compile"
    version = 1
    stage = STAGE_COMPILE

    backend: Backend = "torch_regional"
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    dynamic: bool = False                 # torch.compile: dynamic shapes
    fullgraph: bool = False               # torch.compile: error on graph breaks
    ort_opt_level: Literal["basic", "extended", "all"] = "all"
    ort_threads: int = Field(0, ge=0, le=256)   # 0: onnxruntime's default
    trt_fp16: bool = False                # tensorrt: allow fp16 kernels
    amortize_calls: int = Field(100, ge=1)
    disk_cache: bool = True               # onnx/tensorrt: reuse exports keyed by fingerprint + shapes

    @model_validator(mode="after")
    def _consistent(self):
        torch_knobs = self.mode != "default" or self.dynamic or self.fullgraph
        if torch_knobs and self.backend not in ("torch_regional", "torch_whole"):
            raise ValueError(f"mode/dynamic/fullgraph are torch.compile knobs; backend is {self.backend}")
        if self.trt_fp16 and self.backend != "tensorrt":
            raise ValueError("trt_fp16 applies to backend tensorrt only")
        return self


# ------------------------------------------------------------------------------------------- support

def ort_providers(device: torch.device, tensorrt: bool = False) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = (["TensorrtExecutionProvider"] if tensorrt else []) + \
        (["CUDAExecutionProvider"] if device.type == "cuda" else []) + ["CPUExecutionProvider"]
    return [p for p in wanted if p in available]


def backend_unsupported(backend: str, device: torch.device | str = "cpu") -> str | None:
    """None when `backend` can run on `device`, else a one-line reason."""
    device = torch.device(device)
    if backend in ("eager", "torch_regional", "torch_whole"):
        if backend != "eager" and device.type == "cpu":
            try:
                from torch._inductor import cpp_builder  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                return f"torch.compile's inductor is unusable here: {exc}"
        return None
    if backend == "onnx":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            return "onnx backend needs the onnx and onnxruntime packages"
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort_providers(device):
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        return None
    if backend == "tensorrt":
        if not torch.cuda.is_available() or device.type != "cuda":
            return "TensorRT needs a CUDA GPU and the model on it"
        has_ep = importlib.util.find_spec("onnxruntime") is not None and \
            "TensorrtExecutionProvider" in ort_providers(device, tensorrt=True)
        if not has_ep and importlib.util.find_spec("tensorrt") is None:
            return "TensorRT needs the tensorrt package or onnxruntime's TensorrtExecutionProvider"
        return None
    return f"unknown backend {backend!r}"


def supported_backends(device: torch.device | str = "cpu") -> list[str]:
    return [b for b in BACKENDS if backend_unsupported(b, device) is None]


def hooked_modules(module: torch.nn.Module) -> list[str]:
    """Submodules whose calls other techniques intercept or rewrite (see `ground.hooks.is_hooked`)."""
    return [name or "<root>" for name, m in module.named_modules() if is_hooked(m)]


def _time_first_call(module: torch.nn.Module, info: dict):
    """Record in `info["setup_s"]` how long the first call of `module` takes (the one that compiles),
    with a call hook: it runs outside the compiled code, where a forward hook would be traced into it."""
    def timed(call, *args, **kwargs):
        if "setup_s" in info:
            return call(*args, **kwargs)
        t0 = time.perf_counter()
        out = call(*args, **kwargs)
        info["setup_s"] = time.perf_counter() - t0
        info["setup_s_per_call"] = info["setup_s"] / info["amortize_calls"]
        return out
    return add_call_hook(module, HOOK, timed)


def _inductor_cache() -> None:
    """Inductor's compiled kernels go under the planner's cache root (unless the user placed them): a
    production start that applies the same plan again reuses them instead of compiling anew."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir("compiled") / "inductor")


def _apply_torch(pipe, denoiser, config: CompileConfig) -> Handle:
    _inductor_cache()
    kwargs: dict[str, Any] = {"mode": None if config.mode == "default" else config.mode,
                              "dynamic": config.dynamic, "fullgraph": config.fullgraph}
    if config.backend == "torch_whole":
        inside = [n for n in hooked_modules(denoiser) if n != "<root>"]
        if inside:
            raise NotApplicable(f"compile torch_whole: {len(inside)} submodules are intercepted by other techniques "
                                f"(e.g. {inside[0]}); their decisions would be traced: use torch_regional")
        targets = [("", denoiser)]
    else:
        targets = anatomy_of(pipe).compile_regions()
        if not targets:
            raise NotApplicable(f"compile torch_regional: no repeated blocks found in {type(denoiser).__name__}")
    info: dict[str, Any] = {"compiled": [n or "<root>" for n, _ in targets], "amortize_calls": config.amortize_calls}
    t0 = time.perf_counter()
    # What `nn.Module.compile()` does in place, as a named attribute replacement (listed, removable).
    compiled = [(m, torch.compile(m._call_impl, **kwargs)) for _, m in targets]
    info["wrap_s"] = time.perf_counter() - t0

    def put_on() -> list:
        # Compilation happens lazily at the first denoiser call: its time (compile + one call) is the setup time.
        return [replace_attribute(m, "_compiled_call_impl", impl, HOOK) for m, impl in compiled] + \
            [_time_first_call(denoiser, info)]
    undos = put_on()

    def undo() -> None:
        for fn in reversed(undos):
            fn()

    def resume() -> None:   # the code compiled before, back in place: no recompilation
        undos[:] = put_on()
    return Handle(config, undo, info=info, suspend=undo, resume=resume)


# ------------------------------------------------------------------------------------------- handler

def _applicable(pipe) -> str | None:
    try:
        anatomy_of(pipe).denoiser
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    return None


@register(CompileConfig, applicable=_applicable)
def apply_compile(pipe, config: CompileConfig) -> Handle:
    denoiser = anatomy_of(pipe).denoiser
    reason = backend_unsupported(config.backend, device_of(denoiser))
    if reason:
        raise NotApplicable(f"compile {config.backend}: {reason}")
    if config.backend == "eager":
        return Handle(config, lambda: None, info={"setup_s": 0.0, "amortize_calls": config.amortize_calls})
    if config.backend in ("torch_regional", "torch_whole"):
        return _apply_torch(pipe, denoiser, config)
    from backends.onnx import apply_ort

    return apply_ort(pipe, denoiser, config)
