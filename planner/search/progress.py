"""A progress bar for the study: trials done, best feasible speed-up so far, time left."""
from __future__ import annotations

import sys
import time

import optuna
from tqdm import tqdm

from planner.search.study import counts


class ProgressBar:
    def __init__(self, study: optuna.Study, total: int, timeout: float | None) -> None:
        self.study, self.total, self.timeout = study, total, timeout
        self.start = time.time()
        self.bar = None

    def __enter__(self):
        self.done = self._done()  # tqdm does not count when disabled (logs, CI)
        # A live bar on a terminal; one line per trial in logs and CI (tqdm's \r updates read badly there).
        self.bar = tqdm(total=self.total, initial=self.done, desc="trials", unit="trial",
                        file=sys.stderr, dynamic_ncols=True, disable=not sys.stderr.isatty())
        self._postfix()
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def _done(self) -> int:
        """Trials of the whole study (all workers) that count towards the total and have finished."""
        return min(self.total, sum(counts(t) and t.state.is_finished() for t in self.study.get_trials(deepcopy=False)))

    def _postfix(self) -> None:
        feasible = [t.user_attrs["speedup"] for t in self.study.get_trials(deepcopy=False)
                    if t.user_attrs.get("feasible") and "speedup" in t.user_attrs]
        self.best = f"{max(feasible):.2f}x" if feasible else "-"
        postfix = {"best feasible": self.best}
        if self.timeout:
            postfix["left"] = f"{max(0, self.timeout - (time.time() - self.start)):.0f}s"
        self.bar.set_postfix(postfix)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = self._done()
        self.bar.update(max(0, done - self.done))
        self.done = done
        self._postfix()
        if self.bar.disable:
            attrs = trial.user_attrs
            if "speedup" in attrs:
                outcome = f"{attrs['speedup']:.2f}x, {'feasible' if attrs.get('feasible') else 'infeasible'}"
            else:
                outcome = trial.state.name.lower() + (f" ({attrs['pruned_by']})" if "pruned_by" in attrs else "")
            print(f"[planner] trial {trial.number} ({self.done}/{self.total}): {attrs.get('label', '')}: {outcome}; "
                  f"best feasible so far {self.best}", file=sys.stderr, flush=True)
