"""Where a study lives and how workers share it: many workers, one study, resumable.

Default storage is an Optuna journal file under the project-local cache (`.planner-cache/studies/`):
no server, and several processes on one machine may share it (the journal uses file locks).
`--storage postgresql://...` (or PLANNER_STORAGE) puts the study in a database any number of
machines can join; heartbeats there let a dead worker's running trial be failed and retried.

Which trials count towards `--trials` (across all workers): those that produced a result or failed on
their own (COMPLETE, PRUNED, FAIL with an `error` attribute) and those still RUNNING; not a configuration
proposed again, which gets its earlier measurement for free. A trial that failed
because its worker was interrupted or died is re-run instead: by the heartbeat's retry on a database,
or, on the journal, by the next worker started on the same machine (`reclaim_dead_trials`).
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import warnings
from pathlib import Path

import optuna

from ground.cache import cache_dir
from ground.errors import PlannerError, printable

HEARTBEAT_S = 30   # a RUNNING trial records a heartbeat this often (database storage only)
GRACE_S = 120      # ... and is failed (then retried once) when none came for this long
OVER_CAP = "over the --trials cap"
TrialState = optuna.trial.TrialState


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds; PLANNER_HEARTBEAT_S / PLANNER_GRACE_S override (tests use ~1-3 s)."""
    try:
        beat = int(os.environ.get("PLANNER_HEARTBEAT_S", HEARTBEAT_S))
        grace = int(os.environ.get("PLANNER_GRACE_S", GRACE_S if beat == HEARTBEAT_S else 3 * beat))
    except ValueError:
        raise PlannerError("PLANNER_HEARTBEAT_S / PLANNER_GRACE_S: must be whole seconds") from None
    if beat < 1 or grace <= beat:
        raise PlannerError("PLANNER_HEARTBEAT_S / PLANNER_GRACE_S: need 1 <= heartbeat < grace")
    return beat, grace


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def default_study_name(model: str, fingerprint: str, measurement: dict) -> str:
    """Same model and same measurement settings -> same study, so a rerun resumes instead of mixing
    trials measured differently (another budget, N, batch or seed gets a study of its own)."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(model).name if os.sep in model else model).strip("-")[:40]
    text = fingerprint + "|" + "|".join(f"{k}={measurement[k]}" for k in sorted(measurement))
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


def check_study_name(study_name: str) -> str:
    """A study name is a file name in the cache's studies/ folder: letters, digits, '.', '_', '-'."""
    if not STUDY_NAME.match(study_name or "") or ".." in study_name:
        raise PlannerError(f"--study-name {printable(study_name, 60)!r}: use 1-120 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return study_name


def journal_path(study_name: str) -> Path:
    return cache_dir("studies") / f"{check_study_name(study_name)}.journal"


def open_storage(url: str | None, study_name: str):
    url = url or os.environ.get("PLANNER_STORAGE")
    if not url:
        path = journal_path(study_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path))), f"journal:{path}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):]
        try:
            if not path or Path(path).is_dir():
                raise IsADirectoryError(21, "give a journal file, not a folder")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(path)), url
        except OSError as exc:
            raise PlannerError(f"--storage {printable(url, 120)}: cannot open ({exc.strerror or type(exc).__name__})") from None
    if url.startswith(("postgres", "mysql", "sqlite")):
        return _rdb_storage(database_url(url), shown=_redact(url)), _redact(url)
    raise PlannerError(f"--storage {_redact(url)}: use postgresql://..., mysql://..., sqlite:///PATH or journal:PATH")


def database_url(url: str) -> str:
    """A plain postgresql:// URL names no driver; SQLAlchemy 2.1 then wants psycopg 3. Use psycopg2 (the
    `postgres` extra) when that is what is installed."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2{sep}{rest}"
    return f"postgresql{sep}{rest}"


def _rdb_storage(url: str, shown: str, attempts: int = 4):
    beat, grace = heartbeat_settings()
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=beat, grace_period=grace,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
                    engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else {})
        except Exception as exc:  # noqa: BLE001 - driver and connection errors vary
            # Workers starting together on an empty database race to create Optuna's tables
            # (PostgreSQL: duplicate key in pg_type); the loser's retry finds them made.
            if attempt + 1 < attempts and type(exc).__name__ in ("IntegrityError", "ProgrammingError"):
                time.sleep(1.0 + attempt)
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlannerError(f"--storage {shown}: cannot open ({first[:160]})") from None


def _redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _sampler(seed: int) -> optuna.samplers.TPESampler:
    # constant_liar (Optuna's default) keeps parallel workers away from configurations still running.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=6,
                                          constant_liar=True)


def join_study(storage, study_name: str, seed: int) -> tuple[optuna.Study, bool]:
    """Create the study, or join it when it exists; returns (study, created).

    TPE, seeded; constraints come from `trial.set_constraint` (<= 0 is feasible) in the objective. The
    worker that creates the study samples with `seed`; a joining worker mixes in its host, pid and
    time, or every worker would draw the same startup configurations. Measurement seeds are unchanged.
    """
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, sampler=_sampler(seed),
                                    direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        mixed = int(hashlib.sha256(f"{seed}|{worker_id()}|{time.time_ns()}".encode()).hexdigest()[:8], 16)
        return optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler(mixed)), False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["latency_ratio"])  # optuna-dashboard shows a named objective
    return study, True


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return study.get_trials(deepcopy=False, states=states)


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Does this trial count towards --trials? (See the module docstring.) A configuration proposed
    again is given its earlier measurement and costs nothing: it does not count."""
    if "repeat_of" in trial.user_attrs:
        return False
    if trial.state == TrialState.PRUNED:
        return trial.user_attrs.get("pruned_by") != OVER_CAP
    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    return trial.state in (TrialState.COMPLETE, TrialState.RUNNING)


def counted(study: optuna.Study, below: int | None = None) -> int:
    """Trials counting towards the cap (only those numbered below `below`, if given)."""
    return sum(counts(t) for t in study.get_trials(deepcopy=False) if below is None or t.number < below)


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


class RepeatGuard:
    """Stops this worker's loop when its last `limit` trials were all configurations measured before:
    the sampler has nothing new to propose in a space this small."""

    def __init__(self, limit: int = 12) -> None:
        self.limit, self.run = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.run = self.run + 1 if "repeat_of" in trial.user_attrs else 0
        if self.run >= self.limit:
            study.stop()


class TrialCap:
    """Stops this worker's loop once the study holds `total` counted trials (all workers together)."""

    def __init__(self, total: int) -> None:
        self.total = total

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if counted(study) >= self.total:
            study.stop()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a trial recorded under our pid before we started is a dead predecessor's
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_dead_trials(study: optuna.Study, heartbeat: bool) -> list[int]:
    """Queue once more every trial that failed without an error of its own (interrupted, or its worker
    died) and was not retried yet; returns the re-queued numbers. Without a heartbeat (journal storage)
    RUNNING trials of dead workers on this machine are failed first: nothing else would ever end them."""
    host = socket.gethostname()
    for t in [] if heartbeat else running(study):
        owner, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if owner == host and pid.isdigit() and not _alive(int(pid)):
            try:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except (ValueError, RuntimeError):
                continue  # another worker got there first
    trials = study.get_trials(deepcopy=False)
    retried = set()
    for t in trials:
        retried.update(t.system_attrs.get("retry_history", []))
        if "retry_of" in t.user_attrs:
            retried.add(t.user_attrs["retry_of"])
    queued = []
    for t in trials:
        is_retry = "retry_of" in t.user_attrs or "failed_trial" in t.system_attrs
        if (t.state == TrialState.FAIL and "error" not in t.user_attrs and t.params
                and t.number not in retried and not is_retry):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            queued.append(t.number)
    return queued
