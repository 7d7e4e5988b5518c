"""Token reduction: none, ToMe-style merging (ratio, levels) or ToDo-style key/value downsampling.

Parameter names are fixed (`tokens.method`, `tome.ratio`, ...); the choices of `tokens.method` are the
methods that apply to the study's model.
"""
from __future__ import annotations

from backends.technique import why_not_applicable
from backends.tokens import ToDoConfig, ToMeConfig
from ground.anatomy import anatomy_of


def token_methods(pipe) -> list[str]:
    """The token techniques that can act on `pipe` ("tome" needs BasicTransformerBlocks)."""
    return [name for name, cls in (("tome", ToMeConfig), ("todo", ToDoConfig)) if why_not_applicable(pipe, cls) is None]


def suggest_tokens(trial, profile, pipe) -> ToMeConfig | ToDoConfig | None:
    methods = token_methods(pipe)
    if not methods:
        return None
    method = trial.suggest_categorical("tokens.method", ["none", *methods])
    if method == "none":
        return None
    is_unet = anatomy_of(pipe).is_unet
    if method == "tome":
        ratio = trial.suggest_float("tome.ratio", 0.1, 0.7, step=0.1)
        levels = trial.suggest_categorical("tome.max_downsample", [1, 2]) if is_unet else 1
        return ToMeConfig(ratio=round(ratio, 2), max_downsample=levels)
    factor = trial.suggest_categorical("todo.factor", [2, 4])
    # small UNets often keep attention only below full resolution: allow the coarser levels there
    levels = trial.suggest_categorical("todo.max_downsample", [1, 2, 4]) if is_unet else 1
    return ToDoConfig(factor=factor, max_downsample=levels)
