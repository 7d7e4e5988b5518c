"""Where a study lives and how it is opened: many workers, one study, resumable.

Default storage is an Optuna journal file under the project-local cache (`.planner-cache/studies/`):
no server, and several processes on one machine may share it (the journal uses file locks).
`--storage postgresql://...` (or PLANNER_STORAGE) puts the study in a database any number of
machines can join; heartbeats there let a dead worker's running trial be failed and retried.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import optuna

from planner.errors import PlannerError

HEARTBEAT_S = 30
GRACE_S = 120


def cache_root() -> Path:
    return Path(os.environ.get("PLANNER_CACHE", ".planner-cache"))


def default_study_name(model: str, fingerprint: str, measurement: dict) -> str:
    """Same model and same measurement settings -> same study, so a rerun resumes instead of mixing
    trials measured differently (another budget, N, batch or seed gets a study of its own)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(model).name if os.sep in model else model).strip("-")[:40]
    text = fingerprint + "|" + "|".join(f"{k}={measurement[k]}" for k in sorted(measurement))
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def open_storage(url: str | None, study_name: str):
    url = url or os.environ.get("PLANNER_STORAGE")
    if not url:
        path = cache_root() / "studies" / f"{study_name}.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), f"journal:{path}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        Path(url[len("journal:"):]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):])), url
    if url.startswith(("postgresql", "mysql", "sqlite")):
        try:
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=2),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {})
        except Exception as exc:  # noqa: BLE001 - driver and connection errors vary
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlannerError(f"--storage {_redact(url)}: cannot open ({first[:160]})") from None
        return storage, _redact(url)
    raise PlannerError(f"--storage {_redact(url)}: use postgresql://..., mysql://..., sqlite:///PATH or journal:PATH")


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_study(storage, study_name: str, seed: int) -> optuna.Study:
    """TPE, seeded; constraints come from `trial.set_constraint` (<= 0 is feasible) in the objective."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=6)
    return optuna.create_study(storage=storage, study_name=study_name, sampler=sampler, direction="minimize",
                               load_if_exists=True)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return study.get_trials(deepcopy=False, states=states)
