"""Every technique at once, through the one hook mechanism: applied together, listed by `attached`, removed
one by one in random (seeded) orders, leaving the pipeline exactly as it was and its output bit-identical.

The largest set that applies together: on digits-dit, every registered type but `deepcache` (UNet-only)
and with one technique per type (`quantize` is one precision at a time); digits-unet adds
`deepcache` and leaves out the transformer-only `first_block_cache` and `teacache`; ToMe does not apply
to it. Several caches stacked compute nothing sensible, but each hook must still come off cleanly.
`torch.compile` is replaced by a stand-in returning a plain wrapper: what is checked is the named
`_compiled_call_impl` replacement, not Inductor (compile composition is tested in test_caching and
test_backend_compile).
"""
from __future__ import annotations

import random

import pytest
import torch

from backends.caching.common import residual_blocks
from backends.quantization import supported_modes
from backends.technique import apply_all, config_from_dict, why_not_applicable
from backend_helpers import demo_pipeline
from ground.generation import default_request, generate
from ground.hooks import attached

STEPS = 4
pytestmark = pytest.mark.usefixtures("one_thread")


def _candidates(pipe) -> list[dict]:
    blocks = [name for name, _ in residual_blocks(pipe)][:2]
    mode = "bf16" if "bf16" in supported_modes() else "int8_dynamic"
    return [
        {"type": "sampler", "params": {"name": "dpmpp_2m", "steps": STEPS}},
        {"type": "quantize", "params": {"mode": mode, "exclude": ["first_block"]}},
        {"type": "tome", "params": {"ratio": 0.5}},
        {"type": "todo", "params": {"factor": 2}},
        {"type": "deepcache", "params": {"interval": 2}},
        {"type": "block_schedule", "params": {"reuse": {n: [2] for n in blocks}, "num_steps": STEPS}},
        {"type": "first_block_cache", "params": {"threshold": 0.1}},
        {"type": "teacache", "params": {"threshold": 0.1}},
        {"type": "taylorseer", "params": {"interval": 2}},
        {"type": "cfg_reuse", "params": {"interval": 2}},
        {"type": "compile", "params": {"backend": "torch_regional"}},
    ]


def _state(pipe) -> dict:
    """What must come back exactly: classes, instance attributes, module tree, parameter and buffer objects."""
    state = {"pipeline": (type(pipe), sorted(vars(pipe)), id(pipe.scheduler), sorted(vars(pipe.scheduler)))}
    for attr, value in vars(pipe).items():
        if isinstance(value, torch.nn.Module):
            for name, m in value.named_modules():
                tensors = [(k, id(t), t.data_ptr(), t.dtype) for k, t in
                           list(m._parameters.items()) + list(m._buffers.items()) if t is not None]
                state[f"{attr}.{name}"] = (id(m), type(m), sorted(m.__dict__), tensors)
    return state


def _stand_in_compile(fn, **_):
    def compiled(*args, **kwargs):
        return fn(*args, **kwargs)
    return compiled


@pytest.mark.parametrize("name", ["digits-dit", "digits-unet"])
def test_every_technique_comes_off_in_any_order(name, monkeypatch):
    monkeypatch.setattr(torch, "compile", _stand_in_compile)
    pipe = demo_pipeline(name)
    request = default_request(pipe, 2)
    base = generate(pipe, request, steps=STEPS)
    before = _state(pipe)
    configs = [config_from_dict(c) for c in _candidates(pipe)]
    configs = sorted([c for c in configs if why_not_applicable(pipe, c) is None], key=lambda c: c.stage)  # as apply_all
    expected = {"digits-dit": 10, "digits-unet": 8}[name]
    assert len(configs) == expected, [c.type for c in configs]
    for seed in range(3):
        handles = apply_all(pipe, configs).handles
        listed = {hook for _, hook in attached(pipe)}
        assert {f"planner.{c.type}" for c in configs} | {"planner.steps"} == listed
        generate(pipe, request, steps=STEPS)   # runs every hook once: caches fill, state is created
        order = random.Random(seed).sample(range(len(handles)), len(handles))
        for k, i in enumerate(order):
            handles[i].remove()
            listed = {hook for _, hook in attached(pipe)}
            left = {f"planner.{configs[j].type}" for j in order[k + 1:]}
            assert left <= listed and f"planner.{configs[i].type}" not in listed, (configs[i].type, listed)
        assert attached(pipe) == [], (seed, order)
        assert _state(pipe) == before, (seed, order)
        assert torch.equal(generate(pipe, request, steps=STEPS), base), (seed, order)
