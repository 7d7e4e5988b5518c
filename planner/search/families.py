"""Which technique families a search tries, and which it leaves out because they cannot help.

Step cuts and caching take what a long schedule repeats. A model distilled to a few steps (LCM, TCD,
Turbo, Lightning, FLUX-schnell), or a baseline of `FEW_STEPS` steps or fewer, has nothing of that to
give, and neither has a model whose blocks change a lot from every step to the next (the profile says
so). Those families are left out with a one-line reason, in the log and in the report, and the search
spends its trials on what is left (precision, tokens, compilation); the plan then keeps the baseline's
own scheduler and steps.
"""
from __future__ import annotations

import numpy as np

from backends.sampler import SamplerConfig
from ground.anatomy import anatomy_of
from ground.errors import PlannerError
from search_spaces.compose import DEFAULT_FAMILIES, FAMILIES

FEW_STEPS = 8
NO_REDUNDANCY = 0.3   # median step-to-step change of the blocks' residuals above this: nothing to reuse


def requested_families(requested: tuple[str, ...]) -> list[str]:
    names = list(requested) or list(DEFAULT_FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise PlannerError(f"--techniques: unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    if "sampler" not in names:
        names.insert(0, "sampler")  # the plan always pins sampler and steps: schedules are indexed by step
    return [n for n in FAMILIES if n in names]


def median_change(profile) -> float | None:
    """Median step-to-step rel-L1 change of the main blocks' residuals (None without measurements)."""
    try:
        change = profile.redundancy("residual_rel_l1")[profile.main_blocks & profile.shapes_match, 1:]
    except (KeyError, ValueError, IndexError):
        return None
    change = change[np.isfinite(change)]
    return float(np.median(change)) if change.size else None


def cannot_help(pipe, baseline_steps: int, profile_at_baseline=None) -> str | None:
    """Why step cuts and caching cannot help this model, or None."""
    distilled = anatomy_of(pipe).distilled()
    if distilled:
        return f"the model is distilled to few steps ({distilled})"
    if baseline_steps <= FEW_STEPS:
        return f"the baseline runs only {baseline_steps} steps"
    if profile_at_baseline is not None:
        change = median_change(profile_at_baseline)
        if change is not None and change > NO_REDUNDANCY:
            return (f"the profile shows no redundancy to reuse (blocks change {change:.0%} from step to step "
                    f"at the median)")
    return None


def keep_baseline_sampler(baseline_steps: int) -> SamplerConfig:
    """What a plan pins when step cuts are left out: the pipeline's own scheduler at the baseline's steps."""
    return SamplerConfig(name="keep", steps=baseline_steps)
