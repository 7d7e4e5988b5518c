"""Pluggable feature extractors for FID/KID, by name (a registry) or as a TorchScript file.

    "inception"  the canonical FID Inception-v3 (planner/quality/inception.py): the default for every
                 model whose anatomy names no other (`Anatomy.default_features`).
    other names  registered with `register_features(name, factory)`: the demo registers "digits"
                 (planner/demo/features.py), the default of its models.
    PATH         a user TorchScript module mapping (N, C, H, W) images in [0, 1] to (N, D) features;
                 if it has an `input_size` attribute (int or (h, w)) images are resized to it first.

Every extractor takes images in [0, 1] as (N, C, H, W), or a list of (C, H, W) of any sizes, and resizes
them the same way (bilinear, antialiased) to its own input size; grey images are replicated to RGB for
Inception, RGB images averaged to grey for the digits net. Features come back as float64 (N, D).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ground.errors import PlannerError, first_line

_FACTORIES: dict[str, Callable[[], "FeatureExtractor"]] = {}


def register_features(name: str, factory: Callable[[], "FeatureExtractor"]) -> None:
    _FACTORIES[name] = factory


def feature_names() -> list[str]:
    return ["inception", *_FACTORIES]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def prepare(images, size: tuple[int, int], channels: int) -> torch.Tensor:
    """[0, 1] images -> float32 (N, channels, *size): grey<->RGB, bilinear antialiased resize."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        batch = [images]
    elif isinstance(images, (list, tuple)):
        batch = [im.unsqueeze(0) if im.ndim == 3 else im for im in images]
    else:
        raise PlannerError("images must be an (N, C, H, W) tensor or a list of (C, H, W) tensors")
    out = []
    for x in batch:
        x = x.detach().float().cpu()
        c = x.shape[1]
        if c == 4:
            x, c = x[:, :3], 3
        if c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c == 3 and channels == 1:
            x = x.mean(dim=1, keepdim=True)
        elif c != channels:
            raise PlannerError(f"images have {c} channels; the feature extractor needs {channels}")
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(x.clamp(0, 1))
    return torch.cat(out)


class FeatureExtractor:
    """Base class: subclasses set name, ident, input_size, channels and implement `_features`."""

    name = "base"
    ident = "base"  # identifies weights too: part of cache keys
    input_size: tuple[int, int] = (16, 16)
    channels = 1
    batch_size = 256

    @torch.no_grad()
    def __call__(self, images) -> torch.Tensor:
        x = prepare(images, self.input_size, self.channels)
        feats = [self._features(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat(feats).double() if feats else torch.zeros(0, 0, dtype=torch.float64)

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # x in [0, 1], prepared
        raise NotImplementedError


def load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - any failure: not a usable TorchScript file
        raise PlannerError(f"{path}: not a loadable TorchScript feature network: {first_line(exc, 160)}") from None


class TorchScriptFeatures(FeatureExtractor):
    channels = 3

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise PlannerError(f"--features {path}: no such file (give {', '.join(feature_names())} "
                               "or a TorchScript file)")
        self.net = load_torchscript(path)
        self.name = str(path)
        self.ident = f"torchscript:{file_digest(path)}"
        size = getattr(self.net, "input_size", None)
        self.input_size = (size, size) if isinstance(size, int) else tuple(size) if size else None
        self.channels = int(getattr(self.net, "input_channels", 3))

    @torch.no_grad()
    def __call__(self, images):
        if self.input_size is None:  # no declared size: images go in as they are (one size required)
            if not isinstance(images, torch.Tensor):
                images = torch.stack(list(images))
            self.input_size = tuple(images.shape[-2:])
            try:
                return super().__call__(images)
            finally:
                self.input_size = None
        return super().__call__(images)

    def _features(self, x):
        out = self.net(x)
        if out.ndim != 2:
            out = out.flatten(1)
        return out


def get_extractor(spec: str | None = None, pipe=None) -> FeatureExtractor:
    """spec: a registered name, "inception", a TorchScript PATH, or None for the default of `pipe`'s
    family (`Anatomy.default_features`; "inception" without a pipeline)."""
    if spec is None:
        from ground.anatomy import anatomy_of

        spec = anatomy_of(pipe).default_features if pipe is not None else "inception"
    if spec in _FACTORIES:
        return _FACTORIES[spec]()
    if spec == "inception":
        from planner.quality.inception import InceptionFeatures

        return InceptionFeatures()
    return TorchScriptFeatures(Path(spec))
