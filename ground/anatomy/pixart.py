"""PixArt-alpha and PixArt-sigma: PixArtTransformer2DModel, [uncond; cond] batches.

Their blocks use `ada_norm_single`: `norm1` is a plain LayerNorm and the block modulates its output
with its `scale_shift_table` plus the timestep embedding it receives as `timestep`. The
timestep-modulated input (TeaCache's indicator, the profiler's polynomial input) is therefore computed
here, once, from those two: norm1(x) * (1 + scale_msa) + shift_msa.
"""
from __future__ import annotations

from typing import Callable

import torch

from ground.anatomy.base import Anatomy, CFGLayout, register_adapter


def modulated_input(block: torch.nn.Module, normed: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """norm1(x) * (1 + scale_msa) + shift_msa of a PixArt block, from norm1's output and the block's timestep."""
    b = normed.shape[0]
    shift, scale = (block.scale_shift_table[None] + timestep.reshape(b, 6, -1)).chunk(6, 1)[:2]
    return normed * (1 + scale) + shift


@register_adapter
class PixArtAnatomy(Anatomy):
    family = "pixart"
    priority = 10
    cfg_layout = CFGLayout(cond_index=1)

    @classmethod
    def matches(cls, pipe) -> bool:
        return type(pipe).__name__.startswith("PixArt")

    def watch_modulated_input(self, callback: Callable[[torch.Tensor], None], name: str):
        from ground.hooks import Observer, add_forward_hook

        blocks = self.transformer_blocks()
        block = blocks[0].module if blocks else None
        if block is None or getattr(block, "norm_type", None) != "ada_norm_single":
            return super().watch_modulated_input(callback, name)
        seen: dict = {}

        def keep_timestep(args, kwargs):
            seen["timestep"] = kwargs.get("timestep")

        def modulate(out):
            if seen.get("timestep") is not None:
                callback(modulated_input(block, out, seen["timestep"]))

        undo_block = add_forward_hook(block, name, Observer(pre=keep_timestep))
        undo_norm = add_forward_hook(block.norm1, name, Observer(post=modulate))

        def undo() -> None:
            undo_norm()
            undo_block()
        return f"{blocks[0].name}: norm1(x) * (1 + scale_msa) + shift_msa", undo
