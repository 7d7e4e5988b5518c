"""Reference sets for FID/KID: a folder of images, the pipeline family's own set, or the baseline's outputs
on seeds disjoint from the candidate's (the "FID against the original model" practice of caching papers)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ground.anatomy import anatomy_of
from ground.errors import PlannerError
from planner.quality.fid import GaussianStats
from planner.quality.store import DiskCache

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class Reference:
    features: torch.Tensor  # float64 (R, D)
    source: str
    extractor: str = ""
    _stats: GaussianStats | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.features)

    @property
    def stats(self) -> GaussianStats:
        if self._stats is None:
            self._stats = GaussianStats.from_features(self.features)
        return self._stats


def load_image_folder(folder) -> list[torch.Tensor]:
    """Every image file in `folder` (sorted by name) as a (C, H, W) float tensor in [0, 1]."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise PlannerError(f"--reference {folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise PlannerError(f"--reference {folder}: needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}), "
                           f"found {len(files)}")
    out = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("L", "I", "I;16", "1", "P") and im.mode != "P" else im.convert("RGB")
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except OSError as exc:
            raise PlannerError(f"--reference {path}: unreadable image ({exc})") from None
        t = torch.from_numpy(arr)
        out.append(t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1))
    return out


def resolve_reference(extractor, *, pipe=None, reference_dir=None,
                      generate_reference: Callable[[], torch.Tensor] | None = None,
                      cache: DiskCache | None = None, cache_key: dict | None = None) -> Reference:
    """The reference features under `extractor`.

    reference_dir given -> that folder's images. A pipeline whose family has a reference set -> it.
    Otherwise `generate_reference()` (the baseline's outputs on disjoint seeds), cached under `cache_key`.
    """
    if reference_dir is not None:
        images = load_image_folder(reference_dir)
        return Reference(extractor(images), f"folder {reference_dir} ({len(images)} images)", extractor.ident)
    if pipe is not None:
        anatomy = anatomy_of(pipe)
        images = anatomy.reference_images()
        if images is not None:
            return Reference(extractor(images), f"{anatomy.family} reference set ({len(images)} images)",
                             extractor.ident)
    if generate_reference is None:
        raise PlannerError("no reference set for FID/KID: give --reference DIR")
    key = dict(cache_key or {}, features=extractor.ident) if cache_key is not None else None
    feats = cache.load(key)["features"] if (cache is not None and key is not None and cache.has(key)) else None
    if feats is None:
        feats = extractor(generate_reference())
        if cache is not None and key is not None:
            cache.save(key, {"features": feats})
    return Reference(feats, f"baseline outputs on {len(feats)} disjoint seeds", extractor.ident)
