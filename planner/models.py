"""Resolve a MODEL argument to a loaded diffusers pipeline, and fingerprint pipelines.

MODEL is a built-in name (`digits-unet`, `digits-dit`, or a tiny random-weight architecture such as
`tiny-sd`), a local diffusers folder, or a hub id (used only where the user has network or a cache).
Weights load from safetensors only: never by unpickling.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from planner.errors import PlannerError

WEIGHTS_DIR = Path(__file__).parent / "demo" / "weights"
DEMO_MODELS = {"digits-unet": "DigitsUNetPipeline", "digits-dit": "DigitsDiTPipeline"}


def _own_pipeline_classes() -> dict:
    from planner.demo.pipeline import DigitsDiTPipeline, DigitsUNetPipeline

    return {"DigitsUNetPipeline": DigitsUNetPipeline, "DigitsDiTPipeline": DigitsDiTPipeline}


def builtin_names() -> list[str]:
    from planner.demo.tiny_pipelines import TINY_FAMILIES

    return list(DEMO_MODELS) + [f"tiny-{f}" for f in TINY_FAMILIES]


def _quiet_loading():
    # diffusers draws a "Loading pipeline components" bar per load; a CLI that loads twice should not.
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


def _load_folder(path: Path, **kwargs):
    from diffusers import DiffusionPipeline

    _quiet_loading()

    index = path / "model_index.json"
    try:
        class_name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as exc:
        raise PlannerError(f"{path}: not a diffusers pipeline folder (model_index.json unreadable: {exc})") from None
    cls = _own_pipeline_classes().get(class_name, DiffusionPipeline)
    try:
        return cls.from_pretrained(path, use_safetensors=True, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(f"{path}: could not load pipeline {class_name} from safetensors: {first}") from None


def _load_hub(model_id: str, **kwargs):
    from diffusers import DiffusionPipeline

    _quiet_loading()
    # Try the local cache first so an offline machine fails in milliseconds, not after retries.
    try:
        return DiffusionPipeline.from_pretrained(model_id, use_safetensors=True, local_files_only=True, **kwargs)
    except Exception as cached_exc:  # noqa: BLE001 - any failure here means "not cached"
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise PlannerError(f"{model_id}: not in the local cache and HF_HUB_OFFLINE is set "
                               f"({type(cached_exc).__name__})") from None
    try:
        return DiffusionPipeline.from_pretrained(model_id, use_safetensors=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types; the user needs one line
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PlannerError(f"{model_id}: cannot load from the hub or the local cache: {cause[:200]}") from None


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype | None = None):
    """Load MODEL (see module doc) and move it to `device`."""
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    if model in DEMO_MODELS:
        path = WEIGHTS_DIR / model
        if not (path / "model_index.json").exists():
            raise PlannerError(f"{model}: shipped weights missing at {path}; reinstall the package "
                               f"or retrain with `python -m planner.demo.train {model.split('-')[1]}`")
        pipe = _load_folder(path, **kwargs)
    elif model.startswith("tiny-"):
        from planner.demo.tiny_pipelines import TINY_FAMILIES, build_tiny_pipeline

        family = model[len("tiny-"):]
        if family not in TINY_FAMILIES:
            raise PlannerError(f"{model}: unknown tiny architecture; choose one of "
                               + ", ".join(f"tiny-{f}" for f in TINY_FAMILIES))
        pipe = build_tiny_pipeline(family)
        if dtype is not None:
            pipe.to(dtype=dtype)
    elif Path(model).exists():
        if not Path(model).is_dir():
            raise PlannerError(f"{model}: is a file; MODEL must be a diffusers pipeline folder, "
                               f"a built-in name ({', '.join(DEMO_MODELS)}) or a hub id")
        pipe = _load_folder(Path(model), **kwargs)
    elif model.count("/") == 1 and not model.startswith((".", "/")):
        pipe = _load_hub(model, **kwargs)
    else:
        raise PlannerError(f"{model}: no such built-in model, folder or hub id; built-in models are "
                           + ", ".join(DEMO_MODELS))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def denoiser_of(pipe) -> torch.nn.Module:
    """The network called once per step: `transformer` where a pipeline has one, else `unet`."""
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise PlannerError(f"{type(pipe).__name__}: no `transformer` or `unet` component to accelerate")


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 over a module's config and every parameter and buffer (names, shapes, dtypes, bytes)."""
    digest = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        # Private keys (`_name_or_path`, `_diffusers_version`, ...) say where and by what the model was
        # loaded, not what it is: the same weights must fingerprint the same from any folder.
        public = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
        digest.update(json.dumps(public, sort_keys=True, default=str).encode())
    digest.update(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()[:16]
