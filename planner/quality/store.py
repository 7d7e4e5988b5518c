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


class ImageStore:
    """The images of one generation setting (a pipeline as it is now, steps, guidance), kept per
    (condition, seed) row in memory and on disk, and generated only when first asked for: a search that
    decides on 16 samples never pays for 500.

    `setting` names what, besides the pipeline's identity, decides the images (the sampler, steps,
    guidance, size); `generate(request)` makes the images of the rows missing.
    """

    def __init__(self, pipe, setting: dict, generate_rows, cache: DiskCache | None = None) -> None:
        self.cache = cache
        self.generate_rows = generate_rows
        self.setting = dict(setting, kind="image-row", model=identity_key(pipe), pipeline=type(pipe).__name__)
        self._memory: dict[str, torch.Tensor] = {}
        self.generated = 0   # images this store had to generate (not found in memory or on disk)

    @staticmethod
    def _row_key(condition, seed, negative, size) -> str:
        return json.dumps([str(condition), int(seed), negative, list(size) if size else None])

    def _keys(self, request) -> list[str]:
        return [self._row_key(c, s, None if request.negative_prompts is None else request.negative_prompts[i],
                              None if request.sizes is None else request.sizes[i])
                for i, (c, s) in enumerate(zip(request.conditions, request.seeds))]

    def get(self, request) -> torch.Tensor:
        keys = self._keys(request)
        missing = [i for i, k in enumerate(keys) if k not in self._memory and not self._from_disk(k)]
        if missing:
            images = self.generate_rows(_pick(request, missing))
            self.generated += len(missing)
            for i, image in zip(missing, images):
                self._memory[keys[i]] = image
                if self.cache is not None:
                    self.cache.save(dict(self.setting, row=keys[i]), {"image": image})
        return torch.stack([self._memory[k] for k in keys])

    def cached_rows(self, request) -> int:
        """How many rows of `request` are already in memory or on disk (cost nothing to get)."""
        keys = self._keys(request)
        return sum(1 for k in keys if k in self._memory or
                   (self.cache is not None and self.cache.has(dict(self.setting, row=k))))

    def _from_disk(self, key: str) -> bool:
        if self.cache is None:
            return False
        hit = self.cache.load(dict(self.setting, row=key))
        if hit is None:
            return False
        self._memory[key] = hit["image"]
        return True


def _pick(request, indices: list[int]):
    """The rows `indices` of a request, as a request (contiguous runs keep their batches)."""
    from ground.generation import Request

    return Request(tuple(request.conditions[i] for i in indices), tuple(request.seeds[i] for i in indices),
                   None if request.negative_prompts is None else tuple(request.negative_prompts[i] for i in indices),
                   None if request.sizes is None else tuple(request.sizes[i] for i in indices))
