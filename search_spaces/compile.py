"""Compilation backend: eager, torch.compile (regional or whole, mode), ONNX Runtime, TensorRT.

Only backends that run on this device appear (`backends.compile.backend_unsupported`). ONNX and
TensorRT export a frozen graph, so they are offered only when no earlier choice of the same trial
(quantisation, token reduction, caching) patches the denoiser.
"""
from __future__ import annotations

import torch

from backends.compile import CompileConfig, supported_backends


def _device(pipe) -> torch.device:
    from planner.models import denoiser_of

    for p in denoiser_of(pipe).parameters():
        return p.device
    return torch.device("cpu")


def _other_techniques_chosen(trial) -> bool:
    for name, value in trial.params.items():
        if name.startswith(("quant_mode", "tokens_", "cache")) and value not in ("none", None, False):
            return True
    return False


def suggest_compile(trial, profile, pipe, amortize_calls: int = 100) -> CompileConfig | None:
    device = _device(pipe)
    backends = supported_backends(device)
    if _other_techniques_chosen(trial):
        backends = [b for b in backends if b not in ("onnx", "tensorrt")]
    backend = trial.suggest_categorical(f"compile_{device.type}_" + "_".join(backends), backends)
    if backend == "eager":
        return None
    if backend in ("torch_regional", "torch_whole"):
        modes = ["default", "max-autotune-no-cudagraphs"] + (["reduce-overhead"] if device.type == "cuda" else [])
        mode = trial.suggest_categorical(f"compile_mode_{device.type}", modes)
        return CompileConfig(backend=backend, mode=mode, amortize_calls=amortize_calls)
    if backend == "tensorrt":
        fp16 = trial.suggest_categorical("trt_fp16", [False, True])
        return CompileConfig(backend=backend, trt_fp16=fp16, amortize_calls=amortize_calls)
    return CompileConfig(backend=backend, amortize_calls=amortize_calls)
