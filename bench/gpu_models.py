"""Real diffusers denoisers at real size with seeded random weights, for `bench.gpu` (no download).

Each model is the real diffusers class built from its config, wrapped in its real pipeline with a tiny
text encoder (its width matches the denoiser's text dimension, one layer) and a tiny 2-level VAE (scale
factor 2: a 64x64 latent is a 128x128 image), so pipeline-level code (schedulers, caches, the profiler)
runs as on the real model while all the time goes to the denoiser.

Big denoisers are built FAST: parameters on the meta device (accelerate.init_empty_weights, buffers kept
real), `to_empty` on the target device, then every parameter filled ON that device with seeded
normal(0, 0.02) (norm weights 1, biases 0), in sorted name order: same seed, same weights.

    sd15    UNet2DConditionModel, SD1.5 config (320/640/1280/1280, 8 heads, cross-attention 768), 64x64 latents
    pixart  PixArtTransformer2DModel, PixArt-alpha 512 (28 layers, 16 heads x 72, caption 4096), 1024 tokens
    flux    FluxTransformer2DModel, 4 double + 8 single blocks, 24 heads x 128, text 4096; 1024 image tokens
`tiny=True` gives the same classes and code paths at a few M parameters.
"""
from __future__ import annotations

import time

import torch

MODELS = ("sd15", "pixart", "flux")

REAL = {
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "pixart": dict(sample_size=64, patch_size=2, in_channels=4, out_channels=8, num_layers=28,
                   num_attention_heads=16, attention_head_dim=72, cross_attention_dim=1152, caption_channels=4096,
                   num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False,
                   norm_eps=1e-6, use_additional_conditions=False),
    "flux": dict(patch_size=1, in_channels=64, out_channels=None, num_layers=4, num_single_layers=8,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                 pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=(16, 56, 56)),
}
TINY = {
    "sd15": dict(REAL["sd15"], sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                 cross_attention_dim=32, attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    "pixart": dict(REAL["pixart"], sample_size=16, num_layers=2, num_attention_heads=2, attention_head_dim=16,
                   cross_attention_dim=32, caption_channels=32),
    "flux": dict(REAL["flux"], num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
}
LATENT = {"sd15": 4, "pixart": 4, "flux": 16}        # VAE latent channels
TEXT_TOKENS = {"sd15": 77, "pixart": 120, "flux": 512}


def init_weights(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Seeded normal(0, std) for every parameter, filled on its own device (norm weights 1, biases 0)."""
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)
    special = {}
    for name, m in module.named_modules():
        if isinstance(m, norms) or type(m).__name__ in ("RMSNorm", "LayerNorm", "FP32LayerNorm"):
            for pname, _ in m.named_parameters(recurse=False):
                special[f"{name}.{pname}" if name else pname] = 1.0 if pname == "weight" else 0.0
    params = dict(module.named_parameters())
    device = next(iter(params.values())).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            if name in special:
                p.fill_(special[name])
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)


def build_denoiser(name: str, tiny: bool, device, dtype, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The denoiser on `device` in `dtype`, weights from `init_weights(seed)`; and its config."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

    cls = {"sd15": UNet2DConditionModel, "pixart": PixArtTransformer2DModel, "flux": FluxTransformer2DModel}[name]
    config = dict((TINY if tiny else REAL)[name])
    with init_empty_weights(include_buffers=False):
        model = cls(**config)
    buffers = {n: b.clone() for n, b in model.named_buffers()}   # real (sincos tables): kept
    model = model.to_empty(device=device).to(dtype)
    for n, b in buffers.items():
        model.get_buffer(n).copy_(b)
    init_weights(model, seed)
    return model.eval().requires_grad_(False), config


def _clip(dim: int, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    from planner.demo.tiny_pipelines import clip_tokenizer

    tok = clip_tokenizer()
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=dim, intermediate_size=2 * min(dim, 64), num_hidden_layers=1,
                         num_attention_heads=max(1, dim // 64), max_position_embeddings=tok.model_max_length,
                         projection_dim=dim, hidden_act="gelu", bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return tok, CLIPTextModel(cfg).eval()


def _t5(dim: int, seed: int, max_length: int):
    from transformers import T5Config, T5EncoderModel

    from planner.demo.tiny_pipelines import t5_tokenizer

    tok = t5_tokenizer(model_max_length=max_length)
    cfg = T5Config(vocab_size=len(tok), d_model=dim, d_kv=8, d_ff=64, num_layers=1, num_heads=1,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
                   feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id, decoder_start_token_id=0)
    torch.manual_seed(seed)
    return tok, T5EncoderModel(cfg).eval()


def _vae(latent_channels: int, latent_size: int, seed: int, flux: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=latent_size * 2,
        scaling_factor=0.3611 if flux else 0.18215, shift_factor=0.1159 if flux else None, force_upcast=False,
        use_quant_conv=not flux, use_post_quant_conv=not flux).eval()


def build_pipeline(name: str, tiny: bool, device, dtype, seed: int = 0):
    """(pipeline, info): the real pipeline class around the denoiser, all on `device` in `dtype`."""
    import diffusers

    t0 = time.perf_counter()
    denoiser, config = build_denoiser(name, tiny, device, dtype, seed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    denoiser_s = time.perf_counter() - t0
    latent = 16 if tiny else 64
    if name == "sd15":
        tok, te = _clip(config["cross_attention_dim"], seed + 1)
        sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", steps_offset=1, clip_sample=False,
                                        set_alpha_to_one=False)
        pipe = diffusers.StableDiffusionPipeline(
            vae=_vae(4, latent, seed + 2, False), text_encoder=te, tokenizer=tok, unet=denoiser, scheduler=sched,
            safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    elif name == "pixart":
        tok, te = _t5(config["caption_channels"], seed + 1, TEXT_TOKENS["pixart"])
        sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                                      num_train_timesteps=1000)
        pipe = diffusers.PixArtAlphaPipeline(tokenizer=tok, text_encoder=te, vae=_vae(4, latent, seed + 2, False),
                                             transformer=denoiser, scheduler=sched)
    else:
        tok, te = _clip(config["pooled_projection_dim"], seed + 1)
        tok2, te2 = _t5(config["joint_attention_dim"], seed + 3, TEXT_TOKENS["flux"])
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                          max_shift=1.15, base_image_seq_len=256,
                                                          max_image_seq_len=4096)
        pipe = diffusers.FluxPipeline(scheduler=sched, vae=_vae(16, latent, seed + 2, True), text_encoder=te,
                                      tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, transformer=denoiser,
                                      image_encoder=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device=device, dtype=dtype)
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in pipe.components.items()
              if isinstance(v, torch.nn.Module)}
    denoiser_name = "unet" if name == "sd15" else "transformer"
    info = {"class": type(denoiser).__name__, "pipeline": type(pipe).__name__, "denoiser": denoiser_name,
            "params": params, "denoiser_params": params[denoiser_name], "config": config,
            "latent": [LATENT[name], latent, latent], "image_side": 2 * latent, "text_tokens": TEXT_TOKENS[name],
            "tokens": latent * latent if name == "sd15" else (latent // 2) ** 2,   # UNet: at its first level
            "build_denoiser_s": round(denoiser_s, 3),
            "build_s": round(time.perf_counter() - t0, 3)}
    return pipe, info


def call_kwargs(name: str, pipe, steps: int, seed: int, device) -> dict:
    """What one benchmark pipeline call passes: one prompt, native size, final latents out."""
    import inspect

    side = int(pipe.vae.config.sample_size)   # the image side: 2x the latent side (tiny VAE)
    kwargs = {"prompt": "a photo of a cat", "num_inference_steps": steps, "height": side, "width": side,
              "generator": torch.Generator(device=device).manual_seed(seed), "output_type": "latent"}
    params = inspect.signature(pipe.__call__).parameters
    if "use_resolution_binning" in params:
        kwargs["use_resolution_binning"] = False
    if "clean_caption" in params:
        kwargs["clean_caption"] = False
    return kwargs
