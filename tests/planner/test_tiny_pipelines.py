"""The tiny random-weight diffusers pipelines: every family generates through planner.generation,
deterministically and batch-independently, and survives save_pretrained -> load_pipeline."""
from __future__ import annotations

import time

import pytest
import torch

from planner.demo.tiny_pipelines import TINY_FAMILIES, build_tiny_pipeline, tiny_spec
from ground.errors import PlannerError
from ground.generation import default_request, generate, pipeline_family
from planner.models import builtin_names, load_pipeline
from ground.anatomy import denoiser_of

STEPS = 2
PIXEL_FAMILIES = ("ddpm", "ddim")
CONDITIONING = {"dit": "class", "ddpm": "unconditional", "ddim": "unconditional"}


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: a second thread only spin-waits


_PIPES: dict = {}
_IMAGES: dict = {}


def _pipe(family):
    if family not in _PIPES:
        _PIPES[family] = build_tiny_pipeline(family, seed=0)
    return _PIPES[family]


def _images(family):
    """Seeds [0, 1] at STEPS steps: generated once per family and shared by the tests below."""
    if family not in _IMAGES:
        pipe = _pipe(family)
        _IMAGES[family] = generate(pipe, default_request(pipe, 2, seed=0), steps=STEPS)
    return _IMAGES[family]


def _expected_side(family):
    side = tiny_spec(family)["latent_size"]
    return side if family in PIXEL_FAMILIES else 2 * side  # every tiny VAE has scale factor 2


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_generates_finite_images_in_range(family):
    pipe = _pipe(family)
    assert pipeline_family(pipe) == CONDITIONING.get(family, "text")
    images = _images(family)
    side = _expected_side(family)
    assert images.shape == (2, 3, side, side)
    assert images.dtype == torch.float32
    assert torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # not a constant picture
    assert not torch.equal(images[0], images[1])  # different seeds (and conditions) differ


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_deterministic_and_batch_independent(family):
    pipe = _pipe(family)
    first = _images(family)
    again = generate(pipe, default_request(pipe, 2, seed=0), steps=STEPS)
    assert torch.equal(first, again)
    alone = generate(pipe, default_request(pipe, 1, seed=1), steps=STEPS)
    # Same (condition, seed) pair, different batch: the same image up to float summation order.
    torch.testing.assert_close(alone[0], first[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_same_seed_same_weights(family):
    def state(pipe):
        return {f"{name}.{k}": v for name, module in pipe.components.items()
                if isinstance(module, torch.nn.Module) for k, v in module.state_dict().items()}

    a, b = state(_pipe(family)), state(build_tiny_pipeline(family, seed=0))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = state(build_tiny_pipeline(family, seed=1))
    denoiser = "transformer." if family in ("pixart", "sd3", "flux", "dit") else "unet."
    assert any(not torch.equal(a[k], other[k]) for k in a if k.startswith(denoiser))


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_pipeline("dit")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_save_pretrained_then_load_pipeline(family, tmp_path):
    pipe = _pipe(family)
    folder = tmp_path / f"tiny-{family}"
    pipe.save_pretrained(folder, safe_serialization=True)
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    loaded = load_pipeline(str(folder))
    assert type(loaded) is type(pipe)
    assert type(denoiser_of(loaded)) is type(denoiser_of(pipe))
    images = generate(loaded, default_request(loaded, 2, seed=0), steps=STEPS)
    assert torch.equal(images, _images(family))
    if family == "dit":
        assert loaded.labels == pipe.labels and len(loaded.labels) == 10


def test_builtin_tiny_names_load():
    assert {f"tiny-{f}" for f in TINY_FAMILIES} <= set(builtin_names())
    pipe = load_pipeline("tiny-dit")
    assert type(pipe).__name__ == "DiTPipeline"
    # an unknown name (tiny-nope): test_models.py::test_unknown_model_is_one_line_error


def test_larger_variants_for_token_merging():
    sd = build_tiny_pipeline("sd", latent_size=64)
    assert sd.unet.config.sample_size == 64
    assert sd.unet.config.down_block_types[0] == "CrossAttnDownBlock2D"  # attention over 64*64 tokens
    request = default_request(sd, 1, seed=0)
    images = generate(sd, request, steps=1, guidance_scale=1.0)
    assert images.shape == (1, 3, 128, 128) and torch.isfinite(images).all()

    dit = build_tiny_pipeline("dit", sample_size=32, patch_size=2)
    config = dit.transformer.config
    assert (config.sample_size // config.patch_size) ** 2 == 256
    images = generate(dit, default_request(dit, 1, seed=0), steps=1)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_size_overrides_are_checked():
    with pytest.raises(ValueError, match="unknown size setting"):
        build_tiny_pipeline("sd", latnet_size=64)
    with pytest.raises(ValueError, match="unknown tiny family"):
        build_tiny_pipeline("nope")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_tiny_pipeline("dit", sample_size=15)


@pytest.mark.parametrize("offline", [True, False])
def test_unknown_hub_id_fails_fast_with_one_line(monkeypatch, offline):
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(PlannerError) as info:
        load_pipeline("some-org/does-not-exist")
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "some-org/does-not-exist" in message and "\n" not in message
