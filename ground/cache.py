"""The one cache root: $PLANNER_CACHE, else `.planner-cache` in the current folder.

Everything the planner keeps between runs lives under it, one sub-folder per kind: `images/` (generated
baselines and features), `profiles/`, `studies/` (Optuna journals), `compiled/` (ONNX exports, TensorRT
engines), `weights/` (feature networks fetched on first use). Point several workers at one shared root
and each thing is computed once.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PLANNER_CACHE"
DEFAULT_ROOT = ".planner-cache"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_ROOT)


def cache_dir(kind: str) -> Path:
    """`<root>/<kind>` (not created here: writers create what they write into)."""
    return cache_root() / kind
