"""A latency cost model fitted on finished trials: skip a configuration only when it is confidently slower
than a confirmed incumbent, so trial time goes where a faster plan can still be.

* Prediction: a ridge regression of log(latency ratio) on log(steps / baseline steps) and the other
  choices (one-hot categories, raw numbers). Time is close to linear in steps, so it extrapolates to step
  counts no trial has tried instead of refusing them.
* Incumbent: the fastest feasible trial, re-timed once before anything is pruned against it (the
  Objective does that: `needs_confirmation`, `confirm`); the slower of its two timings' upper CI ends
  is the bar. One lucky timing on a loaded machine cannot prune the rest of a search.
* Rule: skip when the prediction is above MARGIN x that bar.
"""
from __future__ import annotations

import json
import math

import numpy as np
import optuna

MIN_TRIALS = 8
MARGIN = 1.5      # skip only when predicted at least 1.5x slower than the bar: the model is rough
RIDGE = 1e-2
CONFIRMED = "confirmed_ratio:"   # study user attribute prefix: trial number -> re-timed ratio (upper CI end)


class CostModel:
    def __init__(self, study, baseline_steps: int, seed: int = 0) -> None:
        self.study = study
        self.baseline_steps = baseline_steps
        self.seed = seed

    def _features(self, params: dict, names: list[str] | None = None) -> dict:
        row = {"bias": 1.0}
        for key, value in params.items():
            if key == "steps":
                row["log_steps"] = math.log(float(value) / self.baseline_steps)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
            else:
                row[f"{key}={value}"] = 1.0
        return row

    def _timed(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if "latency_ratio" in t.user_attrs and "repeat_of" not in t.user_attrs]

    def incumbent(self) -> optuna.trial.FrozenTrial | None:
        feasible = [t for t in self._timed() if t.user_attrs.get("feasible")]
        return min(feasible, key=lambda t: t.value) if feasible else None

    def needs_confirmation(self) -> optuna.trial.FrozenTrial | None:
        """The incumbent when it has not been re-timed yet and pruning against it could start."""
        best = self.incumbent()
        if best is None or len(self._timed()) < MIN_TRIALS - 1:
            return None
        return None if f"{CONFIRMED}{best.number}" in self.study.user_attrs else best

    def confirm(self, trial: optuna.trial.FrozenTrial, ratio_ci_high: float) -> None:
        self.study.set_user_attr(f"{CONFIRMED}{trial.number}", float(ratio_ci_high))

    def bar(self) -> float | None:
        best = self.incumbent()
        confirmed = None if best is None else self.study.user_attrs.get(f"{CONFIRMED}{best.number}")
        if confirmed is None:
            return None   # never prune against an unconfirmed timing
        first = best.user_attrs.get("latency_ratio_ci", [best.value, best.value])[1]
        return max(float(first), float(confirmed), float(best.value))

    def predict(self, params: dict) -> float | None:
        done = self._timed()
        if len(done) < MIN_TRIALS:
            return None
        rows = [self._features(t.params) for t in done]
        names = sorted({k for r in rows for k in r})
        x = np.array([[r.get(k, 0.0) for k in names] for r in rows])
        y = np.log([max(t.user_attrs["latency_ratio"], 1e-6) for t in done])
        coef = np.linalg.solve(x.T @ x + RIDGE * np.eye(len(names)), x.T @ y)
        row = self._features(params)
        unseen = [k for k in row if k not in names and k != "bias"]
        if any(k != "log_steps" for k in unseen):
            return None   # a choice no trial has made: nothing to predict from
        return math.exp(float(np.array([row.get(k, 0.0) for k in names]) @ coef))

    def dominated(self, params: dict) -> str | None:
        bar = self.bar()
        if bar is None:
            return None
        predicted = self.predict(params)
        if predicted is not None and predicted > MARGIN * bar:
            return f"predicted latency ratio {predicted:.3f} vs confirmed best {bar:.3f}"
        return None


def describe(params: dict) -> str:
    return json.dumps(params, sort_keys=True)
