"""Resolve a MODEL argument to a loaded diffusers pipeline.

MODEL is a built-in name (registered with `register_builtin`; the demo models and the tiny random-weight
architectures register themselves from planner/demo), a local diffusers folder, or a hub id (loaded only
where the user has network or a local cache). Weights load from safetensors only: never by unpickling.
A folder naming a pipeline class that is neither diffusers' own nor registered here
(`register_pipeline_class`) needs `custom_pipeline=` (`--custom-pipeline`), which goes through diffusers'
own mechanism; nothing else in a folder is ever imported.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ground.errors import PlannerError, first_line, printable
from ground.files import read_bounded

MAX_INDEX_BYTES = 1 << 20


@dataclass(frozen=True)
class Builtin:
    name: str
    description: str
    load: Callable[[torch.dtype | None], object]   # dtype -> pipeline on CPU
    pipeline: str | None = None                    # its pipeline class name, known before loading


_BUILTINS: dict[str, Builtin] = {}
_PIPELINE_CLASSES: dict[str, Callable[[], type]] = {}


def register_builtin(name: str, description: str, load: Callable[[torch.dtype | None], object],
                     pipeline: str | None = None) -> None:
    _BUILTINS[name] = Builtin(name, description, load, pipeline)


def register_pipeline_class(class_name: str, resolve: Callable[[], type]) -> None:
    """A pipeline class of this project's that a saved folder's model_index.json may name."""
    _PIPELINE_CLASSES[class_name] = resolve


def builtin_names() -> list[str]:
    return list(_BUILTINS)


def model_help() -> str:
    """The MODEL argument's help line, naming the registered built-in models."""
    names = builtin_names()
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"a built-in name ({shown}), a local diffusers folder or a hub id"


def builtin(name: str) -> Builtin | None:
    return _BUILTINS.get(name)


def is_hub_id(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~")) and not Path(model).exists()


def _quiet_loading():
    # diffusers draws a "Loading pipeline components" bar per load; a CLI should not.
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


def pipeline_class_name(path: Path) -> str:
    """The `_class_name` of a diffusers folder's model_index.json; one-line errors otherwise."""
    index = path / "model_index.json"
    try:
        data = json.loads(read_bounded(index, MAX_INDEX_BYTES, "model_index.json"))
    except ValueError as exc:
        raise PlannerError(f"{path}: model_index.json is not valid JSON ({exc})") from None
    except PlannerError as exc:
        raise PlannerError(f"{path}: not a diffusers pipeline folder ({exc})") from None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.isidentifier():
        raise PlannerError(f"{path}: model_index.json `_class_name` must name a pipeline class, got {name!r}")
    return name


def _load_folder(path: Path, custom_pipeline: str | None = None, **kwargs):
    import diffusers
    from diffusers import DiffusionPipeline

    _quiet_loading()
    class_name = pipeline_class_name(path)
    if class_name in _PIPELINE_CLASSES:
        cls = _PIPELINE_CLASSES[class_name]()
    elif hasattr(diffusers, class_name) or custom_pipeline is not None:
        cls = DiffusionPipeline
    else:
        raise PlannerError(f"{path}: pipeline class {class_name} is not part of diffusers; if the folder "
                           f"brings its own code, pass --custom-pipeline (diffusers' mechanism) to load it")
    if custom_pipeline is not None:
        kwargs["custom_pipeline"] = custom_pipeline
    try:
        return cls.from_pretrained(path, use_safetensors=True, **kwargs)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise PlannerError(f"{path}: could not load pipeline {class_name} from safetensors: {first_line(exc)}") from None


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
        raise PlannerError(f"{model_id}: cannot load from the hub or the local cache: {first_line(exc, 200)}") from None


def resolve_model(model: str) -> str:
    """What kind of MODEL this is: 'builtin', 'folder' or 'hub'; one-line error for anything else."""
    if not isinstance(model, str) or not model.strip():
        raise PlannerError("MODEL: give a built-in name, a diffusers folder or a hub id")
    if model in _BUILTINS:
        return "builtin"
    try:
        path = Path(model).expanduser()
        exists = path.exists()
    except (OSError, RuntimeError) as exc:   # a name too long for a file, a ~user that does not exist
        raise PlannerError(f"{printable(model, 80)}: not a usable model name or folder ({first_line(exc, 80)})") from None
    if exists:
        if not path.is_dir():
            raise PlannerError(f"{model}: is a file; MODEL must be a diffusers pipeline folder, a built-in "
                               f"name ({', '.join(_BUILTINS)}) or a hub id")
        return "folder"
    if is_hub_id(model):
        return "hub"
    raise PlannerError(f"{model}: no such built-in model, folder or hub id; built-in models are "
                       + ", ".join(_BUILTINS))


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype | None = None,
                  custom_pipeline: str | None = None):
    """Load MODEL (see module doc) in `dtype` (default: as stored) and move it to `device`."""
    kind = resolve_model(model)
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
    if kind == "builtin":
        pipe = _BUILTINS[model].load(dtype)
    elif kind == "folder":
        pipe = _load_folder(Path(model).expanduser(), custom_pipeline, **kwargs)
    else:
        pipe = _load_hub(model, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
