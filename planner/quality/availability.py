"""Can every clause of a budget be computed here? Asked before any work, so a search never runs for an
hour to find at the end that LPIPS has no weights."""
from __future__ import annotations

from ground.anatomy import anatomy_of
from ground.errors import PlannerError
from planner.quality.budget import Budget


def check_metrics(budget: Budget, pipe, features: str | None = None, reference: str | None = None) -> None:
    """One line (exit 2) naming the first clause that cannot be computed for `pipe`, and how to fix it."""
    metrics = budget.metrics
    if metrics & {"fid", "kid"}:
        from planner.quality.features import get_extractor

        get_extractor(features, pipe=pipe)   # raises with how to provide missing weights
        if reference is not None:
            from planner.quality.reference import load_image_folder

            load_image_folder(reference)
    if "lpips" in metrics:
        from planner.quality.paired import lpips_model

        lpips_model()
    if "acc" in metrics and anatomy_of(pipe).label_classifier() is None:
        raise PlannerError(f"budget {budget}: acc needs a classifier of the model's classes, which "
                           f"{type(pipe).__name__} does not bring; use fid, kid or a paired metric (psnr, ssim)")
    if "clip" in metrics:
        if anatomy_of(pipe).conditioning != "text":
            raise PlannerError(f"budget {budget}: clip compares images with their prompts; "
                               f"{type(pipe).__name__} takes no prompts")
        from planner.quality.clip import load_clip

        load_clip()
