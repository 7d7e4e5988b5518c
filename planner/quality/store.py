"""Generated images and features kept on disk, keyed by everything that decides them.

Entries live under the cache root's `images/` folder (ground.cache): a safetensors file and a JSON file
named by the sha256 of a JSON key, written atomically (a reader sees the whole entry or none). A damaged
or mismatching entry is a miss and is rewritten.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ground.cache import cache_dir
from ground.files import atomic_path, write_text_atomic
from ground.generation import generate
from ground.identity import identity_key


class DiskCache:
    """safetensors + json entries named by the sha256 of a json key; writes are atomic (tmp + rename)."""

    def __init__(self, root=None) -> None:
        self.root = Path(root) if root is not None else cache_dir("images")

    @staticmethod
    def digest(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _paths(self, key: dict) -> tuple[Path, Path]:
        d = self.digest(key)
        return self.root / f"{d}.safetensors", self.root / f"{d}.json"

    def has(self, key: dict) -> bool:
        tensors, meta = self._paths(key)
        return tensors.exists() and meta.exists()

    def load(self, key: dict) -> dict | None:
        from safetensors.torch import load_file

        tensors, meta = self._paths(key)
        if not (tensors.exists() and meta.exists()):
            return None
        try:
            stored = json.loads(meta.read_text())
            if stored.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
                return None
            return load_file(str(tensors))
        except (OSError, ValueError):
            return None  # a damaged entry is a miss; it is rewritten

    def save(self, key: dict, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        from safetensors.torch import save_file

        t_path, m_path = self._paths(key)
        with atomic_path(t_path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        write_text_atomic(m_path, json.dumps({"key": key, **(meta or {})}, sort_keys=True, default=str, indent=1))


def generation_key(pipe, request, steps, guidance_scale, sampler: str) -> dict:
    """What determines generated images: every component's weights and the LoRA adapters (the pipeline's
    identity), the scheduler, steps, guidance and the (condition, seed) pairs."""
    sched = pipe.scheduler
    pairs = hashlib.sha256(json.dumps([list(map(str, request.conditions)), list(request.seeds)]).encode())
    return {
        "kind": "images",
        "model": identity_key(pipe),
        "pipeline": type(pipe).__name__,
        "sampler": sampler,
        "scheduler": type(sched).__name__,
        "scheduler_config": {k: v for k, v in dict(sched.config).items() if not k.startswith("_")},
        "steps": steps,
        "guidance_scale": guidance_scale,
        "n": len(request),
        "pairs": pairs.hexdigest()[:24],
    }


def cached_generate(pipe, request, steps=None, guidance_scale=None, sampler: str = "", cache: DiskCache | None = None,
                    **extra) -> torch.Tensor:
    """`ground.generation.generate`, memoised on disk by `generation_key`."""
    if cache is None:
        return generate(pipe, request, steps=steps, guidance_scale=guidance_scale, **extra)
    key = generation_key(pipe, request, steps, guidance_scale, sampler)
    if extra:
        key["extra"] = {k: str(v) for k, v in sorted(extra.items())}
    hit = cache.load(key)
    if hit is not None:
        return hit["images"]
    images = generate(pipe, request, steps=steps, guidance_scale=guidance_scale, **extra)
    cache.save(key, {"images": images.float()})
    return images


def cached_features(images: torch.Tensor, extractor, cache: DiskCache | None, images_key: dict | None) -> torch.Tensor:
    if cache is None or images_key is None:
        return extractor(images)
    key = dict(images_key, kind="features", features=extractor.ident)
    hit = cache.load(key)
    if hit is not None:
        return hit["features"]
    feats = extractor(images)
    cache.save(key, {"features": feats})
    return feats
