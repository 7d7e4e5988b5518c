"""Tiny random-weight versions of real diffusers pipelines, built offline from configs.

Each family is the real diffusers pipeline class with real component classes (UNets, DiT/MMDiT
transformers, AutoencoderKL, CLIP and T5 text encoders, real tokenizers), only shrunk to 0.3-1.6M
parameters per pipeline, so that every code path of the planner (hooks on `unet`/`transformer`,
scheduler swaps, caching, token merging, compilation, save/load) can be exercised on a CPU in
seconds and without a model hub. The weights are random, so the images are noise-like patterns, but
they are deterministic: the same family, seed and sizes give bit-identical weights.

Families (`TINY_FAMILIES`) and the pipeline class each builds:

    sd      StableDiffusionPipeline     UNet2DConditionModel, CLIP text encoder, DDIM
    sdxl    StableDiffusionXLPipeline   UNet2DConditionModel (text_time), 2 CLIP encoders, Euler
    pixart  PixArtAlphaPipeline         PixArtTransformer2DModel, T5 encoder, DPM-Solver++
    sd3     StableDiffusion3Pipeline    SD3Transformer2DModel, 2 CLIP + T5 encoders, flow matching
    flux    FluxPipeline                FluxTransformer2DModel, CLIP + T5 encoders, flow matching
    dit     DiTPipeline                 DiTTransformer2DModel (class-conditional, 10 labels), DDIM
    ddpm    DDPMPipeline                UNet2DModel in pixel space (unconditional), DDPM
    ddim    DDIMPipeline                the same UNet2DModel with a DDIM scheduler

Sizes. Every latent family uses a 2-level AutoencoderKL (16/32 channels, 4 latent channels), so
the VAE scale factor is 2, not 8 as in the real models: a latent of side L decodes to an image of
side 2L. That keeps decoding cheap on a CPU while the denoiser sees the real latent/token counts.
Defaults: 16x16 latents (32x32 images) for sd/sdxl/pixart/sd3/flux/dit, 32x32 RGB pixels for
ddpm/ddim. `size_overrides` (all optional):

    latent_size   latent side (alias `sample_size`; pixel side for ddpm/ddim). `sd` with
                  latent_size=64 gives 4096 tokens in its full-resolution attention blocks
                  (128x128 images), the regime where token merging pays off.
    patch_size    transformer families: patch side (tokens = (latent_size / patch_size) ** 2;
                  flux always patchifies 2x2 in the pipeline). dit with sample_size=32,
                  patch_size=2 has 256 tokens.
    channels      UNet families: block_out_channels, e.g. (32, 64) (multiples of 32)
    layers        UNet: layers per block; transformers: number of blocks (flux: double blocks)
    single_layers flux only: number of single-stream blocks
    guidance_embeds  flux only: True (default) is FLUX.1-dev's shape (guidance-distilled, run at
                  28-50 steps); False is FLUX.1-schnell's (timestep-distilled to ~4 steps)
    heads, head_dim   transformers: attention heads and their width (hidden = heads * head_dim);
                  UNet families: `heads` = attention heads per block
    text_dim, text_layers   width and depth of the CLIP text encoders (T5: 2 * text_dim wide
                  for sd3, text_dim otherwise)
    vae_channels  the VAE's block_out_channels, e.g. (16, 32) (multiples of 8)

The tokenizers are real `CLIPTokenizer` (byte-level BPE over the 256-byte alphabet, no merges: one
token per character) and `T5Tokenizer` (a Unigram vocabulary of characters and a few words), both
built in memory / in a temporary folder, so nothing is downloaded.

Longer than ~400 lines because each of the eight families needs its own small builder, and the
tokenizers and size rules they share are kept beside them.
"""
from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

TINY_FAMILIES = ("sd", "sdxl", "pixart", "sd3", "flux", "dit", "ddpm", "ddim")
TINY_CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "pixart": "PixArtAlphaPipeline",
                "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline", "dit": "DiTPipeline", "ddpm": "DDPMPipeline",
                "ddim": "DDIMPipeline"}
TINY_DESCRIPTIONS = {
    "sd": "StableDiffusionPipeline at tiny size, random weights", "sdxl": "StableDiffusionXLPipeline, tiny, random",
    "pixart": "PixArtAlphaPipeline, tiny, random", "sd3": "StableDiffusion3Pipeline, tiny, random",
    "flux": "FluxPipeline, tiny, random", "dit": "DiTPipeline, tiny, random",
    "ddpm": "DDPMPipeline (pixel UNet), tiny, random", "ddim": "DDIMPipeline (pixel UNet), tiny, random",
}

_COMMON = {"latent_size": 16, "text_dim": 32, "text_layers": 2, "vae_channels": (16, 32)}
_DEFAULTS = {
    "sd": {**_COMMON, "channels": (32, 64), "layers": 1, "heads": 2},
    "sdxl": {**_COMMON, "channels": (32, 64), "layers": 1, "heads": 2},
    "pixart": {**_COMMON, "patch_size": 2, "layers": 2, "heads": 2, "head_dim": 16},
    "sd3": {**_COMMON, "patch_size": 2, "layers": 2, "heads": 2, "head_dim": 16},
    "flux": {**_COMMON, "layers": 1, "single_layers": 2, "heads": 2, "head_dim": 16, "guidance_embeds": True},
    "dit": {**_COMMON, "patch_size": 2, "layers": 2, "heads": 2, "head_dim": 16},
    "ddpm": {"latent_size": 32, "channels": (32, 64), "layers": 1, "heads": 4},
    "ddim": {"latent_size": 32, "channels": (32, 64), "layers": 1, "heads": 4},
}
DIT_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TOKENIZER_WORDS = (
    "a an the of on at in with and photo cat dog red car street bowl fruit mountain lake dawn "
    "portrait old man city skyline night small boat sea field flowers"
).split()


# ---------------------------------------------------------------------------------------------
# tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character map (the byte-level BPE alphabet)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_tokenizer(model_max_length: int = 77):
    """A real CLIPTokenizer over the byte alphabet (one token per character, never unknown)."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    with tempfile.TemporaryDirectory(prefix="tiny-clip-tok-") as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)


def t5_tokenizer(model_max_length: int = 512):
    """A real T5 tokenizer (Unigram, <pad>=0, </s>=1, <unk>=2) over characters and a few words."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        vocab += [(ch, -6.0), ("▁" + ch, -5.0)]
    known = {tok for tok, _ in vocab}
    vocab += [("▁" + w, -3.0) for w in _TOKENIZER_WORDS if "▁" + w not in known]
    try:  # transformers >= 5: T5Tokenizer is tokenizers-backed and takes a Unigram vocabulary
        from transformers import T5Tokenizer

        return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    except (TypeError, ImportError):  # transformers 4.x: T5Tokenizer is sentencepiece-based
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        from transformers import T5TokenizerFast

        tok = Tokenizer(models.Unigram(vocab, unk_id=2))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁")
        tok.decoder = decoders.Metaspace(replacement="▁")
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                           special_tokens=[("</s>", 1)])
        return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, model_max_length=model_max_length)


# ---------------------------------------------------------------------------------------------
# components


def _clip_config(tokenizer, dim: int, layers: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
        num_attention_heads=max(1, dim // 8), max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or dim, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _clip(tokenizer, dim: int, layers: int, with_projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(_clip_config(tokenizer, dim, layers)).eval()


def _t5(tokenizer, dim: int, layers: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=dim, d_kv=8, d_ff=2 * dim, num_layers=layers,
        num_heads=max(1, dim // 8), relative_attention_num_buckets=8, relative_attention_max_distance=32,
        dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def _vae(spec: dict, *, scaling_factor: float, shift_factor: float | None = None, quant_convs: bool = True):
    from diffusers import AutoencoderKL

    channels = tuple(spec["vae_channels"])
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels,
        layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=spec["latent_size"] * 2 ** (len(channels) - 1),
        scaling_factor=scaling_factor, shift_factor=shift_factor, force_upcast=False,
        use_quant_conv=quant_convs, use_post_quant_conv=quant_convs,
    ).eval()


def _sd_scheduler(cls_name: str):
    import diffusers

    kwargs = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  steps_offset=1)
    if cls_name == "DDIMScheduler":
        kwargs.update(clip_sample=False, set_alpha_to_one=False)
    return getattr(diffusers, cls_name)(**kwargs)


class _Seeds:
    """One seed per component, derived from the pipeline seed, set just before that component is built."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.count = 0

    def __call__(self):
        torch.manual_seed(self.seed * 1009 + self.count)
        self.count += 1


def _build_sd(spec: dict, seeds: _Seeds):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    seeds()
    text_encoder = _clip(tokenizer, spec["text_dim"], spec["text_layers"])
    channels = tuple(spec["channels"])
    seeds()
    # Attention at the full latent resolution (like SD 1.x), where token merging acts.
    unet = UNet2DConditionModel(
        sample_size=spec["latent_size"], in_channels=4, out_channels=4, block_out_channels=channels,
        layers_per_block=spec["layers"],
        down_block_types=("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1),
        cross_attention_dim=spec["text_dim"], attention_head_dim=spec["heads"], norm_num_groups=32,
    ).eval()
    seeds()
    vae = _vae(spec, scaling_factor=0.18215)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_sd_scheduler("DDIMScheduler"),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def _build_sdxl(spec: dict, seeds: _Seeds):
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    dim = spec["text_dim"]
    seeds()
    text_encoder = _clip(tokenizer, dim, spec["text_layers"])
    seeds()
    text_encoder_2 = _clip(tokenizer_2, dim, spec["text_layers"], with_projection=True)
    channels = tuple(spec["channels"])
    time_dim = 8
    seeds()
    # Like SDXL: no attention at the highest resolution, deeper transformers further down.
    unet = UNet2DConditionModel(
        sample_size=spec["latent_size"], in_channels=4, out_channels=4, block_out_channels=channels,
        layers_per_block=spec["layers"],
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        transformer_layers_per_block=tuple(range(1, len(channels) + 1)),
        attention_head_dim=tuple(spec["heads"] * 2 ** i for i in range(len(channels))),
        use_linear_projection=True, cross_attention_dim=2 * dim, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + dim,
        norm_num_groups=32,
    ).eval()
    seeds()
    vae = _vae(spec, scaling_factor=0.13025)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_sd_scheduler("EulerDiscreteScheduler"),
        image_encoder=None, feature_extractor=None, add_watermarker=False,
    )


def _build_pixart(spec: dict, seeds: _Seeds):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tokenizer = t5_tokenizer()
    dim = spec["text_dim"]
    seeds()
    text_encoder = _t5(tokenizer, dim, spec["text_layers"])
    hidden = spec["heads"] * spec["head_dim"]
    seeds()
    transformer = PixArtTransformer2DModel(
        sample_size=spec["latent_size"], patch_size=spec["patch_size"], in_channels=4, out_channels=8,
        num_layers=spec["layers"], num_attention_heads=spec["heads"], attention_head_dim=spec["head_dim"],
        cross_attention_dim=hidden, caption_channels=dim, num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False,
    ).eval()
    seeds()
    vae = _vae(spec, scaling_factor=0.18215)
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                            num_train_timesteps=1000)
    return PixArtAlphaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                               transformer=transformer, scheduler=scheduler)


def _build_sd3(spec: dict, seeds: _Seeds):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(), t5_tokenizer()
    dim = spec["text_dim"]
    seeds()
    text_encoder = _clip(tokenizer, dim, spec["text_layers"], with_projection=True)
    seeds()
    text_encoder_2 = _clip(tokenizer_2, dim, spec["text_layers"], with_projection=True)
    seeds()
    # As in SD3, the T5 width equals the two CLIP widths side by side (the CLIP embeddings are
    # zero-padded to it and concatenated with the T5 ones along the sequence).
    text_encoder_3 = _t5(tokenizer_3, 2 * dim, spec["text_layers"])
    hidden = spec["heads"] * spec["head_dim"]
    seeds()
    transformer = SD3Transformer2DModel(
        sample_size=spec["latent_size"], patch_size=spec["patch_size"], in_channels=4, out_channels=4,
        num_layers=spec["layers"], attention_head_dim=spec["head_dim"], num_attention_heads=spec["heads"],
        joint_attention_dim=2 * dim, caption_projection_dim=hidden, pooled_projection_dim=2 * dim,
        pos_embed_max_size=max(32, spec["latent_size"] // spec["patch_size"]),
    ).eval()
    seeds()
    vae = _vae(spec, scaling_factor=1.5305, shift_factor=0.0609, quant_convs=False)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, image_encoder=None, feature_extractor=None,
    )


def _build_flux(spec: dict, seeds: _Seeds):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    dim = spec["text_dim"]
    seeds()
    text_encoder = _clip(tokenizer, dim, spec["text_layers"])
    seeds()
    text_encoder_2 = _t5(tokenizer_2, dim, spec["text_layers"])
    head_dim = spec["head_dim"]
    if head_dim % 4:
        raise ValueError("flux: head_dim must be a multiple of 4 (it is split over 3 RoPE axes)")
    axes = (head_dim // 4, 3 * head_dim // 8 // 2 * 2, 0)
    axes = (axes[0], axes[1], head_dim - axes[0] - axes[1])
    seeds()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=None, num_layers=spec["layers"],
        num_single_layers=spec["single_layers"], attention_head_dim=head_dim, num_attention_heads=spec["heads"],
        joint_attention_dim=dim, pooled_projection_dim=dim, guidance_embeds=bool(spec["guidance_embeds"]),
        axes_dims_rope=axes,
    ).eval()
    seeds()
    vae = _vae(spec, scaling_factor=0.3611, shift_factor=0.1159, quant_convs=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
                        image_encoder=None, feature_extractor=None)


def _build_dit(spec: dict, seeds: _Seeds):
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    seeds()
    # DiTPipeline hard-codes the null (unconditional) class as 1000, so the label table keeps
    # ImageNet's 1000 (+1) rows; only the first len(DIT_LABELS) are named and used.
    transformer = DiTTransformer2DModel(
        sample_size=spec["latent_size"], patch_size=spec["patch_size"], in_channels=4, out_channels=8,
        num_layers=spec["layers"], num_attention_heads=spec["heads"], attention_head_dim=spec["head_dim"],
        num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
    ).eval()
    seeds()
    vae = _vae(spec, scaling_factor=0.18215)
    id2label = {i: name for i, name in enumerate(DIT_LABELS)}
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=id2label)
    # DiTPipeline does not record id2label in its config; register it so that save_pretrained
    # writes it to model_index.json and from_pretrained passes it back to __init__.
    pipe.register_to_config(id2label={str(k): v for k, v in id2label.items()})
    return pipe


def _pixel_unet(spec: dict, seeds: _Seeds):
    from diffusers import UNet2DModel

    channels = tuple(spec["channels"])
    seeds()
    return UNet2DModel(
        sample_size=spec["latent_size"], in_channels=3, out_channels=3, block_out_channels=channels,
        layers_per_block=spec["layers"], down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("AttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        attention_head_dim=max(1, channels[-1] // spec["heads"]), norm_num_groups=32,
    ).eval()


def _build_ddpm(spec: dict, seeds: _Seeds):
    from diffusers import DDPMPipeline, DDPMScheduler

    return DDPMPipeline(unet=_pixel_unet(spec, seeds), scheduler=DDPMScheduler(num_train_timesteps=1000))


def _build_ddim(spec: dict, seeds: _Seeds):
    from diffusers import DDIMPipeline, DDIMScheduler

    return DDIMPipeline(unet=_pixel_unet(spec, seeds), scheduler=DDIMScheduler(num_train_timesteps=1000))


_BUILDERS = {"sd": _build_sd, "sdxl": _build_sdxl, "pixart": _build_pixart, "sd3": _build_sd3,
             "flux": _build_flux, "dit": _build_dit, "ddpm": _build_ddpm, "ddim": _build_ddim}


def tiny_spec(family: str, **size_overrides) -> dict:
    """The size settings `build_tiny_pipeline(family, **size_overrides)` uses (see module doc)."""
    if family not in _DEFAULTS:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    spec = dict(_DEFAULTS[family])
    overrides = dict(size_overrides)
    if "sample_size" in overrides:
        if "latent_size" in overrides and overrides["latent_size"] != overrides["sample_size"]:
            raise ValueError("give latent_size or its alias sample_size, not both")
        overrides["latent_size"] = overrides.pop("sample_size")
    unknown = sorted(set(overrides) - set(spec))
    if unknown:
        raise ValueError(f"tiny-{family}: unknown size setting(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(sorted(spec))} (and sample_size, an alias of latent_size)")
    spec.update(overrides)
    levels = len(spec.get("channels", (0, 0)))
    if family in ("sd", "sdxl", "ddpm", "ddim") and spec["latent_size"] % 2 ** (levels - 1):
        raise ValueError(f"tiny-{family}: latent_size must be a multiple of {2 ** (levels - 1)}")
    if "patch_size" in spec and spec["latent_size"] % spec["patch_size"]:
        raise ValueError(f"tiny-{family}: latent_size must be a multiple of patch_size")
    if family == "flux" and spec["latent_size"] % 2:
        raise ValueError("tiny-flux: latent_size must be even (the pipeline packs 2x2 latent patches)")
    return spec


def build_tiny_pipeline(family: str, seed: int = 0, **size_overrides):
    """A tiny random-weight diffusers pipeline of `family` (see module doc), on CPU in float32.

    Deterministic: the same (family, seed, size_overrides) gives bit-identical weights. The global
    torch RNG state is left as it was.
    """
    spec = tiny_spec(family, **size_overrides)
    with torch.random.fork_rng(devices=[]):
        pipe = _BUILDERS[family](spec, _Seeds(seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_count(pipe) -> dict[str, int]:
    """Parameters per torch component of a pipeline (for reports)."""
    counts = {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            counts[name] = sum(p.numel() for p in component.parameters())
    return counts
