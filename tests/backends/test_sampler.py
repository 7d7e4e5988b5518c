"""Sampler technique: swap, pin steps, custom timesteps, exact removal."""
import pytest
import torch

import backends
from backends.sampler import SamplerConfig
from backends.technique import ConfigError, config_from_dict
from ground.generation import Request, generate


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "euler"])
def test_each_sampler_runs_the_pinned_steps(digits_unet, name):
    calls = []
    hook = digits_unet.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    handle = backends.apply(digits_unet, SamplerConfig(name=name, steps=7))
    images = generate(digits_unet, Request((0, 1), (0, 1)))
    handle.remove()
    hook.remove()
    assert len(calls) == 7 and torch.isfinite(images).all()


def test_custom_timesteps(digits_unet):
    config = SamplerConfig(name="dpmpp_2m", steps=4, timesteps=[999, 700, 400, 100])
    handle = backends.apply(digits_unet, config)
    seen = []
    hook = digits_unet.unet.register_forward_pre_hook(lambda _m, args: seen.append(int(args[1][0])))
    generate(digits_unet, Request((0,), (0,)))
    hook.remove()
    handle.remove()
    assert seen == [999, 700, 400, 100]


def test_round_trip_and_validation():
    config = SamplerConfig(name="unipc", steps=12, karras=True)
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="params.steps"):
        config_from_dict({"type": "sampler", "params": {"steps": -3}})
    with pytest.raises(ConfigError, match="timesteps"):
        config_from_dict({"type": "sampler", "params": {"steps": 2, "timesteps": [1, 5]}})
    with pytest.raises(ConfigError, match="type"):
        config_from_dict({"type": "builtins.eval", "params": {}})


def test_removal_is_exact(digits_unet):
    request = Request((2, 3), (4, 5))
    before = generate(digits_unet, request, steps=10)
    handle = backends.apply(digits_unet, SamplerConfig(name="euler", steps=5, karras=True))
    generate(digits_unet, request)
    handle.remove()
    assert torch.equal(generate(digits_unet, request, steps=10), before)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc", "euler"])
def test_other_samplers_run_under_ddim_pipeline(name):
    """DDIMPipeline passes eta= to scheduler.step; the swapped-in sampler must still run its pinned steps."""
    from planner.models import load_pipeline

    pipe = load_pipeline("tiny-ddim")
    request = Request((None,), (0,))
    before = generate(pipe, request, steps=3)
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    handle = backends.apply(pipe, SamplerConfig(name=name, steps=3))
    try:
        images = generate(pipe, request, steps=50)   # the sampler pins 3 steps
    finally:
        handle.remove()
        hook.remove()
    assert len(calls) == 3 and torch.isfinite(images).all()
    assert not torch.equal(images, before)   # another sampler's 3 steps land elsewhere than DDIM's
    assert torch.equal(generate(pipe, request, steps=3), before)
