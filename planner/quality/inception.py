"""The FID Inception-v3 (2048-d pool features, 299x299 RGB input), defined here so nothing is unpickled.

Its weights are not shipped. They are looked up at $PLANNER_INCEPTION_WEIGHTS, else in the cache root's
`weights/` folder (ground.cache), as pytorch-fid's state dict saved with safetensors
(`pt_inception-2015-12-05.safetensors`) or NVIDIA's TorchScript `inception-2015-12-05.pt`.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ground.cache import cache_dir
from ground.errors import PlannerError
from planner.quality.features import FeatureExtractor, file_digest, load_torchscript

INCEPTION_ENV = "PLANNER_INCEPTION_WEIGHTS"
INCEPTION_CANDIDATES = ("pt_inception-2015-12-05.safetensors", "inception-2015-12-05.pt")
INCEPTION_HINT = (f"FID Inception weights not found: set ${INCEPTION_ENV} to pt_inception-2015-12-05.safetensors "
                  "(pytorch-fid's state dict re-saved with safetensors.torch.save_file) or to NVIDIA's "
                  "TorchScript inception-2015-12-05.pt, or put either file in the cache's weights/ folder; "
                  "or use --features NAME|PATH")


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


def find_inception_weights() -> Path:
    """$PLANNER_INCEPTION_WEIGHTS, else a copy in the cache's weights/ folder, else fetched there (pinned
    sha256; one line saying where to put the file when offline)."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        return Path(env).expanduser()
    for name in INCEPTION_CANDIDATES:
        path = cache_dir("weights") / name
        if path.exists():
            return path
    from planner.quality.weights import INCEPTION, fetch

    return fetch(INCEPTION)


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
        if not path.exists():
            raise PlannerError(INCEPTION_HINT + f" ({path} does not exist)")
        self.ident = f"inception:{file_digest(path)}"
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
            self.net = load_torchscript(path)
            self.torchscript = True

    def _features(self, x):
        if self.torchscript:  # NVIDIA's module: [0, 255] input, returns pool features on request
            return self.net(x * 255, return_features=True)
        return self.net(x * 2 - 1)
