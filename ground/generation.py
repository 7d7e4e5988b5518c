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
    """What to generate: one condition (class label, prompt or None) per seed, and optionally per row a
    negative prompt and an image size (height, width)."""

    conditions: tuple
    seeds: tuple[int, ...]
    negative_prompts: tuple | None = None
    sizes: tuple | None = None

    def __post_init__(self) -> None:
        n = len(self.seeds)
        if len(self.conditions) != n:
            raise ValueError("conditions and seeds must have the same length")
        for name in ("negative_prompts", "sizes"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name} must have one entry per seed")

    def __len__(self) -> int:
        return len(self.seeds)

    def rows(self, start: int = 0, stop: int | None = None) -> "Request":
        """The rows start..stop (a prefix, a chunk): the same pairs, so images pair up with the whole's."""
        cut = slice(start, stop)
        return Request(self.conditions[cut], self.seeds[cut],
                       None if self.negative_prompts is None else self.negative_prompts[cut],
                       None if self.sizes is None else self.sizes[cut])

    def runs(self, batch_size: int):
        """Consecutive chunks of at most `batch_size` rows with one image size each (one pipeline call)."""
        start, n = 0, len(self)
        while start < n:
            stop = min(start + batch_size, n)
            if self.sizes is not None:
                end = start + 1
                while end < stop and self.sizes[end] == self.sizes[start]:
                    end += 1
                stop = end
            yield self.rows(start, stop)
            start = stop


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


def _call_kwargs(pipe, family: str, chunk: Request, generators: list, steps: int | None,
                 guidance_scale: float | None, extra: dict) -> dict:
    params = inspect.signature(pipe.__call__).parameters
    kwargs = dict(extra)
    if chunk.sizes is not None and chunk.sizes[0] is not None:
        kwargs["height"], kwargs["width"] = chunk.sizes[0]
    if chunk.negative_prompts is not None and any(p is not None for p in chunk.negative_prompts) \
            and "negative_prompt" in params:
        kwargs["negative_prompt"] = [p or "" for p in chunk.negative_prompts]
    if "height" in params and "width" in params and "height" not in kwargs and "width" not in kwargs:
        side = native_resolution(pipe)
        if side is not None:
            kwargs["height"] = kwargs["width"] = side
    if "height" in kwargs and "use_resolution_binning" in params:
        # Resolution binning (PixArt) snaps a requested size to the trained aspect-ratio bins; a size
        # asked for is the size wanted (and binning fails for non-standard models).
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
        kwargs["class_labels"] = list(chunk.conditions)
    elif family == "text":
        kwargs["prompt"] = list(chunk.conditions)
    elif "batch_size" in params:
        kwargs["batch_size"] = len(generators)
    kwargs["output_type"] = "np" if "output_type" in params else kwargs.get("output_type")
    return {k: v for k, v in kwargs.items() if v is not None}


@torch.no_grad()
def generate(pipe, request: Request, steps: int | None = None, guidance_scale: float | None = None,
             batch_size: int = 64, **extra) -> torch.Tensor:
    """Images in [0, 1] as a float tensor (N, C, H, W), one per (condition, seed) pair, on CPU."""
    if len(request) == 0:
        raise PlannerError("nothing to generate: the request has no (condition, seed) pairs")
    family = pipeline_family(pipe)
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", torch.device("cpu"))
    outputs = []
    for chunk in request.runs(batch_size):
        generators = [torch.Generator(device=device).manual_seed(int(s)) for s in chunk.seeds]
        kwargs = _call_kwargs(pipe, family, chunk, generators, steps, guidance_scale, extra)
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
