"""The anatomy of a pipeline, as every other part of the planner sees it, and the adapter registry.

An adapter answers, for one family of pipelines, what generic code must not guess: which component is
the denoiser, its blocks in execution order (the one enumeration every technique and the profiler use),
how a call is conditioned (text, class labels, nothing), whether classifier-free guidance is batched into
one denoiser call and in which order, which module gives the timestep-modulated input TeaCache watches,
which feature network suits its images, and whether the model is distilled to few steps.

`Anatomy` itself is the generic adapter: it reads what any diffusers pipeline exposes and claims nothing
it cannot see (no batched CFG, no classes). Family adapters (`ground/anatomy/<family>.py`) subclass it,
override what differs and `register_adapter` themselves; `anatomy_of(pipe)` picks the matching one with
the highest priority. A new family is one such file plus its tests (README: "Adding a pipeline family").
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ground.devices import device_of, dtype_of
from ground.errors import PlannerError

DENOISER_NAMES = ("transformer", "unet")
TRANSFORMER_LISTS = (("transformer_blocks", "transformer"), ("single_transformer_blocks", "single"),
                     ("blocks", "transformer"), ("layers", "transformer"))
UNET_UNITS = ("resnets", "attentions", "downsamplers", "upsamplers")


@dataclass(frozen=True)
class Block:
    """One main block of a denoiser: `name` as in `named_modules`, kind down|mid|up|transformer|single."""

    name: str
    module: torch.nn.Module
    kind: str


@dataclass(frozen=True)
class CFGLayout:
    """Batched classifier-free guidance: one denoiser call carries both halves of the batch.

    cond_index: 0 for [cond; uncond] (DiT, the demo pipelines), 1 for [uncond; cond] (the Stable
    Diffusion family, PixArt, SD3). null_class: for class-conditional pipelines, the label the
    unconditional rows carry (a call is guided when its unconditional half carries only it); None where
    the pipeline's `do_classifier_free_guidance` property tells.
    """

    cond_index: int
    null_class: int | None = None


class Anatomy:
    """The generic adapter (see the module doc); family adapters override its attributes and methods."""

    family = "generic"
    priority = 0
    cfg_layout: CFGLayout | None = None      # batched CFG, or None: not batched or not known to be
    default_features = "inception"            # the FID/KID feature network for this family's images

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    @classmethod
    def matches(cls, pipe) -> bool:
        return True

    # the denoiser ------------------------------------------------------------------------------------
    @property
    def denoiser_name(self) -> str:
        for name in DENOISER_NAMES:
            if isinstance(getattr(self.pipe, name, None), torch.nn.Module):
                return name
        raise PlannerError(f"{type(self.pipe).__name__}: no `transformer` or `unet` component to accelerate")

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return device_of(self.denoiser)

    @property
    def dtype(self) -> torch.dtype:
        return dtype_of(self.denoiser)

    @property
    def is_unet(self) -> bool:
        d = self.denoiser
        return isinstance(getattr(d, "down_blocks", None), torch.nn.ModuleList) and \
            isinstance(getattr(d, "up_blocks", None), torch.nn.ModuleList)

    # conditioning ------------------------------------------------------------------------------------
    @property
    def call_parameters(self) -> set[str]:
        return set(inspect.signature(type(self.pipe).__call__).parameters)

    @property
    def conditioning(self) -> str:
        """'text' (prompts), 'class' (class labels) or 'unconditional'."""
        params = self.call_parameters
        if "prompt" in params:
            return "text"
        if "class_labels" in params:
            return "class"
        return "unconditional"

    @property
    def num_classes(self) -> int | None:
        return None

    def cfg_active(self, sample: torch.Tensor, kwargs: dict) -> bool:
        """Does this denoiser call (its main input `sample`, its keyword arguments) carry a batched CFG
        pair? Class-conditional layouts tell by the null label in the unconditional half; others by the
        pipeline's `do_classifier_free_guidance` property where it has one, else by the two halves of the
        input being the same latents (every batched-CFG pipeline duplicates them)."""
        layout = self.cfg_layout
        batch = sample.shape[0] if torch.is_tensor(sample) and sample.ndim else 0
        if layout is None or batch < 2 or batch % 2:
            return False
        half = batch // 2
        if layout.null_class is not None:
            labels = kwargs.get("class_labels")
            if not torch.is_tensor(labels) or labels.shape[0] != batch:
                return False
            uncond = labels[(1 - layout.cond_index) * half:(2 - layout.cond_index) * half]
            cond = labels[layout.cond_index * half:(layout.cond_index + 1) * half]
            return bool((uncond == layout.null_class).all()) and not bool((cond == layout.null_class).any())
        if isinstance(getattr(type(self.pipe), "do_classifier_free_guidance", None), property):
            return bool(self.pipe.do_classifier_free_guidance)
        return bool(torch.equal(sample[:half], sample[half:]))

    # blocks: the one enumeration ----------------------------------------------------------------------
    def blocks(self) -> list[Block]:
        """Main blocks in execution order: a UNet's down/mid/up blocks, else the transformer chain
        (double-stream blocks before single-stream ones)."""
        d = self.denoiser
        if self.is_unet:
            found = [Block(f"down_blocks.{i}", m, "down") for i, m in enumerate(d.down_blocks)]
            if isinstance(getattr(d, "mid_block", None), torch.nn.Module):
                found.append(Block("mid_block", d.mid_block, "mid"))
            return found + [Block(f"up_blocks.{i}", m, "up") for i, m in enumerate(d.up_blocks)]
        found = []
        for list_name, kind in TRANSFORMER_LISTS:
            modules = getattr(d, list_name, None)
            if isinstance(modules, torch.nn.ModuleList):
                found += [Block(f"{list_name}.{i}", m, kind) for i, m in enumerate(modules)]
        return found

    def transformer_blocks(self) -> list[Block]:
        """The residual chain of a transformer (what block caches skip); empty for a UNet."""
        return [] if self.is_unet else self.blocks()

    def unet_units(self) -> list[tuple[str, torch.nn.Module]]:
        """A UNet's resnets, attentions and resamplers inside its main blocks, in execution order."""
        out = []
        for block in self.blocks():
            for unit in UNET_UNITS:
                modules = getattr(block.module, unit, None)
                if isinstance(modules, torch.nn.ModuleList):
                    out += [(f"{block.name}.{unit}.{j}", m) for j, m in enumerate(modules) if m is not None]
        return out

    def residual_blocks(self) -> list[tuple[str, torch.nn.Module]]:
        """Blocks whose output has the shape of their input, so they can be skipped by adding a cached
        residual: the transformer chain; in a UNet its attention sub-blocks (with a residual connection)
        and the resnets that keep channels and resolution."""
        if not self.is_unet:
            return [(b.name, b.module) for b in self.transformer_blocks()]
        out = []
        for name, m in self.unet_units():
            kind = name.split(".")[-2]
            if kind == "attentions" and getattr(m, "residual_connection", True) is not False:
                out.append((name, m))
            elif kind == "resnets" and _same_shape_resnet(m):
                out.append((name, m))
        return out

    def work_units(self) -> list[tuple[str, torch.nn.Module]]:
        """What counted work counts: transformer blocks, or a UNet's resnets, attentions and resamplers
        (so skipping a whole UNet block and skipping one sub-block both show)."""
        return self.unet_units() if self.is_unet else [(b.name, b.module) for b in self.transformer_blocks()]

    def attention_blocks(self) -> list[torch.nn.Module]:
        """diffusers `BasicTransformerBlock`s (SD-like UNets, DiT, PixArt): where tokens can be merged."""
        from diffusers.models.attention import BasicTransformerBlock

        return [m for m in self.denoiser.modules() if isinstance(m, BasicTransformerBlock)]

    def compile_regions(self) -> list[tuple[str, torch.nn.Module]]:
        """What regional compilation compiles: the model's declared `_repeated_blocks`, else its main
        blocks (outermost only)."""
        d = self.denoiser
        names = set(getattr(d, "_repeated_blocks", None) or ())
        found = [(n, m) for n, m in d.named_modules() if n and type(m).__name__ in names]
        if not found:
            found = [(b.name, b.module) for b in self.blocks()]
        return [(n, m) for n, m in found if not any(n.startswith(o + ".") for o, _ in found if o != n)]

    # TeaCache's indicator -----------------------------------------------------------------------------
    def watch_modulated_input(self, callback: Callable[[torch.Tensor], None], name: str) -> tuple[str, Callable]:
        """Call `callback(tensor)` with the first block's timestep-modulated input at every denoiser call
        (observation only). Returns (what is watched, undo)."""
        from ground.hooks import Observer, add_forward_hook

        blocks = self.transformer_blocks()
        if blocks and isinstance(getattr(blocks[0].module, "norm1", None), torch.nn.Module):
            undo = add_forward_hook(blocks[0].module.norm1, name, Observer(post=lambda out: callback(
                out[0] if isinstance(out, tuple) else out)))
            return f"{blocks[0].name}.norm1 output (adaLN-modulated input)", undo
        if self.is_unet:
            resnets = getattr(self.denoiser.down_blocks[0], "resnets", None)
            first = resnets[0] if resnets is not None and len(resnets) else None
            if first is not None and hasattr(first, "norm2") and getattr(first, "time_emb_proj", None) is not None:
                undo = add_forward_hook(first.norm2, name, Observer(pre=lambda args, kwargs: callback(args[0])))
                return ("down_blocks.0.resnets.0.norm2 input (conv1(x) + time_emb_proj(temb): "
                        "the time-modulated input)"), undo
        for attr in ("time_embedding", "time_text_embed", "adaln_single"):
            module = getattr(self.denoiser, attr, None)
            if isinstance(module, torch.nn.Module):
                undo = add_forward_hook(module, name, Observer(post=lambda out: callback(
                    out[0] if isinstance(out, tuple) else out)))
                return f"{attr} output (the time embedding)", undo
        undo = add_forward_hook(self.denoiser, name, Observer(pre=lambda args, kwargs: callback(
            args[0] if args else kwargs.get("hidden_states", kwargs.get("sample")))))
        return "denoiser input (no time-modulated input found)", undo

    # quality -----------------------------------------------------------------------------------------
    def reference_images(self) -> torch.Tensor | None:
        """A fixed set of real images for FID (N, C, H, W in [0, 1]) where the family has one."""
        return None

    def label_classifier(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """images -> class logits, for label accuracy, where the family has a classifier."""
        return None

    # distillation ------------------------------------------------------------------------------------
    def distilled(self) -> str | None:
        """Why this model is distilled to few steps (so step cuts and caching have little to take), or None."""
        scheduler = getattr(self.pipe, "scheduler", None)
        name = type(scheduler).__name__
        if name in ("LCMScheduler", "TCDScheduler"):
            return f"its scheduler is {name} (a consistency-distilled few-step model)"
        return None


def _same_shape_resnet(module: torch.nn.Module) -> bool:
    return (type(module).__name__ == "ResnetBlock2D" and getattr(module, "conv_shortcut", None) is None
            and not getattr(module, "up", False) and not getattr(module, "down", False)
            and getattr(module, "in_channels", None) == getattr(module, "out_channels", None))


_ADAPTERS: list[type[Anatomy]] = []


def register_adapter(cls: type[Anatomy]) -> type[Anatomy]:
    """Class decorator: make `cls` a candidate for `anatomy_of` (highest `priority` that matches wins)."""
    if cls not in _ADAPTERS:
        _ADAPTERS.append(cls)
        _ADAPTERS.sort(key=lambda c: -c.priority)
    return cls


def anatomy_of(pipe) -> Anatomy:
    for cls in _ADAPTERS:
        if cls.matches(pipe):
            return cls(pipe)
    return Anatomy(pipe)


def registered_adapters() -> list[str]:
    return [cls.family for cls in _ADAPTERS]


def denoiser_of(pipe) -> torch.nn.Module:
    """The network called once per step: `transformer` where a pipeline has one, else `unet`."""
    return anatomy_of(pipe).denoiser
