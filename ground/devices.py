"""Devices and dtypes: parse what the user typed, refuse what this machine cannot run, find a module's."""
from __future__ import annotations

import platform
import re
from contextlib import contextmanager

import torch

from ground.errors import PlannerError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_DEVICE = re.compile(r"^(cpu|cuda|mps)(?::(\d{1,3}))?$")


def resolve_device(text: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or 'mps' that exists here; PlannerError (one line) otherwise."""
    match = _DEVICE.match(str(text).strip())
    if not match:
        raise PlannerError(f"--device {text!r}: unknown device; use cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise PlannerError(f"--device {text}: no CUDA device is available on this machine")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise PlannerError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PlannerError(f"--device {text}: MPS is not available on this machine")
    return torch.device(kind if index is None else f"{kind}:{index}")


def parse_dtype(text: str | None) -> torch.dtype | None:
    if text is None:
        return None
    if text not in DTYPES:
        raise PlannerError(f"--dtype {text!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[text]


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a module's first floating parameter (float32 when it has none)."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def cast_pipeline(pipe, dtype: torch.dtype):
    """Cast every module of a pipeline to `dtype`, keeping in float32 what a model declares must stay
    there (diffusers' `_keep_in_fp32_modules`), as `from_pretrained(torch_dtype=...)` would."""
    for value in list(vars(pipe).values()):
        if not isinstance(value, torch.nn.Module):
            continue
        torch.nn.Module.to(value, dtype)
        keep = set(getattr(value, "_keep_in_fp32_modules", None) or ())
        for name, module in value.named_modules():
            if keep & set(name.split(".")):
                torch.nn.Module.to(module, torch.float32)
    return pipe


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work (timing must include it); nothing to do on CPU."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def torch_threads(n: int | None):
    """The body runs with torch's intra-op thread count at `n` (None: unchanged); the previous count comes
    back after, so callers in the same process keep their setting. Speed-ups depend on the thread count."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
