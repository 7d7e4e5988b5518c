"""Token merging (tome) and token downsampling (todo): exactness at ratio 0, closeness, removal."""
import pytest
import torch
from backend_helpers import UNetHolder, demo_pipeline, rel_err, sd_like_unet

import backends
from backends.technique import ConfigError, NotApplicable, config_from_dict
from backends.tokens import ToDoConfig, ToMeConfig, _destinations, bipartite_soft_matching
from ground.generation import default_request, generate

STEPS = 2


@pytest.fixture(scope="module")
def dit():
    pipe = demo_pipeline("digits-dit")
    request = default_request(pipe, 2)
    return pipe, request, generate(pipe, request, steps=STEPS)


@pytest.fixture(scope="module")
def unet():
    pipe = demo_pipeline("digits-unet")
    request = default_request(pipe, 2)
    return pipe, request, generate(pipe, request, steps=STEPS)


def test_matching_merges_duplicates_exactly():
    # tokens that duplicate their destination merge away without changing a token-wise function's output
    torch.manual_seed(0)
    h = w = 8
    dst = _destinations(h, w, 2, None, "cpu")
    x = torch.randn(2, h * w, 16)
    idx = dst.nonzero().squeeze(1)
    x[:, ~dst] = x[:, idx].repeat_interleave(3, dim=1)[:, : int((~dst).sum())]  # each source copies a destination
    merge, unmerge = bipartite_soft_matching(x, dst, r=int((~dst).sum()))
    merged = merge(x)
    assert merged.shape[1] == int(dst.sum())
    fn = torch.nn.Linear(16, 16)
    with torch.no_grad():
        assert torch.allclose(unmerge(fn(merged)), fn(x), atol=1e-5)


def test_matching_shapes_and_counts():
    x = torch.randn(3, 64, 8)
    dst = _destinations(8, 8, 2, torch.Generator().manual_seed(1), "cpu")
    assert int(dst.sum()) == 16
    merge, unmerge = bipartite_soft_matching(x, dst, r=20)
    assert merge(x).shape == (3, 44, 8)
    assert unmerge(merge(x)).shape == x.shape


def test_ratio_zero_is_bit_identical(dit):
    pipe, request, base = dit
    handle = backends.apply(pipe, ToMeConfig(ratio=0.0))
    assert torch.equal(generate(pipe, request, steps=STEPS), base)
    handle.remove()


@pytest.mark.parametrize("config, tol", [
    (ToMeConfig(ratio=0.25), 0.6),
    pytest.param(ToMeConfig(ratio=0.5, random_dst=False), 1.0, marks=pytest.mark.slow),
    (ToDoConfig(factor=2), 0.6),
    pytest.param(ToDoConfig(factor=2, method="avg"), 0.6, marks=pytest.mark.slow),
])
def test_dit_close_and_removable(dit, config, tol):
    pipe, request, base = dit
    handle = backends.apply(pipe, config)
    out = generate(pipe, request, steps=STEPS)
    again = generate(pipe, request, steps=STEPS)
    handle.remove()
    assert torch.equal(out, again), "deterministic while applied (private generator)"
    assert 0 < rel_err(out, base) < tol
    assert torch.equal(generate(pipe, request, steps=STEPS), base)


def test_todo_on_plain_unet_attention(unet):
    pipe, request, base = unet
    # digits-unet has attention only at 8x8 (downsample 2): max_downsample 1 leaves it alone
    handle = backends.apply(pipe, ToDoConfig(max_downsample=1))
    assert torch.equal(generate(pipe, request, steps=STEPS), base)
    handle.remove()
    handle = backends.apply(pipe, ToDoConfig(max_downsample=2, method="avg"))
    out = generate(pipe, request, steps=STEPS)
    handle.remove()
    assert 0 < rel_err(out, base) < 0.2
    assert torch.equal(generate(pipe, request, steps=STEPS), base)


def test_tome_needs_transformer_blocks(unet):
    pipe, _, _ = unet
    with pytest.raises(NotApplicable, match="BasicTransformerBlock"):
        backends.apply(pipe, ToMeConfig(ratio=0.3))


@pytest.mark.parametrize("config", [ToMeConfig(ratio=0.5, max_downsample=2), ToDoConfig(factor=2, max_downsample=2)])
def test_sd_like_unet(config):
    unet = sd_like_unet(sample_size=16)
    holder = UNetHolder(unet)
    x, t, ctx = torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        base = unet(x, t, encoder_hidden_states=ctx).sample
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, base)
        zero = backends.apply(holder, ToMeConfig(ratio=0.0, max_downsample=2))
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, base)
        zero.remove()
        handle = backends.apply(holder, config)
        out = unet(x, t, encoder_hidden_states=ctx).sample
        handle.remove()
        assert 0 < rel_err(out, base) < 0.3
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx).sample, base)
        assert all("forward" not in m.__dict__ for m in unet.modules())
        assert not unet._forward_pre_hooks


def test_tokens_with_sampler(dit):
    from backends.sampler import SamplerConfig

    pipe, request, _ = dit
    base = generate(pipe, request, steps=4)
    handle = backends.apply_all(pipe, [ToMeConfig(ratio=0.1), SamplerConfig(name="ddim", steps=4)])
    out = generate(pipe, request, steps=50)   # the sampler pins 4 steps
    handle.remove()
    sampler_only = backends.apply(pipe, SamplerConfig(name="ddim", steps=4))
    ref = generate(pipe, request, steps=50)
    sampler_only.remove()
    assert rel_err(out, ref) < 0.6
    assert torch.equal(generate(pipe, request, steps=4), base)


def test_config_round_trip_and_validation():
    config = ToMeConfig(ratio=0.4, max_downsample=2)
    assert config_from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="ratio"):
        config_from_dict({"type": "tome", "params": {"ratio": 1.5}})
    with pytest.raises(ConfigError, match="factor"):
        config_from_dict({"type": "todo", "params": {"factor": 5}})
