"""Step back after failed verifications: the same configuration with more steps, measured and verified.

A candidate fails its verification when the search's seeds flattered it. Its siblings at the same step
count usually fail for the same reason, while the same configuration a few steps up usually holds:
quality is close to monotone in the steps (what the step frontier relies on too). So when every
verified candidate failed, each failed configuration is retried at the next step choice up (a trial of
the study like any other, then its verification), and a retry that fails again steps up once more,
fastest first, until one holds, the steps reach the baseline's, or `STEP_BACKS` verifications are spent.
"""
from __future__ import annotations

import json

import optuna

from planner.search.study import counted
from planner.search.verify import Attempt, verify_fastest
from search_spaces.compose import within_space
from backends.sampler import KEEP
from search_spaces.sampler import step_choices

STEP_BACKS = 5          # verifications a step back may spend, after the first MAX_VERIFICATIONS
STEP_BACK_ATTR = "step_back_of"


def more_steps(params: dict, baseline_steps: int) -> dict | None:
    """`params` at the next step choice up; None at the top, or at the baseline's own scheduler and steps."""
    choices = step_choices(baseline_steps)
    steps = params.get("steps")
    if steps not in choices or choices.index(steps) + 1 >= len(choices):
        return None
    up = choices[choices.index(steps) + 1]
    if params.get("sampler") == KEEP and up == baseline_steps:
        return None   # the baseline's own schedule: what is left to gain is not a step back
    return dict(params, steps=up)


def _run(session, params: dict, of: int, log) -> optuna.trial.FrozenTrial | None:
    """Measure `params` as one trial of the study (its cost-model pruning skipped: the incumbent failed)."""
    from planner.search.workers import run_trials

    study = session.study
    tag = f"{of}:{json.dumps(params, sort_keys=True)}"
    study.enqueue_trial(params, user_attrs={STEP_BACK_ATTR: tag})
    run_trials(study, session.objective, counted(study) + 1, None, log=log)
    for t in reversed(study.get_trials(deepcopy=False)):
        if t.user_attrs.get(STEP_BACK_ATTR) == tag and t.state.is_finished():
            return t
    return None


def step_back(session, failed: list[Attempt], log, seen: set) -> list[Attempt]:
    """Retry the `failed` candidates (fastest first) at more steps; the attempts made, the last one the
    plan's when it holds."""
    settings = session.settings
    queue = [(a.trial.number, dict(a.trial.params)) for a in failed if a.evaluation is not None]
    tried: set[str] = set()
    attempts: list[Attempt] = []
    while queue and len(attempts) < STEP_BACKS:
        of, params = queue.pop(0)
        up = more_steps(params, settings.baseline_steps)
        if up is None or json.dumps(up, sort_keys=True) in tried or not within_space(up, settings.space):
            continue
        tried.add(json.dumps(up, sort_keys=True))
        log(f"[planner] stepping back: trial {of} at {up['steps']} steps ...")
        trial = _run(session, up, of, log)
        if trial is None or trial.state != optuna.trial.TrialState.COMPLETE or not trial.user_attrs.get("feasible"):
            queue.insert(0, (of, up))          # not even the search's seeds hold it: one more step up
            continue
        made = verify_fastest(session.ctx, session.objective, [trial], log, limit=1, seen=seen)
        attempts += made
        if made and made[-1].verified is not None:
            break
        queue.insert(0, (trial.number, up))
    return attempts
