"""Which modules of a denoiser the profiler hooks, and how it reads their inputs and outputs.

Level 0 ("top-level") entries partition the denoiser's forward pass: the main blocks (UNet
`down_blocks.i`, `mid_block`, `up_blocks.i`; transformer `transformer_blocks.i`,
`single_transformer_blocks.i`) with role "block", and every other direct child of the denoiser that
runs (embeddings, `conv_in`, `norm_out`, `proj_out`, ...) with role "io". Level 1 entries nest inside
a level-0 block (role "sub"): a UNet block's `resnets.j` and `attentions.j`; a transformer block's
attention and feed-forward children. Level-0 latencies therefore add up to the denoiser's time (less
the Python glue between them); level-1 latencies are a breakdown of their parent's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ground.anatomy import anatomy_of

UNET_SUB_LISTS = ("resnets", "attentions")


@dataclass
class BlockSpec:
    name: str
    module: torch.nn.Module
    level: int
    role: str                     # "block" | "io" | "sub"
    parent: str | None = None
    attention: bool = False       # token similarity is measured on its input
    extra: dict = field(default_factory=dict)


def _is_attention(module: torch.nn.Module) -> bool:
    from diffusers.models.attention_processor import Attention

    return isinstance(module, Attention) or type(module).__name__ in ("Attention", "FluxAttention",
                                                                      "SD3Attention", "JointAttention")


def _is_feedforward(module: torch.nn.Module) -> bool:
    return type(module).__name__ in ("FeedForward", "GELU", "SwiGLU")


def _contains_attention(module: torch.nn.Module) -> bool:
    return any(_is_attention(m) for m in module.modules())


def discover_blocks(pipe) -> list[BlockSpec]:
    """Level-0 entries in the order of `named_children` (forward order for diffusers models), each
    block followed by its level-1 sub-blocks. The main blocks are the pipeline's anatomy's (the one
    enumeration of blocks every technique uses). Entries that never run are dropped after profiling."""
    anatomy = anatomy_of(pipe)
    main = {b.name for b in anatomy.blocks()}
    lists = {name.split(".")[0] for name in main if "." in name}
    specs: list[BlockSpec] = []
    for child_name, child in anatomy.denoiser.named_children():
        if child_name in lists:
            for i, block in enumerate(child):
                specs.extend(_block_and_subs(f"{child_name}.{i}", block))
        elif child_name in main and child is not None:
            specs.extend(_block_and_subs(child_name, child))
        elif isinstance(child, torch.nn.ModuleList):
            for i, m in enumerate(child):  # e.g. controlnet projections; rarely run
                specs.append(BlockSpec(f"{child_name}.{i}", m, 0, "io"))
        else:
            specs.append(BlockSpec(child_name, child, 0, "io"))
    return specs


def _block_and_subs(name: str, block: torch.nn.Module) -> list[BlockSpec]:
    subs: list[BlockSpec] = []
    is_unet_block = any(isinstance(getattr(block, n, None), torch.nn.ModuleList) for n in UNET_SUB_LISTS)
    if is_unet_block:
        for list_name in UNET_SUB_LISTS:
            modules = getattr(block, list_name, None)
            if not isinstance(modules, torch.nn.ModuleList):
                continue
            for j, m in enumerate(modules):
                if m is None:
                    continue
                subs.append(BlockSpec(f"{name}.{list_name}.{j}", m, 1, "sub", parent=name,
                                      attention=list_name == "attentions"))
        # forward order inside UNet blocks interleaves resnets/attentions; sort by index then kind
        subs.sort(key=lambda s: (int(s.name.rsplit(".", 1)[1]), 0 if ".resnets." in s.name else 1))
        top = BlockSpec(name, block, 0, "block", attention=False)
    else:
        for child_name, child in block.named_children():
            if child is None:
                continue
            if _is_attention(child) or _is_feedforward(child):
                subs.append(BlockSpec(f"{name}.{child_name}", child, 1, "sub", parent=name))
        top = BlockSpec(name, block, 0, "block", attention=_contains_attention(block))
    return [top] + subs


def tensors_in(obj) -> list[torch.Tensor]:
    """Every tensor in a (nested) output, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in tensors_in(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors_in(o)]
    sample = getattr(obj, "sample", None)
    if isinstance(sample, torch.Tensor):
        return [sample]
    return []


def primary_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The hidden states a block transforms: `hidden_states`/`sample` keyword, else the first tensor."""
    for key in ("hidden_states", "sample", "input_tensor", "x"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    return None


def primary_output(output, reference: torch.Tensor | None) -> torch.Tensor | None:
    """The hidden states a block produces.

    A tensor is itself; an output object its `.sample`; a tuple its last top-level tensor of the input's
    shape (FLUX/SD3 blocks return `(encoder_hidden_states, hidden_states)`), else its first top-level
    tensor (UNet down blocks return `(hidden_states, residual_tuple)`).
    """
    if isinstance(output, torch.Tensor):
        return output
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    if isinstance(output, (tuple, list)):
        top = [o for o in output if isinstance(o, torch.Tensor)]
        if not top:
            return None
        if reference is not None:
            matching = [o for o in top if o.shape == reference.shape]
            if matching:
                return matching[-1]
        return top[0]
    return None
