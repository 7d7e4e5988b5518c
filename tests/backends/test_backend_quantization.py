"""Precision and quantisation modes: closeness to fp32, exclusions recorded, exact removal, device refusals."""
import pytest
import torch
from backend_helpers import demo_pipeline, rel_err

import backends
from backends.quantization import QuantizeConfig, mode_unsupported, supported_modes, torchao_available
from backends.technique import ConfigError, NotApplicable, config_from_dict
from ground.generation import default_request, generate
from ground.anatomy import denoiser_of

STEPS = 2
# Relative L2 error of the generated images against fp32, measured on the shipped weights (seeds 0-1,
# 2 DDIM steps, 2 threads, 2026-11-28); the test allows 1.5x the measured error.
MEASURED = {
    ("digits-unet", "quantize(mode=bf16, backend=auto)"): 0.0187,
    ("digits-unet", "quantize(mode=bf16, backend=auto, exclude=first_block+last_block+io)"): 0.0121,
    ("digits-unet", "quantize(mode=int8_dynamic, backend=auto)"): 0.0071,
    ("digits-unet", "quantize(mode=int8_dynamic, backend=auto, exclude=attention)"): 0.0059,
    ("digits-dit", "quantize(mode=bf16, backend=auto)"): 0.0282,
    ("digits-dit", "quantize(mode=bf16, backend=auto, exclude=first_block+last_block+io)"): 0.0144,
    ("digits-dit", "quantize(mode=int8_dynamic, backend=auto)"): 0.0939,
    ("digits-dit", "quantize(mode=int8_dynamic, backend=auto, exclude=attention)"): 0.0943,
}
# torchao modes could not be measured (torchao is not installed on the dev machine): per-mode bounds
# set before measuring, for the runs where it is.
UNMEASURED_TOL = {"int8_dynamic": 0.15, "int8_weight_only": 0.05}


@pytest.fixture(scope="module", params=["digits-unet", "digits-dit"])
def model(request):
    pipe = demo_pipeline(request.param)
    req = default_request(pipe, 2)
    return pipe, req, generate(pipe, req, steps=STEPS), request.param


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
    pipe, request, base, name = model
    denoiser = denoiser_of(pipe)
    before = _snapshot(denoiser)
    reason = mode_unsupported(config.mode, torch.device("cpu"), config.backend)
    if reason:   # torchao is an optional extra: without it the mode is refused in one line, the model untouched
        assert "pip install torchao" in reason and not torchao_available()
        with pytest.raises(NotApplicable, match="pip install torchao") as info:
            backends.apply(pipe, config)
        assert "\n" not in str(info.value) and _snapshot(denoiser) == before
        return
    handle = backends.apply(pipe, config)
    out = generate(pipe, request, steps=STEPS)
    handle.remove()
    err = rel_err(out, base)
    measured = MEASURED.get((name, config.label()))
    tol = 1.5 * measured if measured is not None else UNMEASURED_TOL[config.mode]
    assert 0 < err < tol, f"{name} {config.label()}: relative error {err:.4f} (measured {measured})"
    assert handle.info["exclude"] == list(config.exclude)
    if config.mode.startswith("int8"):
        assert handle.info["quantized"] and set(handle.info["quantized"]).isdisjoint(handle.info["excluded"])
        if config.exclude:
            assert handle.info["excluded"]
    assert _snapshot(denoiser) == before
    assert torch.equal(generate(pipe, request, steps=STEPS), base)


def test_fp32_is_identity(model):
    pipe, request, base, _ = model
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
    assert rel_err(out, base) < 0.1   # not measured: no GPU on the dev machine (bound set before measuring)
    assert torch.equal(generate(pipe, request, steps=STEPS), base)
