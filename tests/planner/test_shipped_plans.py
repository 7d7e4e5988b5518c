"""Every plan in plans/ validates; the slow suite re-gates them (quality and speed on fresh seeds)."""
from pathlib import Path

import pytest
import torch

from planner.cli import main
from planner.plan import load_plan

PLANS = sorted((Path(__file__).resolve().parents[2] / "plans").glob("*.yaml"))


def test_plans_folder_is_not_empty():
    assert PLANS, "plans/ should ship plans for the demo models"


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_shipped_plan_validates(path):
    plan = load_plan(path)
    assert path.read_text().startswith("# reproduce: planner optimize")
    assert plan.measured is not None and all(m.holds_conservative for m in plan.measured.metrics)


@pytest.mark.slow
@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_shipped_plan_passes_the_gate(path, tmp_path):
    assert main(["gate", str(path), "--samples", "300", "--junit", str(tmp_path / "gate.xml")]) == 0
    assert "failures=\"0\"" in (tmp_path / "gate.xml").read_text()


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_shipped_plan_fits_its_built_in_model(path):
    from ground.anatomy import denoiser_of
    from ground.identity import fingerprint
    from planner.models import load_pipeline

    plan = load_plan(path)
    assert fingerprint(denoiser_of(load_pipeline(plan.model.name))) == plan.model.fingerprint


def test_gate_fails_a_plan_whose_speed_claim_no_longer_holds(tmp_path, capsys):
    """The gate re-measures side by side: a plan claiming 1000x fails with exit 1 and a JUnit failure;
    a missing plan file is bad input (exit 2)."""
    plan = load_plan(PLANS[0])
    inflated = plan.model_copy(update={"measured": plan.measured.model_copy(update={"speedup": 1000.0})})
    from planner.plan import save_plan

    path = tmp_path / "inflated.yaml"
    save_plan(inflated, path)
    original, threads = torch.get_num_threads(), plan.measured.threads + 1
    torch.set_num_threads(threads)
    junit = tmp_path / "gate.xml"
    try:
        code = main(["gate", str(path), "--samples", "20", "--repeats", "1", "--junit", str(junit)])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(original)
    out = capsys.readouterr().out
    assert code == 1 and "REGRESSED" in out and "gate: FAIL" in out
    # timed at the thread count the plan was measured at, and the test process's own setting is restored
    assert f"{plan.measured.threads} thread(s)); plan says" in out and after == threads
    assert "vs floor 900.000x</failure>" in junit.read_text()  # the speed case (20 samples may fail quality too)
    assert main(["gate", str(tmp_path / "missing.yaml")]) == 2
