"""Search spaces leave out what cannot run here and produce valid configs."""
import optuna
import torch
from backend_helpers import demo_pipeline

from search_spaces.compile import suggest_compile
from search_spaces.quantization import suggest_quantization
from search_spaces.tokens import suggest_tokens, token_methods

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample(fn, pipe, n=25):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(n):
        trial = study.ask()
        seen.append(fn(trial, None, pipe))
        study.tell(trial, 0.0)
    return seen


def test_quantization_space_leaves_out_unsupported():
    configs = [c for c in _sample(suggest_quantization, demo_pipeline("digits-dit")) if c is not None]
    modes = {c.mode for c in configs}
    assert modes and "fp8" not in modes
    if not torch.cuda.is_available():
        assert "fp16" not in modes


def test_token_space():
    assert token_methods(demo_pipeline("digits-unet")) == ["todo"]
    configs = [c for c in _sample(suggest_tokens, demo_pipeline("digits-dit")) if c is not None]
    assert {c.type for c in configs} == {"tome", "todo"}


def test_compile_space():
    configs = _sample(suggest_compile, demo_pipeline("digits-dit"))
    backends = {c.backend for c in configs if c is not None}
    assert "tensorrt" not in backends or torch.cuda.is_available()
    assert None in configs and "onnx" in backends


def test_a_restricted_space_only_proposes_its_values():
    import pytest

    from ground.errors import PlannerError
    from search_spaces.compose import RestrictedTrial, suggest_configs, within_space

    pipe = demo_pipeline("digits-unet")
    space = {"sampler": ["unipc"], "steps": [4, 8], "cache": ["none", "deepcache"], "deepcache.branch": [0],
             "deepcache.interval": [2, 3], "quant.mode": ["none"]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        configs = suggest_configs(trial, pipe, ["sampler", "quant", "cache"], None, space=space)
        assert configs[0].name == "unipc" and configs[0].steps in (4, 8)
        assert all(c.type != "quantize" for c in configs)
        seen |= {(c.branch, c.interval) for c in configs if c.type == "deepcache"}
        study.tell(trial, 0.0)
    assert seen == {(0, 2), (0, 3)}
    # parameters the space does not name keep their full range; a value a parameter cannot take is an error
    assert 0.1 <= RestrictedTrial(study.ask(), space).suggest_float("other", 0.1, 0.2) <= 0.2
    with pytest.raises(PlannerError, match="space.steps"):
        RestrictedTrial(study.ask(), {"steps": [7]}).suggest_categorical("steps", [4, 8])
    assert within_space({"sampler": "unipc", "steps": 8}, space) and not within_space({"steps": 20}, space)
    assert within_space({"steps": 20}, None)
