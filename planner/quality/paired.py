"""Paired image metrics of a candidate against its baseline (same conditions and seeds, same order).

PSNR is pooled over the set: 10*log10(1 / mean squared error over all pixels of all images), so a set
identical to its baseline scores +inf and one bad image cannot hide behind an infinite one.
SSIM is scikit-image's `structural_similarity` per image (data_range 1), averaged.
LPIPS needs network weights that are not shipped: it is available only through a TorchScript module
at $PLANNER_LPIPS_WEIGHTS mapping two (N, 3, H, W) batches in [-1, 1] to (N,) distances.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ground.errors import PlannerError
from planner.quality.bootstrap import DEFAULT_BOOT, DEFAULT_SEED, MetricResult, bootstrap, mean_metric

LPIPS_ENV = "PLANNER_LPIPS_WEIGHTS"


class MetricUnavailable(PlannerError):
    """A metric that cannot be computed in this environment (e.g. its weights are not installed)."""


def _check_pair(candidate: torch.Tensor, baseline: torch.Tensor) -> None:
    if candidate.shape != baseline.shape:
        raise PlannerError(f"paired metrics need candidate and baseline of one shape; got "
                           f"{tuple(candidate.shape)} and {tuple(baseline.shape)}")


def per_image_mse(candidate: torch.Tensor, baseline: torch.Tensor) -> np.ndarray:
    _check_pair(candidate, baseline)
    diff = candidate.double() - baseline.double()
    return diff.pow(2).flatten(1).mean(1).numpy()


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse <= 0 else 10 * math.log10(1.0 / mse)


def psnr(candidate: torch.Tensor, baseline: torch.Tensor, n_boot: int = DEFAULT_BOOT,
         seed: int = DEFAULT_SEED) -> MetricResult:
    mse = per_image_mse(candidate, baseline)
    return bootstrap("psnr", lambda w: _psnr_from_mse(float(w @ mse / w.sum())), len(mse), n_boot, seed)


def per_image_ssim(candidate: torch.Tensor, baseline: torch.Tensor) -> np.ndarray:
    from skimage.metrics import structural_similarity

    _check_pair(candidate, baseline)
    c = candidate.detach().cpu().double().clamp(0, 1).numpy()
    b = baseline.detach().cpu().double().clamp(0, 1).numpy()
    h, w = c.shape[-2:]
    win = min(7, h if h % 2 else h - 1, w if w % 2 else w - 1)
    out = np.empty(len(c))
    for i in range(len(c)):
        if c.shape[1] == 1:
            out[i] = structural_similarity(c[i, 0], b[i, 0], data_range=1.0, win_size=win)
        else:
            out[i] = structural_similarity(c[i], b[i], data_range=1.0, channel_axis=0, win_size=win)
    return out


def ssim(candidate: torch.Tensor, baseline: torch.Tensor, n_boot: int = DEFAULT_BOOT,
         seed: int = DEFAULT_SEED) -> MetricResult:
    return mean_metric("ssim", per_image_ssim(candidate, baseline), n_boot, seed)


def lpips_model():
    path = os.environ.get(LPIPS_ENV)
    if not path:
        raise MetricUnavailable(f"lpips unavailable: its network weights are not shipped; set ${LPIPS_ENV} to a "
                                "TorchScript LPIPS module (two [-1, 1] batches -> distances), or use psnr/ssim")
    if not Path(path).is_file():
        raise MetricUnavailable(f"lpips unavailable: ${LPIPS_ENV}={path} is not a file")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        raise MetricUnavailable(f"lpips unavailable: {path} is not loadable TorchScript ({type(exc).__name__})") from None


@torch.no_grad()
def per_image_lpips(candidate: torch.Tensor, baseline: torch.Tensor, model=None) -> np.ndarray:
    _check_pair(candidate, baseline)
    model = model or lpips_model()
    c, b = candidate.float(), baseline.float()
    if c.shape[1] == 1:
        c, b = c.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
    out = [model(c[i:i + 64] * 2 - 1, b[i:i + 64] * 2 - 1).reshape(-1) for i in range(0, len(c), 64)]
    return torch.cat(out).double().numpy()


def lpips(candidate: torch.Tensor, baseline: torch.Tensor, n_boot: int = DEFAULT_BOOT,
          seed: int = DEFAULT_SEED) -> MetricResult:
    return mean_metric("lpips", per_image_lpips(candidate, baseline), n_boot, seed)
