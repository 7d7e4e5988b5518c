"""One worker's trial loop on a shared study: run trials until the study holds `--trials` of them.

Several workers (processes, machines) may run this loop on one study at once. The cap is checked after
every trial (`TrialCap`) and again when a trial starts (two workers may start their last trial at the
same moment: the later one is pruned as OVER_CAP, which does not count). After the loop, stale trials
of dead workers are failed (database storage, heartbeat) and their queued retries are run here.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
import warnings

import optuna

from ground.errors import first_line
from planner.search.progress import ProgressBar
from planner.search.study import OVER_CAP, RepeatGuard, TrialCap, counted, reclaim_dead_trials, worker_id


# Set by Ctrl-C during the loop. A KeyboardInterrupt raised inside a storage call (the journal's file
# lock, a database driver) can come out as another exception; this flag lets us still treat it as Ctrl-C.
_interrupted = threading.Event()


def worker_trial(objective, cap: int):
    """The objective as this worker runs it: records who ran the trial, enforces the cap at its start,
    and records an exception as the trial's `error` (the trial fails, the search goes on)."""
    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        if counted(trial.study, below=trial.number) >= cap:
            trial.set_user_attr("pruned_by", OVER_CAP)
            trial.study.stop()
            raise optuna.TrialPruned(OVER_CAP)
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - any technique may fail in its own way
            if _interrupted.is_set():
                raise KeyboardInterrupt from None
            trial.set_user_attr("error", f"{type(exc).__name__}: {first_line(exc)}")
            raise
    return run


def _on_sigint(signum, frame):
    _interrupted.set()
    raise KeyboardInterrupt


class _QuietInterrupt(logging.Filter):
    """Ctrl-C is not a crash: Optuna's 'trial failed' line stays, its traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


_QUIET_INTERRUPT = _QuietInterrupt()


def fail_stale(study: optuna.Study) -> None:
    """Database storage: a dead worker's trial (no heartbeat for the grace period) fails and is queued again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _waiting(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def run_trials(study: optuna.Study, objective, trials: int, timeout: float | None, heartbeat: bool = False,
               log=print) -> None:
    """`heartbeat`: the storage fails dead workers' trials itself (database storage)."""
    requeued = reclaim_dead_trials(study, heartbeat)
    if requeued:
        log(f"[planner] re-queued trial(s) {', '.join(map(str, requeued))}: interrupted, or their worker died")
    done = counted(study)
    if done >= trials:
        log(f"[planner] study already has {done} trials; selecting and verifying")
        return
    log(f"[planner] running up to {trials - done} trials ({done} already in the study)")
    deadline = None if timeout is None else time.time() + timeout
    for handler in logging.getLogger("optuna").handlers:
        handler.addFilter(_QUIET_INTERRUPT)
    run = worker_trial(objective, trials)
    repeats = RepeatGuard()
    _interrupted.clear()
    # Only where Ctrl-C already raises KeyboardInterrupt (not where SIGINT is ignored, nor off the main thread).
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    previous = signal.signal(signal.SIGINT, _on_sigint) if ours else None
    try:
        with ProgressBar(study, trials, timeout) as progress:
            while done < trials and (deadline is None or time.time() < deadline):
                study.optimize(run, timeout=None if deadline is None else max(0.0, deadline - time.time()),
                               catch=(Exception,), callbacks=[TrialCap(trials), repeats, progress])
                if _interrupted.is_set():
                    raise KeyboardInterrupt
                fail_stale(study)
                now = counted(study)
                if (now == done and not _waiting(study)) or repeats.run >= repeats.limit:
                    break  # no progress and nothing queued, or nothing new to propose: do not spin
                done = now
    except Exception:
        if _interrupted.is_set():
            raise KeyboardInterrupt from None
        raise
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
