"""One plan per pipeline: a second apply is refused before anything changes; handles removed in any
order leave exactly the original; a failing apply leaves the pipeline untouched; hub ids and other
pipelines are refused before any weight is read; LoRA carry-over is an explicit choice."""
import pytest
import torch
from helpers import make_plan

import planner
from backends.caching import BlockScheduleConfig, DeepCacheConfig
from backends.quantization import QuantizeConfig
from backends.sampler import SamplerConfig
from ground.errors import PlannerError
from ground.generation import default_request, generate
from ground.hooks import attached
from planner.runtime import PlanMismatch, model_for_plan


def _images(pipe):
    return generate(pipe, default_request(pipe, 2, seed=7), steps=4)


def test_a_second_apply_is_refused_and_changes_nothing(digits_unet):
    before = _images(digits_unet)
    int8 = make_plan(digits_unet, "digits-unet", [SamplerConfig(name="ddim", steps=4), QuantizeConfig(mode="int8_dynamic")])
    other = make_plan(digits_unet, "digits-unet", [SamplerConfig(name="unipc", steps=4), DeepCacheConfig(interval=2)])
    handle = planner.apply(digits_unet, int8)
    accelerated = _images(digits_unet)
    hooks = attached(digits_unet)
    for plan in (int8, other):   # the same plan again, or another: one line, nothing changed
        with pytest.raises(PlannerError, match="already accelerated by a Plan object") as err:
            planner.apply(digits_unet, plan)
        assert "\n" not in str(err.value)
    assert attached(digits_unet) == hooks and torch.equal(_images(digits_unet), accelerated)
    handle.remove()
    handle.remove()
    assert attached(digits_unet) == [] and torch.equal(_images(digits_unet), before)


def test_techniques_attached_directly_count_as_accelerated(digits_unet):
    import backends

    direct = backends.apply(digits_unet, DeepCacheConfig(interval=2))
    try:
        with pytest.raises(PlannerError, match="planner techniques attached"):
            planner.apply(digits_unet, make_plan(digits_unet, "digits-unet"))
    finally:
        direct.remove()
    assert attached(digits_unet) == []


def test_a_failing_apply_leaves_the_pipeline_untouched(digits_unet):
    before = _images(digits_unet)
    broken = make_plan(digits_unet, "digits-unet", [SamplerConfig(name="ddim", steps=4), QuantizeConfig(mode="bf16"),
                                                     BlockScheduleConfig(reuse={"no.such.block": [1]}, num_steps=4)])
    with pytest.raises(PlannerError, match="no.such.block"):
        planner.apply(digits_unet, broken)
    assert attached(digits_unet) == [] and torch.equal(_images(digits_unet), before)
    planner.apply(digits_unet, make_plan(digits_unet, "digits-unet")).remove()   # and it can be accelerated again


def test_plans_are_checked_before_weights_load(digits_unet, tmp_path):
    plan = make_plan(digits_unet, "digits-unet")
    hub = plan.model_copy(update={"model": plan.model.model_copy(update={"name": "someone/some-model"})})
    with pytest.raises(PlannerError, match="--model someone/some-model"):
        model_for_plan(hub)
    with pytest.raises(PlanMismatch, match="DigitsDiTPipeline"):
        model_for_plan(plan, "digits-dit")
    assert model_for_plan(plan) == "digits-unet"


def test_lora_carries_over_only_when_asked(tiny_sd_fresh):
    """A plan made for the base model; a LoRA loaded: refused, or applied with a warning when allowed."""
    from peft import LoraConfig   # the `dev` extra installs it

    from ground.identity import structure

    pipe = tiny_sd_fresh
    plan = make_plan(pipe, "tiny-sd", [SamplerConfig(name="ddim", steps=3)])
    plan = plan.model_copy(update={"model": plan.model.model_copy(update={"structure": structure(pipe.unet)})})
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False),
                          adapter_name="style")
    with pytest.raises(PlanMismatch, match="LoRA adapter.*style.*allow_lora"):
        planner.apply(pipe, plan)
    with pytest.warns(UserWarning, match="carried over to LoRA"):
        handle = planner.apply(pipe, plan, allow_lora=True)
    handle.remove()


@pytest.fixture
def tiny_sd_fresh():
    from planner.models import load_pipeline

    return load_pipeline("tiny-sd")
