"""Precision and quantisation modes: closeness to fp32, exclusions recorded, exact removal, device refusals."""
import pytest
import torch
from backend_helpers import demo_pipeline, rel_err

import backends
from backends.quantization import QuantizeConfig, mode_unsupported, supported_modes
from backends.technique import ConfigError, NotApplicable, config_from_dict
from ground.generation import default_request, generate
from ground.anatomy import denoiser_of

STEPS = 2
# Relative L2 error of the generated images (4 samples, 3 DDIM steps) against fp32.
TOL = {"bf16": 0.05, "int8_dynamic": 0.15, "int8_weight_only": 0.05}


@pytest.fixture(scope="module", params=["digits-unet", "digits-dit"])
def model(request):
    pipe = demo_pipeline(request.param)
    req = default_request(pipe, 2)
    return pipe, req, generate(pipe, req, steps=STEPS)


def _snapshot(module):
    return {n: (id(m), type(m)) for n, m in module.named_modules()}, \
        {n: (id(p), p.data_ptr(), p.dtype) for n, p in module.named_parameters()}


@pytest.mark.parametrize("config", [
    QuantizeConfig(mode="bf16"),
    QuantizeConfig(mode="bf16", exclude=("first_block", "last_block", "io")),
    QuantizeConfig(mode="int8_dynamic"),
    QuantizeConfig(mode="int8_dynamic", exclude=("attention",)),
    pytest.param(QuantizeConfig(mode="int8_dynamic", backend="torchao"), marks=pytest.mark.slow),
    QuantizeConfig(mode="int8_weight_only", exclude=("embeddings",)),
], ids=lambda c: c.label())
def test_mode_close_and_removable(model, config):
    if mode_unsupported(config.mode, torch.device("cpu"), config.backend):
        pytest.skip(mode_unsupported(config.mode, torch.device("cpu"), config.backend))
    pipe, request, base = model
    denoiser = denoiser_of(pipe)
    before = _snapshot(denoiser)
    handle = backends.apply(pipe, config)
    out = generate(pipe, request, steps=STEPS)
    handle.remove()
    err = rel_err(out, base)
    assert 0 < err < TOL[config.mode], err
    assert handle.info["exclude"] == list(config.exclude)
    if config.mode.startswith("int8"):
        assert handle.info["quantized"] and set(handle.info["quantized"]).isdisjoint(handle.info["excluded"])
        if config.exclude:
            assert handle.info["excluded"]
    assert _snapshot(denoiser) == before
    assert torch.equal(generate(pipe, request, steps=STEPS), base)


def test_fp32_is_identity(model):
    pipe, request, base = model
    handle = backends.apply(pipe, QuantizeConfig(mode="fp32"))
    assert torch.equal(generate(pipe, request, steps=STEPS), base)
    handle.remove()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU refusals")
@pytest.mark.parametrize("mode", ["fp16", "fp8"])
def test_unsupported_on_cpu_is_one_line(mode):
    pipe = demo_pipeline("digits-dit")
    with pytest.raises(NotApplicable) as info:
        backends.apply(pipe, QuantizeConfig(mode=mode))
    assert "\n" not in str(info.value) and mode in str(info.value)
    assert mode not in supported_modes("cpu")


def test_config_validation():
    assert config_from_dict(QuantizeConfig(mode="int8_dynamic", exclude=("io",)).to_dict()).exclude == ("io",)
    with pytest.raises(ConfigError, match="exclude"):
        config_from_dict({"type": "quantize", "params": {"mode": "bf16", "exclude": ["lm_head"]}})
    with pytest.raises(ValueError, match="torchao"):
        QuantizeConfig(mode="fp8", backend="torch_ao")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fp16", "bf16", "fp8", "int8_dynamic", "int8_weight_only"])
def test_gpu_modes(mode):
    pipe = demo_pipeline("digits-dit").to("cuda")
    if mode_unsupported(mode, torch.device("cuda")):
        pytest.skip(mode_unsupported(mode, torch.device("cuda")))
    request = default_request(pipe, 4)
    base = generate(pipe, request, steps=STEPS)
    handle = backends.apply(pipe, QuantizeConfig(mode=mode))
    out = generate(pipe, request, steps=STEPS)
    handle.remove()
    assert rel_err(out, base) < 0.1
    assert torch.equal(generate(pipe, request, steps=STEPS), base)
