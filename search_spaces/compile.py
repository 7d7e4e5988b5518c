"""Compilation backend: eager, torch.compile (regional or whole, mode), ONNX Runtime, TensorRT.

Only backends that run on this device appear (`backends.compile.backend_unsupported`). The backend is
decided right after the sampler (`search_spaces.compose`): ONNX Runtime and TensorRT export a frozen
graph, so a trial that picks one of them gets no quantisation, token reduction or cache; a trial that
compiles the whole denoiser gets no token reduction or cache (their hooks would be traced into the graph).
Parameter names are fixed (`compile.backend`, `compile.mode`, `tensorrt.fp16`).
"""
from __future__ import annotations

from backends.compile import CompileConfig, supported_backends
from ground.anatomy import anatomy_of

EXPORTERS = ("onnx", "tensorrt")


def suggest_compile(trial, profile, pipe, amortize_calls: int = 100) -> CompileConfig | None:
    device = anatomy_of(pipe).device
    backend = trial.suggest_categorical("compile.backend", supported_backends(device))
    if backend == "eager":
        return None
    if backend in ("torch_regional", "torch_whole"):
        modes = ["default", "max-autotune-no-cudagraphs"] + (["reduce-overhead"] if device.type == "cuda" else [])
        mode = trial.suggest_categorical("compile.mode", modes)
        return CompileConfig(backend=backend, mode=mode, amortize_calls=amortize_calls)
    if backend == "tensorrt":
        fp16 = trial.suggest_categorical("tensorrt.fp16", [False, True])
        return CompileConfig(backend=backend, trt_fp16=fp16, amortize_calls=amortize_calls)
    return CompileConfig(backend=backend, amortize_calls=amortize_calls)
