"""Pluggable feature extractors for FID/KID.

    "digits"     the shipped DigitsFeatureNet (64-d pre-activation features, 16x16 grey input), divided
                 by one constant so that the held-out digits have mean per-dimension variance 1 (raw
                 features have variance ~35 per dimension, which would put FID on an arbitrary scale);
                 the default for the demo models and for 1-channel images.
    "inception"  the canonical FID Inception-v3 (2048-d pool features, 299x299 RGB input). Its weights
                 are not shipped: put them at $PLANNER_INCEPTION_WEIGHTS or
                 ~/.cache/planner/pt_inception-2015-12-05.safetensors (the pytorch-fid state dict
                 saved with safetensors), or give NVIDIA's TorchScript `inception-2015-12-05.pt`
                 (~/.cache/planner/inception-2015-12-05.pt). The default for every other model.
    PATH         a user TorchScript module mapping (N, C, H, W) images in [0, 1] to (N, D) features;
                 if it has an `input_size` attribute (int or (h, w)) images are resized to it first.

Every extractor takes images in [0, 1] as (N, C, H, W), or a list of (C, H, W) of any sizes, and resizes
them the same way (bilinear, antialiased) to its own input size; grey images are replicated to RGB for
Inception, RGB images averaged to grey for the digits net. Features come back as float64 (N, D).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from planner.errors import PlannerError

DIGITS_WEIGHTS = Path(__file__).resolve().parent.parent / "demo" / "weights" / "digits-features" / "model.safetensors"
INCEPTION_ENV = "PLANNER_INCEPTION_WEIGHTS"
INCEPTION_CANDIDATES = ("pt_inception-2015-12-05.safetensors", "inception-2015-12-05.pt")
INCEPTION_HINT = (f"FID Inception weights not found: set ${INCEPTION_ENV} to pt_inception-2015-12-05.safetensors "
                  "(pytorch-fid's state dict re-saved with safetensors.torch.save_file) or to NVIDIA's "
                  "TorchScript inception-2015-12-05.pt, or put either file in ~/.cache/planner/; "
                  "or use --features digits|PATH")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "planner"


def _file_digest(path: Path) -> str:
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


class DigitsFeatures(FeatureExtractor):
    name = "digits"
    channels = 1

    def __init__(self, weights: Path = DIGITS_WEIGHTS) -> None:
        from safetensors.torch import load_file

        from planner.demo.architectures import DigitsFeatureNet
        from planner.demo.data import RESOLUTION

        if not Path(weights).exists():
            raise PlannerError(f"digits feature network weights missing at {weights}; reinstall the package "
                               "or retrain with `python -m planner.demo.train features`")
        self.net = DigitsFeatureNet()
        self.net.load_state_dict(load_file(str(weights)))
        self.net.eval()
        self.input_size = (RESOLUTION, RESOLUTION)
        self.ident = f"digits:{_file_digest(Path(weights))}:unitvar"
        self.scale = 1.0
        self.scale = self._unit_variance_scale()

    @torch.no_grad()
    def _unit_variance_scale(self) -> float:
        from planner.demo.data import digits_split

        images, _ = digits_split("held_out")
        feats = self.net.features(images).double()
        return float(feats.var(dim=0).mean().rsqrt())

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x * 2 - 1) * self.scale

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        x = prepare(images, self.input_size, self.channels)
        return torch.cat([self.net(x[i:i + self.batch_size] * 2 - 1) for i in range(0, len(x), self.batch_size)])


# ---- the FID Inception-v3 (pytorch-fid / TF 2015-12-05 graph layout; state-dict names as torchvision's) ----

class _Conv(nn.Module):
    def __init__(self, cin: int, cout: int, k, s=1, p=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):  # the TF graph's average pools exclude padding
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _A(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, p=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, p=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, p=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x))], 1)


class _B(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, s=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, p=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, s=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _C(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = _Conv(cin, c7, 1), _Conv(c7, c7, (1, 7), p=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), p=(3, 0))
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, (7, 1), p=(3, 0))
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _Conv(c7, c7, (1, 7), p=(0, 3)), _Conv(c7, c7, (7, 1), p=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), p=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        d = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          self.branch7x7dbl_5(self.branch7x7dbl_4(d)), self.branch_pool(_avg(x))], 1)


class _D(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, s=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _Conv(cin, 192, 1), _Conv(192, 192, (1, 7), p=(0, 3))
        self.branch7x7x3_3, self.branch7x7x3_4 = _Conv(192, 192, (7, 1), p=(3, 0)), _Conv(192, 192, 3, s=2)

    def forward(self, x):
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class _E(nn.Module):
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the last block of the TF graph max-pools its pool branch
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _Conv(384, 384, (1, 3), p=(0, 1)), _Conv(384, 384, (3, 1), p=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, p=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), p=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), p=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the 2048-d pool layer, as the FID graph of 2015-12-05 (input: 299x299, [-1, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = _Conv(3, 32, 3, s=2), _Conv(32, 32, 3)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = _Conv(32, 64, 3, p=1), _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c = _C(768, 128), _C(768, 160)
        self.Mixed_6d, self.Mixed_6e = _C(768, 160), _C(768, 192)
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = _D(768), _E(1280, False), _E(2048, True)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def find_inception_weights() -> Path | None:
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env).expanduser()
    for name in INCEPTION_CANDIDATES:
        path = _cache_dir() / name
        if path.exists():
            return path
    return None


class InceptionFeatures(FeatureExtractor):
    name = "inception"
    input_size = (299, 299)
    channels = 3
    batch_size = 32

    def __init__(self, weights: Path | None = None, random_weights: bool = False) -> None:
        self.torchscript = False
        if random_weights:  # same architecture, untrained: exercises the code path in tests only
            torch.manual_seed(0)
            self.net, self.ident = FIDInceptionV3().eval(), "inception:random"
            return
        path = Path(weights) if weights is not None else find_inception_weights()
        if path is None or not path.exists():
            raise PlannerError(INCEPTION_HINT + (f" ({path} does not exist)" if path is not None else ""))
        self.ident = f"inception:{_file_digest(path)}"
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            with torch.device("meta"):  # no random init of 22 M parameters that are overwritten anyway
                net = FIDInceptionV3()
            state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(("fc.", "AuxLogits."))}
            missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
            if missing or unexpected:
                raise PlannerError(f"{path}: not an FID Inception-v3 state dict "
                                   f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
            self.net = net.eval()
        else:
            self.net = _load_torchscript(path)
            self.torchscript = True

    def _features(self, x):
        if self.torchscript:  # NVIDIA's module: [0, 255] input, returns pool features on request
            return self.net(x * 255, return_features=True)
        return self.net(x * 2 - 1)


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - any failure: not a usable TorchScript file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PlannerError(f"{path}: not a loadable TorchScript feature network: {first[:160]}") from None


class TorchScriptFeatures(FeatureExtractor):
    channels = 3

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise PlannerError(f"--features {path}: no such file (give inception, digits or a TorchScript file)")
        self.net = _load_torchscript(path)
        self.name = str(path)
        self.ident = f"torchscript:{_file_digest(path)}"
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


def default_features(model: str | None, channels: int | None) -> str:
    from planner.models import DEMO_MODELS

    if (model in DEMO_MODELS) or channels == 1:
        return "digits"
    return "inception"


def get_extractor(spec: str | None = None, model: str | None = None, channels: int | None = None) -> FeatureExtractor:
    """spec: "digits", "inception", a TorchScript PATH, or None for the default of (model, channels)."""
    spec = spec or default_features(model, channels)
    if spec == "digits":
        return DigitsFeatures()
    if spec == "inception":
        return InceptionFeatures()
    return TorchScriptFeatures(Path(spec))
