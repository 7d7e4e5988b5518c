"""The plan file: round trip, atomic writes, one-line errors naming the field, safe YAML."""
import os
import warnings

import pytest
import torch
import yaml

import planner
from backends.sampler import SamplerConfig
from helpers import make_plan
from ground.generation import Request, generate
from planner.plan import PlanError, load_plan, parse_plan, plan_to_yaml, save_plan
from planner.runtime import PlanMismatch


@pytest.fixture
def plan(digits_unet):
    return make_plan(digits_unet, "digits-unet", [SamplerConfig(name="dpmpp_2m", steps=10)])


def test_round_trip_and_reproduce_comment(plan, tmp_path):
    path = save_plan(plan, tmp_path / "p.yaml")
    text = path.read_text()
    assert text.startswith("# reproduce: planner optimize --budget fid+2 digits-unet")
    assert load_plan(path) == plan
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_save_is_atomic_when_interrupted(plan, tmp_path, monkeypatch):
    path = save_plan(plan, tmp_path / "p.yaml")
    before = path.read_text()

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_plan(plan.model_copy(update={"budget": "fid+3"}), path)
    assert path.read_text() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


MEASURED = {"baseline_latency_s": 1.0, "plan_latency_s": 0.5, "speedup": 2.0, "latency_repeats": 3,
            "search_seeds": [0, 64], "verify_seeds": [500000, 64]}


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["shapes"].update(batch="four"), "shapes.batch"),
    (lambda d: d["techniques"][0]["params"].update(steps=0), "techniques[0].params.steps"),
    (lambda d: d["techniques"][0].update(type="os.system"), "techniques[0].type"),
    (lambda d: d["techniques"][0]["params"].update(bogus=1), "techniques[0].params.bogus"),
    (lambda d: d["model"].update(fingerprint="md5:abc"), "model.fingerprint"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.pop("model"), "model"),
    (lambda d: d.update(measured=dict(MEASURED, search_cost={"wall_s": 1, "baseline_image_s": 0.1, "bie": -3,
                                                             "images": 1, "trials": 1})), "measured.search_cost.bie"),
    (lambda d: d.update(measured=dict(MEASURED, decisions={"estimator": "x", "agreement": 1.5})),
     "measured.decisions.agreement"),
])
def test_bad_plans_name_the_field(plan, mutate, field):
    data = yaml.safe_load(plan_to_yaml(plan))
    mutate(data)
    with pytest.raises(PlanError) as err:
        parse_plan(yaml.safe_dump(data))
    message = str(err.value)
    assert "\n" not in message and field in message, message


def test_yaml_tags_never_construct_objects(tmp_path):
    marker = tmp_path / "pwned"
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(PlanError) as err:
        parse_plan(text)
    assert not marker.exists() and "invalid YAML" in str(err.value)


@pytest.mark.parametrize("text", ["", "version: 1\nmodel: [", "- a\n- b\n", "version: 1e400\n"])
def test_garbage_is_rejected_in_one_line(text):
    with pytest.raises(PlanError) as err:
        parse_plan(text)
    assert "\n" not in str(err.value)


def test_validate_cli_exit_codes(plan, tmp_path, capsys):
    from planner.cli import main

    good = save_plan(plan, tmp_path / "good.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(plan_to_yaml(plan).replace("batch: 4", "batch: -1"))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shapes.batch" in err[0]


def test_identity_plan_is_bit_identical(digits_unet):
    request = Request((1, 2, 3), (5, 6, 7))
    before = generate(digits_unet, request, steps=8)
    handle = planner.apply(digits_unet, make_plan(digits_unet, "digits-unet"))
    during = generate(digits_unet, request, steps=8)
    handle.remove()
    assert torch.equal(before, during)


def test_apply_pins_steps_and_remove_restores(digits_unet):
    request = Request((4, 5), (1, 2))
    before = generate(digits_unet, request, steps=50)
    cls, scheduler = type(digits_unet), digits_unet.scheduler
    handle = planner.apply(digits_unet, make_plan(digits_unet, "digits-unet", [SamplerConfig(name="dpmpp_2m", steps=6)]))
    calls = []
    hook = digits_unet.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    fast = generate(digits_unet, request, steps=50)  # the plan wins over the caller's 50
    hook.remove()
    assert len(calls) == 6
    handle.remove()
    assert type(digits_unet) is cls and digits_unet.scheduler is scheduler
    assert torch.equal(generate(digits_unet, request, steps=50), before)
    assert not torch.equal(fast, before)


def test_plan_for_another_model_is_refused(digits_unet, digits_dit):
    plan = make_plan(digits_dit, "digits-dit")
    with pytest.raises(PlanMismatch) as err:
        planner.apply(digits_unet, plan)
    assert plan.model.fingerprint in str(err.value)


def test_other_environment_warns_or_refuses(digits_unet):
    plan = make_plan(digits_unet, "digits-unet")
    other = plan.model_copy(update={"environment": plan.environment.model_copy(update={"torch": "1.0.0"})})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planner.apply(digits_unet, other).remove()
    assert any("torch 1.0.0" in str(w.message) for w in caught)
    with pytest.raises(PlanMismatch):
        planner.apply(digits_unet, other, strict=True)


def test_other_batch_warns_once(digits_unet):
    handle = planner.apply(digits_unet, make_plan(digits_unet, "digits-unet", batch=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(digits_unet, Request((1, 2), (0, 1)), steps=2)
        generate(digits_unet, Request((1, 2), (0, 1)), steps=2)
    handle.remove()
    assert sum("plan tuned for batch 4" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("path", ["tests/data/digits-unet.frozen-plan.yaml", "tests/data/digits-dit.frozen-plan.yaml"])
def test_older_plans_migrate_to_the_current_version(path):
    """v1 (the frozen plans) and v2 plans load as v3; v1/v2 verifications used 95% CIs at every look, and
    their metrics say so after migration."""
    from planner.plan import PLAN_VERSION

    text = open(path).read()
    v1 = parse_plan(text)
    data = yaml.safe_load(text)
    data["version"] = 2
    v2 = parse_plan(yaml.safe_dump(data))
    for plan in (v1, v2):
        assert plan.version == PLAN_VERSION == 4
        assert [m.ci_level for m in plan.measured.metrics] == [0.95] * len(plan.measured.metrics)
    assert parse_plan(plan_to_yaml(v2)) == v2
