"""Pipelines for backend tests: the shipped demo models (a missing weight file fails, there is no
random-weight stand-in) and the tiny diffusers pipelines."""
from __future__ import annotations

from helpers import psnr, rel_err  # noqa: F401  (re-exported for the backend tests)


def demo_pipeline(name: str):
    """The shipped, trained demo model `name` (digits-unet, digits-dit). Loading fails with a one-line
    error naming the missing folder if its weights are not there."""
    from planner.models import load_pipeline

    return load_pipeline(name)
