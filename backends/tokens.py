"""Token reduction for attention blocks: ToMe-style merging (`tome`) and ToDo-style key/value downsampling (`todo`).

Both act on the spatial tokens of a denoiser without touching its code:

* `tome` (after Bolya & Hoffman's token merging for Stable Diffusion): in every diffusers
  `BasicTransformerBlock` (SD-like UNets, DiT, PixArt) whose token grid is at most `max_downsample` times
  coarser than the finest, the input of self-attention (`attn1`) and of the MLP (`ff`) is reduced by
  bipartite soft matching: tokens are split into destinations (one per `stride` x `stride` cell) and
  sources; the `ratio` fraction of all tokens that are sources most similar (cosine) to some destination
  are averaged into it. The module runs on the reduced set; its output is "unmerged" (merged tokens copy
  their destination's output), so the residual stream keeps every token. The matching is computed once
  per block call from the self-attention input and reused for the MLP.
* `todo` (after Smith et al.'s token downsampling): self-attention queries keep every token, keys and
  values come from the token grid downsampled by `factor` (nearest or average pooling). Cheaper than
  matching, and it also applies to the plain attention blocks of `UNet2DModel` (4-D inputs with group norm).

Random destination choice uses a private generator reseeded at every denoiser call, so outputs are
deterministic and the global RNG is never touched. Ratio 0 installs nothing: output is bit-identical.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from backends.technique import STAGE_TOKENS, Handle, TechniqueConfig, register
from ground.anatomy import anatomy_of
from ground.hooks import Observer, Rewrite, add_forward_hook


class ToMeConfig(TechniqueConfig):
    type = "tome"
    version = 1
    stage = STAGE_TOKENS

    ratio: float = Field(0.5, ge=0.0, le=0.9)          # fraction of a block's tokens merged away
    max_downsample: Literal[1, 2, 4, 8] = 1           # act on token grids up to this much coarser than the finest
    stride: Literal[1, 2, 4] = 2                      # one destination token per stride x stride cell
    random_dst: bool = True                           # random destination within each cell (else top-left)
    merge_attn: bool = True                           # merge before self-attention
    merge_mlp: bool = True                            # merge before the MLP
    seed: int = Field(0, ge=0)


class ToDoConfig(TechniqueConfig):
    type = "todo"
    version = 1
    stage = STAGE_TOKENS

    factor: Literal[2, 3, 4] = 2                      # keys/values from a grid `factor` times coarser per axis
    max_downsample: Literal[1, 2, 4, 8] = 1           # act on token grids up to this much coarser than the finest
    method: Literal["nearest", "avg"] = "nearest"


# ----------------------------------------------------------------------------------------------- matching

def _grid(n_tokens: int, base_hw: tuple[int, int] | None) -> tuple[int, int, int] | None:
    """(h, w, downsample) of a block's token grid, from the finest grid of the current call."""
    if base_hw is None:
        side = math.isqrt(n_tokens)
        return (side, side, 1) if side * side == n_tokens else None
    h0, w0 = base_hw
    d = 1
    while d <= max(h0, w0):
        h, w = -(-h0 // d), -(-w0 // d)
        if h * w == n_tokens:
            return h, w, d
        d *= 2
    return None


def _destinations(h: int, w: int, stride: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """Boolean mask (h*w,) of destination tokens: one per full stride x stride cell."""
    hs, ws = h // stride, w // stride
    mask = torch.zeros(h, w, dtype=torch.bool)
    if hs == 0 or ws == 0:
        return mask.reshape(-1).to(device)
    if generator is not None:
        pick = torch.randint(stride * stride, (hs, ws), generator=generator)
    else:
        pick = torch.zeros(hs, ws, dtype=torch.long)
    cells = torch.zeros(hs, ws, stride * stride, dtype=torch.bool)
    cells.scatter_(2, pick[..., None], True)
    cells = cells.reshape(hs, ws, stride, stride).permute(0, 2, 1, 3).reshape(hs * stride, ws * stride)
    mask[:hs * stride, :ws * stride] = cells
    return mask.reshape(-1).to(device)


def bipartite_soft_matching(metric: torch.Tensor, dst_mask: torch.Tensor, r: int
                            ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(merge, unmerge) removing `r` tokens of `metric` (B, N, C) into their most similar destination."""
    b_idx = dst_mask.nonzero().squeeze(1)
    a_idx = (~dst_mask).nonzero().squeeze(1)
    r = min(r, a_idx.numel())
    if r <= 0 or b_idx.numel() == 0:
        return (lambda x: x), (lambda x: x)
    with torch.no_grad():
        m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        scores = m[:, a_idx] @ m[:, b_idx].transpose(-1, -2)      # B, Na, Nb
        node_max, node_idx = scores.max(dim=-1)
        order = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = order[:, r:], order[:, :r]             # B, Na-r, 1 / B, r, 1
        dst_idx = node_idx[..., None].gather(1, src_idx)          # B, r, 1
    n_unm = unm_idx.shape[1]

    def merge(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        src, dst = x[:, a_idx], x[:, b_idx]
        unm = src.gather(1, unm_idx.expand(-1, -1, c))
        moved = src.gather(1, src_idx.expand(-1, -1, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(-1, -1, c), moved, reduce="mean", include_self=True)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        bsz, _, c = x.shape
        unm, dst = x[:, :n_unm], x[:, n_unm:]
        src = torch.empty(bsz, a_idx.numel(), c, dtype=x.dtype, device=x.device)
        src.scatter_(1, unm_idx.expand(-1, -1, c), unm)
        src.scatter_(1, src_idx.expand(-1, -1, c), dst.gather(1, dst_idx.expand(-1, -1, c)))
        out = torch.empty(bsz, a_idx.numel() + b_idx.numel(), c, dtype=x.dtype, device=x.device)
        out[:, b_idx] = dst
        out[:, a_idx] = src
        return out

    return merge, unmerge


# ----------------------------------------------------------------------------------------------- targets

def _plain_self_attentions(pipe) -> list[torch.nn.Module]:
    """Self-attention modules called directly on feature maps (UNet2DModel's attention blocks)."""
    from diffusers.models.attention_processor import Attention

    inside_blocks = {id(b.attn1) for b in anatomy_of(pipe).attention_blocks()}
    return [m for m in anatomy_of(pipe).denoiser.modules() if isinstance(m, Attention) and id(m) not in inside_blocks
            and not m.is_cross_attention and m.group_norm is not None and m.norm_cross is None
            and getattr(m, "spatial_norm", None) is None]


def _tome_applicable(pipe) -> str | None:
    try:
        anatomy = anatomy_of(pipe)
        denoiser = anatomy.denoiser
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    if not anatomy.attention_blocks():
        return f"{type(denoiser).__name__} has no BasicTransformerBlock (SD-like UNet, DiT or PixArt) to merge tokens in"
    return None


def _todo_applicable(pipe) -> str | None:
    try:
        anatomy = anatomy_of(pipe)
        denoiser = anatomy.denoiser
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    if not anatomy.attention_blocks() and not _plain_self_attentions(pipe):
        return f"{type(denoiser).__name__} has no spatial self-attention to downsample"
    return None


class _CallState:
    """Finest token grid of the current denoiser call, recorded by a pre-hook on the denoiser."""

    def __init__(self, denoiser, seed: int | None) -> None:
        cfg = getattr(denoiser, "config", {})
        self.patch = int(cfg.get("patch_size", None) or 1) if hasattr(cfg, "get") else 1
        self.base_hw: tuple[int, int] | None = None
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def pre_hook(self, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            self.base_hw = (-(-x.shape[-2] // self.patch), -(-x.shape[-1] // self.patch))
        else:
            self.base_hw = None
        if self.generator is not None:
            self.generator.manual_seed(self.seed)
        return None


def _install_state(denoiser, seed: int | None, name: str) -> tuple[_CallState, Callable[[], None]]:
    state = _CallState(denoiser, seed)
    return state, add_forward_hook(denoiser, name, Observer(pre=state.pre_hook))


@register(ToMeConfig, applicable=_tome_applicable)
def apply_tome(pipe, config: ToMeConfig) -> Handle:
    anatomy = anatomy_of(pipe)
    denoiser, blocks, name = anatomy.denoiser, anatomy.attention_blocks(), "planner.tome"
    if config.ratio == 0 or not (config.merge_attn or config.merge_mlp):
        return Handle(config, lambda: None, info={"blocks": 0, "note": "ratio 0: nothing installed"})
    state, remove_hook = _install_state(denoiser, config.seed if config.random_dst else None, name)
    undos: list[Callable[[], None]] = [remove_hook]
    stats = {"merged_calls": 0, "skipped_calls": 0}

    for block in blocks:
        current: dict = {}

        def attn1(_orig, hidden_states, *args, _cur=current, **kwargs):
            _cur.clear()
            enc = kwargs.get("encoder_hidden_states", args[0] if args else None)
            masked = kwargs.get("attention_mask") is not None
            grid = _grid(hidden_states.shape[1], state.base_hw) if hidden_states.ndim == 3 and enc is None \
                and not masked else None
            if grid is None or grid[2] > config.max_downsample:
                stats["skipped_calls"] += 1
                return _orig(hidden_states, *args, **kwargs)
            h, w, _ = grid
            dst = _destinations(h, w, config.stride, state.generator, hidden_states.device)
            r = int(hidden_states.shape[1] * config.ratio)
            merge, unmerge = bipartite_soft_matching(hidden_states, dst, r)
            _cur["fns"] = (merge, unmerge)
            stats["merged_calls"] += 1
            if not config.merge_attn:
                return _orig(hidden_states, *args, **kwargs)
            return unmerge(_orig(merge(hidden_states), *args, **kwargs))

        def ff(_orig, hidden_states, *args, _cur=current, **kwargs):
            fns = _cur.pop("fns", None)
            if fns is None or not config.merge_mlp or hidden_states.ndim != 3:
                return _orig(hidden_states, *args, **kwargs)
            merge, unmerge = fns
            return unmerge(_orig(merge(hidden_states), *args, **kwargs))

        undos.append(add_forward_hook(block.attn1, name, Rewrite(attn1)))
        undos.append(add_forward_hook(block.ff, name, Rewrite(ff)))

    def undo() -> None:
        for fn in reversed(undos):
            fn()
    return Handle(config, undo, info={"blocks": len(blocks), "stats": stats})


def _downsample_map(x: torch.Tensor, factor: int, method: str) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, ceil(h/f), ceil(w/f))."""
    if method == "avg":
        return F.avg_pool2d(x, factor, ceil_mode=True)
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(-(-h // factor), -(-w // factor)), mode="nearest")


@register(ToDoConfig, applicable=_todo_applicable)
def apply_todo(pipe, config: ToDoConfig) -> Handle:
    anatomy = anatomy_of(pipe)
    name = "planner.todo"
    state, remove_hook = _install_state(anatomy.denoiser, None, name)
    undos: list[Callable[[], None]] = [remove_hook]
    targets = [b.attn1 for b in anatomy.attention_blocks()
               if not b.only_cross_attention and b.attn1.norm_cross is None]
    plain = _plain_self_attentions(pipe)

    def token_attention(attn):
        def forward(original, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            if encoder_hidden_states is not None or hidden_states.ndim != 3 or args or \
                    kwargs.get("attention_mask") is not None:
                return original(hidden_states, encoder_hidden_states, *args, **kwargs)
            grid = _grid(hidden_states.shape[1], state.base_hw)
            if grid is None or grid[2] > config.max_downsample or min(grid[:2]) < config.factor:
                return original(hidden_states, **kwargs)
            h, w, _ = grid
            b, n, c = hidden_states.shape
            fmap = hidden_states.transpose(1, 2).reshape(b, c, h, w)
            kv = _downsample_map(fmap, config.factor, config.method).flatten(2).transpose(1, 2)
            return original(hidden_states, encoder_hidden_states=kv, **kwargs)
        return forward

    def map_attention(attn):
        def forward(original, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            if encoder_hidden_states is not None or hidden_states.ndim != 4 or args or kwargs.get("attention_mask") is not None:
                return original(hidden_states, encoder_hidden_states, *args, **kwargs)
            b, c, h, w = hidden_states.shape
            base = state.base_hw
            d = max(1, base[0] // h) if base else 1
            if d > config.max_downsample or min(h, w) < config.factor:
                return original(hidden_states, **kwargs)
            # As diffusers' AttnProcessor2_0, with keys/values from the downsampled group-normed map.
            normed = attn.group_norm(hidden_states.reshape(b, c, h * w)).reshape(b, c, h, w)
            kv = _downsample_map(normed, config.factor, config.method).flatten(2).transpose(1, 2)
            q = attn.to_q(normed.flatten(2).transpose(1, 2))
            k, v = attn.to_k(kv), attn.to_v(kv)
            head = k.shape[-1] // attn.heads
            q, k, v = (t.view(b, -1, attn.heads, head).transpose(1, 2) for t in (q, k, v))
            if attn.norm_q is not None:
                q = attn.norm_q(q)
            if attn.norm_k is not None:
                k = attn.norm_k(k)
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, attn.heads * head)
            out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
            out = out.transpose(-1, -2).reshape(b, c, h, w)
            if attn.residual_connection:
                out = out + hidden_states
            return out / attn.rescale_output_factor
        return forward

    for attn in targets:
        undos.append(add_forward_hook(attn, name, Rewrite(token_attention(attn))))
    for attn in plain:
        undos.append(add_forward_hook(attn, name, Rewrite(map_attention(attn))))

    def undo() -> None:
        for fn in reversed(undos):
            fn()
    return Handle(config, undo, info={"attentions": len(targets) + len(plain)})
