"""Stepping back after failed verifications, and what the plan records of the search's verdicts."""
from types import SimpleNamespace

from planner.quality.budget import parse_budget
from planner.search.step_back import more_steps
from planner.search.verify import Attempt, decisions_of


def test_more_steps_goes_one_step_choice_up_and_never_to_the_baseline_itself():
    assert more_steps({"sampler": "ddim", "steps": 3, "cache": "none"}, 50) == {"sampler": "ddim", "steps": 4,
                                                                                "cache": "none"}
    assert more_steps({"sampler": "ddim", "steps": 30}, 50) == {"sampler": "ddim", "steps": 50}
    assert more_steps({"sampler": "ddim", "steps": 50}, 50) is None          # nowhere further up
    assert more_steps({"sampler": "keep", "steps": 30}, 50) is None          # that would be the baseline
    assert more_steps({"sampler": "ddim"}, 50) is None                       # no step count to change


def _attempt(number, search_value, feasible, verify_value, holds):
    budget = parse_budget("fid+2")
    clause = budget.clauses[0]
    measured = SimpleNamespace(value=verify_value, n=500)
    result = SimpleNamespace(clause=clause, measured=measured, point=verify_value <= 2)
    trial = SimpleNamespace(number=number, user_attrs={"metrics": {"fid+2": search_value}, "samples": {"fid+2": 64},
                                                       "feasible": feasible, "label": f"t{number}"})
    return Attempt(trial=trial, evaluation=SimpleNamespace(results=[result]),
                   verified=object() if holds else None, why="" if holds else "fid+2: too high")


def test_decisions_record_agreement_and_bias_over_the_verified_candidates():
    ctx = SimpleNamespace(budget=parse_budget("fid+2"))
    attempts = [_attempt(0, 1.0, True, 3.0, False), _attempt(1, 1.5, True, 1.7, True)]
    d = decisions_of(ctx, attempts, "rule")
    assert d["agreement"] == 0.5                       # trial 0: feasible in the search, fails at 500
    assert d["bias"]["fid+2"] == ((1.0 - 3.0) + (1.5 - 1.7)) / 2
    assert [r["why"] for r in d["rows"]] == ["fid+2: too high", ""] and d["estimator"] == "rule"
