"""A latency cost model (scikit-learn) fitted on finished trials, with the profile's step cost as a prior.

Its one job: skip configurations it confidently predicts to be slower than the best feasible plan
found so far (dominated), so trial time goes where a faster plan can still be.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.feature_extraction import DictVectorizer

MIN_TRIALS = 8
MARGIN = 1.5  # skip only when predicted at least 1.5x slower than the best feasible: the model is rough


class CostModel:
    def __init__(self, study, baseline_steps: int, seed: int = 0) -> None:
        self.study = study
        self.baseline_steps = baseline_steps
        self.seed = seed

    def _features(self, params: dict) -> dict:
        row = {}
        for key, value in params.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
            else:
                row[f"{key}={value}"] = 1.0
        if "steps" in params:  # prior from the profile: per-step cost is near-uniform, so time ~ steps
            row["step_fraction"] = float(params["steps"]) / self.baseline_steps
        return row

    def dominated(self, params: dict) -> str | None:
        done = [t for t in self.study.get_trials(deepcopy=False) if "latency_ratio" in t.user_attrs]
        feasible = [t.user_attrs["latency_ratio"] for t in done if t.user_attrs.get("feasible")]
        if len(done) < MIN_TRIALS or not feasible:
            return None
        vec = DictVectorizer(sparse=False)
        x = vec.fit_transform([self._features(t.params) for t in done])
        y = np.log([max(t.user_attrs["latency_ratio"], 1e-6) for t in done])
        model = RandomForestRegressor(n_estimators=50, min_samples_leaf=2, random_state=self.seed).fit(x, y)
        predicted = math.exp(float(model.predict(vec.transform([self._features(params)]))[0]))
        best = min(feasible)
        if predicted > MARGIN * best:
            return f"predicted latency ratio {predicted:.2f} vs best feasible {best:.2f}"
        return None
