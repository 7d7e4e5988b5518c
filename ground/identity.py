"""The identity of a pipeline: what its weights, components, scheduler and LoRA adapters are.

`fingerprint(module)` is a sha256 over a module's public config, class and every parameter and buffer
(names, shapes, dtypes, bytes). Hashing every weight of an SDXL or FLUX takes seconds to minutes, so it is
computed once per module per process and reused while a cheap *probe* says the weights are unchanged:
names, shapes, dtypes and storage of every tensor, a strided sample of their values, and the state of any
LoRA layer (which adapters are merged, their scales). Loading, fusing or re-scaling a LoRA, swapping a
component or editing weights in place changes the probe, and the fingerprint is computed again.

`structure(module)` hashes only the config and the names, shapes and dtypes, with LoRA layers folded away:
the same architecture with other weights (a LoRA fused or loaded on top of the base) has the same
structure. `pipeline_identity(pipe)` collects all of it for a pipeline, and `identity_key(pipe)` is the
short hash every cache of generated images is keyed on.
"""
from __future__ import annotations

import hashlib
import json
import threading
import weakref

import torch

_LOCK = threading.Lock()
_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, str]]" = weakref.WeakKeyDictionary()
PROBE_VALUES = 32   # values sampled from each tensor by the probe


def _public_config(module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Private keys (`_name_or_path`, `_diffusers_version`, ...) say where and by what the model was
    # loaded, not what it is: the same weights must fingerprint the same from any folder.
    return {k: v for k, v in data.items() if not str(k).startswith("_")
            and k not in ("transformers_version", "architectures", "torch_dtype", "dtype")}


def _tensors(module: torch.nn.Module):
    """(name, tensor) of every parameter and buffer; quantised tensors as their integer representation."""
    for name, value in sorted(module.state_dict(keep_vars=True).items()):
        if not isinstance(value, torch.Tensor):
            continue   # packed params of quantised layers: not weights of the original model
        t = value.detach()
        if t.is_quantized:
            t = t.int_repr()
        yield name, t


def _lora_state(module: torch.nn.Module) -> list:
    """Scales and merge state of PEFT LoRA layers (they change outputs without changing tensors' shapes)."""
    out = []
    for name, m in module.named_modules():
        scaling = getattr(m, "scaling", None)
        if isinstance(scaling, dict) and hasattr(m, "merged_adapters"):
            out.append((name, sorted((k, float(v)) for k, v in scaling.items()),
                        sorted(getattr(m, "merged_adapters", []) or []),
                        sorted(getattr(m, "active_adapters", []) or [])))
    return out


def _probe(module: torch.nn.Module) -> str:
    digest = hashlib.sha256(type(module).__name__.encode())
    samples = []
    for name, t in _tensors(module):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{t.data_ptr() if t.numel() else 0}".encode())
        if t.numel():
            flat = t.reshape(-1)
            samples.append(flat[::max(1, flat.numel() // PROBE_VALUES)][:PROBE_VALUES].double())
    if samples:
        digest.update(torch.cat([s.to(samples[0].device) for s in samples]).cpu().numpy().tobytes())
    digest.update(json.dumps(_lora_state(module), default=str).encode())
    return digest.hexdigest()


def _full_hash(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(_public_config(module), sort_keys=True, default=str).encode())
    digest.update(type(module).__name__.encode())
    for name, t in _tensors(module):
        c = t.cpu().contiguous()
        digest.update(f"{name}:{tuple(c.shape)}:{c.dtype}".encode())
        digest.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    lora = _lora_state(module)
    if lora:  # absent without LoRA layers, so plain models keep the fingerprints plans recorded
        digest.update(json.dumps(lora, default=str).encode())
    return "sha256:" + digest.hexdigest()[:16]


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's config and weights (see the module doc); cached while the probe holds."""
    probe = _probe(module)
    with _LOCK:
        cached = _CACHE.get(module)
    if cached is not None and cached[0] == probe:
        return cached[1]
    value = _full_hash(module)
    with _LOCK:
        _CACHE[module] = (probe, value)
    return value


def forget(module: torch.nn.Module) -> None:
    """Drop a module's cached fingerprint (the next call hashes every weight again)."""
    with _LOCK:
        _CACHE.pop(module, None)


def _base_name(name: str) -> str | None:
    """A state-dict name with PEFT's LoRA wrapping folded away; None for the LoRA tensors themselves."""
    if ".lora_" in name or name.startswith("lora_"):
        return None
    return name.replace(".base_layer.", ".").replace(".base_layer", "")


def structure(module: torch.nn.Module) -> str:
    """sha256 of config, class and (name, shape, dtype) of every tensor, LoRA layers folded away."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_public_config(module), sort_keys=True, default=str).encode())
    digest.update(type(module).__name__.encode())
    for name, t in _tensors(module):
        base = _base_name(name)
        if base is not None:
            digest.update(f"{base}:{tuple(t.shape)}:{t.dtype}".encode())
    return "sha256:" + digest.hexdigest()[:16]


def lora_adapters(pipe) -> dict[str, float]:
    """Loaded LoRA adapters and the scale each is applied with ({} when none)."""
    out: dict[str, float] = {}
    for value in vars(pipe).values():
        if not isinstance(value, torch.nn.Module):
            continue
        for _, m in value.named_modules():
            scaling = getattr(m, "scaling", None)
            if isinstance(scaling, dict) and hasattr(m, "merged_adapters"):
                for adapter, scale in scaling.items():
                    out.setdefault(str(adapter), float(scale))
    return out


def components(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's modules by attribute name (denoiser, VAE, text encoders, ...), each once."""
    found, seen = {}, set()
    for name, value in sorted(vars(pipe).items()):
        if isinstance(value, torch.nn.Module) and not name.startswith("_") and id(value) not in seen:
            seen.add(id(value))
            found[name] = value
    return found


def pipeline_identity(pipe) -> dict:
    """Everything that decides what a pipeline generates, as short hashes."""
    scheduler = getattr(pipe, "scheduler", None)
    sched = {}
    if scheduler is not None:
        config = {k: v for k, v in dict(getattr(scheduler, "config", {})).items() if not str(k).startswith("_")}
        sched = {"class": type(scheduler).__name__,
                 "config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]}
    return {"pipeline": type(pipe).__name__,
            "components": {name: fingerprint(m) for name, m in components(pipe).items()},
            "scheduler": sched, "lora": lora_adapters(pipe)}


def identity_key(pipe) -> str:
    return hashlib.sha256(json.dumps(pipeline_identity(pipe), sort_keys=True).encode()).hexdigest()[:24]
