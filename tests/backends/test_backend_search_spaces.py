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
