"""A search that survives faulty trials, and refusals that name what does not match (in-process, cheap)."""
from __future__ import annotations

import warnings

import optuna
import pytest
import torch
from helpers import make_plan

import planner
from planner.cli import main
from ground.environment import current_environment
from ground.anatomy import denoiser_of
from ground.identity import fingerprint
from planner.plan import load_plan, save_plan
from planner.runtime import PlanMismatch
from planner.search import objective as objective_module
from planner.search.objective import Objective

FAST = ["--samples", "24", "--verify-samples", "32", "--batch", "1", "--guidance", "1", "--baseline-steps", "10",
        "--techniques", "sampler", "--threads", "1"]


def _journal(path, name):
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(JournalFileBackend(str(path))))


class _Poisoned:
    """A technique handle whose denoiser returns NaN (removes the hook with the real techniques)."""

    def __init__(self, inner, hook):
        self.inner, self.hook, self.handles = inner, hook, inner.handles

    def remove(self):
        self.hook.remove()
        self.inner.remove()


def _nan_output(module, inputs, output):
    tensor = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
    tensor.fill_(float("nan"))


def test_failing_trials_are_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    """The first trial's technique raises, the second runs out of memory, the third produces NaN images,
    the fifth returns NaN: each is recorded with its reason, and the one sound trial (the fourth) becomes
    the plan. Counted by trials that reach the technique (a repeated configuration is given its earlier
    measurement and never gets there)."""
    monkeypatch.chdir(tmp_path)
    calls = {"apply": 0, "measure": 0}
    real_apply, real_measure = objective_module.apply_all, Objective._measure

    def faulty_apply(pipe, configs):
        calls["apply"] += 1
        if calls["apply"] == 1:
            raise RuntimeError("boom: a technique failed")
        if calls["apply"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        handle = real_apply(pipe, configs)
        if calls["apply"] == 3:
            return _Poisoned(handle, denoiser_of(pipe).register_forward_hook(_nan_output))
        return handle

    def nan_measure(self, trial, configs, handle):
        calls["measure"] += 1   # the third measurement is the fifth trial's (trials 1 and 2 never measure)
        return float("nan") if calls["measure"] == 3 else real_measure(self, trial, configs, handle)

    monkeypatch.setattr(objective_module, "apply_all", faulty_apply)
    monkeypatch.setattr(Objective, "_measure", nan_measure)
    out = tmp_path / "p.yaml"
    code = main(["optimize", "digits-unet", "--budget", "psnr>=10", "--out", str(out), "--trials", "5",
                 "--study-name", "faults", *FAST])
    assert code == 0, capsys.readouterr()
    trials = _journal(tmp_path / "planner-cache" / "studies" / "faults.journal", "faults").trials
    counted = [t for t in trials if "repeat_of" not in t.user_attrs]   # repeats cost nothing
    assert len(counted) == 5
    t0, t1, t2, t3, t4 = counted
    assert t0.state == optuna.trial.TrialState.FAIL and t0.user_attrs["error"] == "RuntimeError: boom: a technique failed"
    assert t1.state == optuna.trial.TrialState.COMPLETE and not t1.user_attrs["feasible"]
    assert t1.user_attrs["infeasible_because"].startswith("out of memory: CUDA out of memory")
    assert t2.state == optuna.trial.TrialState.COMPLETE and t2.user_attrs["infeasible_because"] == "non-finite images"
    assert all(v > 0 for v in t1.constraints.values()) and all(v > 0 for v in t2.constraints.values())
    assert t3.state == optuna.trial.TrialState.COMPLETE and t3.user_attrs["feasible"]
    assert t4.state == optuna.trial.TrialState.FAIL and t4.user_attrs["error"] == "objective value nan"
    plan = load_plan(out)
    assert plan.provenance.trial == t3.number and plan.techniques == [
        type(plan.techniques[0])(**d) for d in t3.user_attrs["techniques"]]


def test_worker_on_other_hardware_is_refused(tmp_path, monkeypatch, capsys):
    """A study whose stored environment is another device: this worker says both and runs nothing."""
    monkeypatch.chdir(tmp_path)
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "gpu.journal"
    study = optuna.create_study(study_name="gpu", storage=optuna.storages.JournalStorage(JournalFileBackend(str(journal))))
    here = current_environment("cpu")
    study.set_user_attr("environment", dict(here, device="cuda:0", device_name="NVIDIA H100 80GB HBM3"))
    code = main(["optimize", "tiny-ddpm", "--budget", "psnr>=20", "--storage", f"journal:{journal}",
                 "--study-name", "gpu", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "cuda:0 (NVIDIA H100 80GB HBM3)" in err[0] and f"cpu ({here['device_name']})" in err[0]
    assert not _journal(journal, "gpu").trials


def test_plan_for_another_model_names_both_fingerprints(digits_unet, digits_dit, tmp_path, capsys):
    plan = make_plan(digits_dit, "digits-dit")
    with pytest.raises(PlanMismatch) as err:
        planner.apply(digits_unet, plan)
    message = str(err.value)
    assert plan.model.fingerprint in message and fingerprint(denoiser_of(digits_unet)) in message
    path = tmp_path / "dit.yaml"
    save_plan(plan, path)
    # refused before any weight is loaded: the folder's pipeline class is not the plan's
    assert main(["run", str(path), "--model", "digits-unet", "--out", str(tmp_path / "g.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "DigitsDiTPipeline" in lines[0] and "DigitsUNetPipeline" in lines[0]


def test_plan_for_another_device_warns_or_refuses_naming_both(digits_unet):
    plan = make_plan(digits_unet, "digits-unet")
    gpu = plan.model_copy(update={"environment": plan.environment.model_copy(
        update={"device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3"})})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planner.apply(digits_unet, gpu).remove()
    assert any("cuda:0 (NVIDIA H100 80GB HBM3) vs cpu" in str(w.message) for w in caught)
    with pytest.raises(PlanMismatch, match="NVIDIA H100"):
        planner.apply(digits_unet, gpu, strict=True)
