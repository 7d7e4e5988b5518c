"""One generation path for every accepted pipeline: a batch of (condition, seed) pairs in, images out.

Each sample gets its own `torch.Generator` seeded with its seed, so an image depends only on its
(condition, seed) pair, never on what else is in the batch: the basis of paired quality metrics.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from ground.anatomy import anatomy_of
from ground.errors import PlannerError

DEFAULT_PROMPTS = (
    "a photo of a cat", "a red car on a street", "a bowl of fruit", "a mountain lake at dawn",
    "a portrait of an old man", "a city skyline at night", "a small boat at sea", "a field of flowers",
)


def pipeline_family(pipe) -> str:
    """'class' (class labels), 'text' (prompts) or 'unconditional' (nothing)."""
    return anatomy_of(pipe).conditioning


def num_classes(pipe) -> int | None:
    return anatomy_of(pipe).num_classes


@dataclass(frozen=True)
class Request:
    """What to generate: one condition (class label, prompt or None) per seed."""

    conditions: tuple
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.conditions) != len(self.seeds):
            raise ValueError("conditions and seeds must have the same length")

    def __len__(self) -> int:
        return len(self.seeds)


def default_request(pipe, n: int, seed: int = 0) -> Request:
    """n pairs with consecutive seeds from `seed`; conditions cycle over classes or built-in prompts."""
    seeds = tuple(range(seed, seed + n))
    family = pipeline_family(pipe)
    if family == "class":
        k = num_classes(pipe) or 10
        conditions = tuple(s % k for s in seeds)
    elif family == "text":
        conditions = tuple(DEFAULT_PROMPTS[s % len(DEFAULT_PROMPTS)] for s in seeds)
    else:
        conditions = (None,) * n
    return Request(conditions, seeds)


def _to_tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        out = images
    else:
        arr = np.stack([np.asarray(im) for im in images]) if isinstance(images, list) else np.asarray(images)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        if arr.ndim == 3:
            arr = arr[..., None]
        out = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    return out.float().cpu().clamp(0, 1)


def native_resolution(pipe) -> int | None:
    """The image side a latent pipeline was built for, or None where it cannot be read off.

    The denoiser's `sample_size` (in latents) times the pipeline's `vae_scale_factor`; for a denoiser
    without one (Flux's transformer) the VAE's own `sample_size`. This is what the diffusers
    pipelines use by default, except FluxPipeline, which assumes 1024 pixels whatever the model.
    """
    scale = getattr(pipe, "vae_scale_factor", None)
    for name in ("transformer", "unet"):
        size = getattr(getattr(getattr(pipe, name, None), "config", None), "sample_size", None)
        if isinstance(size, int) and isinstance(scale, int):
            return size * scale
    size = getattr(getattr(getattr(pipe, "vae", None), "config", None), "sample_size", None)
    return size if isinstance(size, int) else None


def _call_kwargs(pipe, family: str, chunk_conditions: tuple, generators: list, steps: int | None,
                 guidance_scale: float | None, extra: dict) -> dict:
    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(extra)
    if "height" in params and "width" in params and "height" not in kwargs and "width" not in kwargs:
        side = native_resolution(pipe)
        if side is not None:
            kwargs["height"] = kwargs["width"] = side
            # Resolution binning (PixArt) snaps a requested size to the trained aspect-ratio bins;
            # at the native size it is a no-op for real models and fails for non-standard ones.
            if "use_resolution_binning" in params:
                kwargs.setdefault("use_resolution_binning", False)
    if "clean_caption" in params and "clean_caption" not in kwargs:
        # PixArt's caption cleaning needs bs4 and ftfy; without them the pipeline warns on every call
        # and skips it anyway, so skip it quietly.
        import importlib.util

        if importlib.util.find_spec("bs4") is None or importlib.util.find_spec("ftfy") is None:
            kwargs["clean_caption"] = False
    kwargs["generator"] = generators
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if guidance_scale is not None and "guidance_scale" in params:
        kwargs["guidance_scale"] = guidance_scale
    if family == "class":
        kwargs["class_labels"] = list(chunk_conditions)
    elif family == "text":
        kwargs["prompt"] = list(chunk_conditions)
    elif "batch_size" in params:
        kwargs["batch_size"] = len(generators)
    kwargs["output_type"] = "np" if "output_type" in params else kwargs.get("output_type")
    return {k: v for k, v in kwargs.items() if v is not None}


@torch.no_grad()
def generate(pipe, request: Request, steps: int | None = None, guidance_scale: float | None = None,
             batch_size: int = 64, **extra) -> torch.Tensor:
    """Images in [0, 1] as a float tensor (N, C, H, W), one per (condition, seed) pair, on CPU."""
    family = pipeline_family(pipe)
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", torch.device("cpu"))
    outputs = []
    for start in range(0, len(request), batch_size):
        seeds = request.seeds[start:start + batch_size]
        conditions = request.conditions[start:start + batch_size]
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        kwargs = _call_kwargs(pipe, family, conditions, generators, steps, guidance_scale, extra)
        try:
            result = pipe(**kwargs)
        except TypeError as exc:
            raise PlannerError(f"{type(pipe).__name__}: generation call rejected its arguments: {exc}") from None
        images = result.images if hasattr(result, "images") else result[0]
        outputs.append(_to_tensor(images))
    return torch.cat(outputs)


def save_grid(images: torch.Tensor, path, columns: int | None = None) -> None:
    """Write images (N, C, H, W) in [0, 1] as one PNG grid, scaled up so small images stay visible."""
    from PIL import Image

    n, c, h, w = images.shape
    columns = columns or min(n, 10)
    rows = (n + columns - 1) // columns
    grid = torch.ones(c, rows * (h + 2) + 2, columns * (w + 2) + 2)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[:, 2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = image
    arr = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    picture = Image.fromarray(arr[..., 0] if c == 1 else arr[..., :3])
    scale = max(1, 256 // max(h, w))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    from ground.files import atomic_path

    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")
