"""Every family's adapter: the right one is picked, its blocks are the denoiser's in execution order,
its CFG layout is what the pipeline really does, and its modulated-input watcher sees a tensor per call."""
import pytest
import torch

from ground.anatomy import anatomy_of
from ground.generation import default_request, generate
from ground.hooks import attached

# name -> (adapter family, conditioning, batched-CFG conditional index or None, UNet?)
FAMILIES = {
    "tiny-sd": ("stable-diffusion", "text", 1, True),
    "tiny-sdxl": ("stable-diffusion", "text", 1, True),
    "tiny-pixart": ("pixart", "text", 1, False),
    "tiny-sd3": ("sd3", "text", 1, False),
    "tiny-flux": ("flux", "text", None, False),
    "tiny-dit": ("dit", "class", 0, False),
    "tiny-ddpm": ("unconditional-unet", "unconditional", None, True),
    "digits-unet": ("digits", "class", 0, True),
    "digits-dit": ("digits", "class", 0, False),
}
_PIPES: dict = {}


def _pipe(name):
    from planner.models import load_pipeline

    if name not in _PIPES:
        _PIPES[name] = load_pipeline(name)
    return _PIPES[name]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_adapter_reads_the_family(name):
    family, conditioning, cond_index, unet = FAMILIES[name]
    anatomy = anatomy_of(_pipe(name))
    assert anatomy.family == family and anatomy.conditioning == conditioning and anatomy.is_unet == unet
    assert (anatomy.cfg_layout.cond_index if anatomy.cfg_layout else None) == cond_index
    blocks = anatomy.blocks()
    assert blocks and all(dict(anatomy.denoiser.named_modules())[b.name] is b.module for b in blocks)
    if unet:
        assert [b.kind for b in blocks][0] == "down" and "up" in [b.kind for b in blocks]
        assert anatomy.transformer_blocks() == [] and anatomy.residual_blocks()
    else:
        assert anatomy.transformer_blocks() == blocks


@pytest.mark.parametrize("name", [n for n, v in FAMILIES.items() if v[2] is not None])
def test_batched_cfg_is_what_the_pipeline_does(name):
    """The adapter's claim, checked against the calls: one denoiser call per step on twice the rows,
    recognised as guided by `cfg_active`."""
    pipe = _pipe(name)
    anatomy = anatomy_of(pipe)
    seen = []

    def look(module, args, kwargs):
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        seen.append((sample.shape[0], anatomy.cfg_active(sample, kwargs)))

    handle = anatomy.denoiser.register_forward_pre_hook(look, with_kwargs=True)
    try:
        generate(pipe, default_request(pipe, 2), steps=2, guidance_scale=4.0)
    finally:
        handle.remove()
    assert seen and all(rows == 4 and guided for rows, guided in seen)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_modulated_input_is_watched_once_per_denoiser_call(name):
    pipe = _pipe(name)
    seen = []
    source, undo = anatomy_of(pipe).watch_modulated_input(seen.append, "planner.test")
    try:
        generate(pipe, default_request(pipe, 1), steps=2)
    finally:
        undo()
    assert source and len(seen) >= 2 and all(torch.is_tensor(t) for t in seen)
    assert attached(pipe) == []


def test_an_unknown_pipeline_gets_the_generic_reading():
    class Holder:
        def __init__(self, unet):
            self.unet = unet

        def __call__(self, prompt=None):
            return None

    anatomy = anatomy_of(Holder(_pipe("tiny-sd").unet))
    assert anatomy.family == "generic" and anatomy.cfg_layout is None and anatomy.conditioning == "text"


def test_flux_distillation_is_read_from_the_guidance_embedding():
    from planner.demo.tiny_pipelines import build_tiny_pipeline

    assert anatomy_of(_pipe("tiny-flux")).distilled() is None                     # FLUX.1-dev's shape
    schnell = anatomy_of(build_tiny_pipeline("flux", guidance_embeds=False)).distilled()
    assert schnell and "no guidance embedding" in schnell
