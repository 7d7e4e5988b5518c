"""Token reduction: none, ToMe-style merging (ratio, levels) or ToDo-style key/value downsampling."""
from __future__ import annotations

from backends.technique import why_not_applicable
from backends.tokens import ToDoConfig, ToMeConfig


def token_methods(pipe) -> list[str]:
    """The token techniques that can act on `pipe` ("tome" needs BasicTransformerBlocks)."""
    return [name for name, cls in (("tome", ToMeConfig), ("todo", ToDoConfig)) if why_not_applicable(pipe, cls) is None]


def suggest_tokens(trial, profile, pipe) -> ToMeConfig | ToDoConfig | None:
    methods = token_methods(pipe)
    if not methods:
        return None
    # one parameter name per set of choices: Optuna requires a fixed distribution per name
    method = trial.suggest_categorical("tokens_" + "_".join(methods), ["none", *methods])
    if method == "none":
        return None
    from planner.models import denoiser_of

    is_unet = hasattr(denoiser_of(pipe), "down_blocks")
    if method == "tome":
        ratio = trial.suggest_float("tome_ratio", 0.1, 0.7, step=0.1)
        levels = trial.suggest_categorical("tome_max_downsample", [1, 2]) if is_unet else 1
        return ToMeConfig(ratio=round(ratio, 2), max_downsample=levels)
    factor = trial.suggest_categorical("todo_factor", [2, 4])
    # digits-unet style UNets keep attention only below full resolution: allow the coarser levels there
    levels = trial.suggest_categorical("todo_max_downsample", [1, 2, 4]) if is_unet else 1
    return ToDoConfig(factor=factor, max_downsample=levels)
