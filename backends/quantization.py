"""Precision and quantisation of the denoiser: `quantize(mode=..., exclude=[...])`.

Modes
* `fp32`: identity (the baseline, kept so a plan can say so explicitly).
* `bf16`, `fp16`: weights and compute in half precision. Inputs are cast on the way in; layer groups left
  out stay in fp32 with casts around them. fp16 needs a CUDA device: on CPU it is emulated and measured
  slower than fp32 (see `fp16_cpu_reason`), so it is refused there. bf16 on CPU needs AVX-512 BF16/AMX.
* `int8_dynamic`: int8 weights, activations quantised per call. `backend="torch_ao"` uses
  `torch.ao.quantization.quantize_dynamic` (CPU; Linear layers, Conv layers with `include_conv`);
  `backend="torchao"` uses torchao's `Int8DynamicActivationInt8WeightConfig` (Linear).
* `int8_weight_only`: torchao `Int8WeightOnlyConfig` (Linear): int8 storage, dequantised on use.
* `fp8`: torchao `Float8DynamicActivationFloat8WeightConfig`, CUDA devices of compute capability >= 8.9 only.

`exclude` lists layer groups kept in full precision (`first_block`, `last_block`, `attention`, `mlp`,
`embeddings`, `io`: the input/output projections and convolutions). The handle records exactly which
modules changed. The change is a named state swap (`ground.hooks.StateSwap`): `remove()` puts back the
original module objects, parameters and buffers (same tensor objects), so the output is bit-identical
afterwards.
"""
from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from pydantic import model_validator

from backends.technique import STAGE_PRECISION, Handle, NotApplicable, TechniqueConfig, register
from ground.anatomy import anatomy_of
from ground.devices import device_of
from ground.hooks import Rewrite, StateSwap, add_forward_hook
from ground.schema import Tuple

HOOK = "planner.quantize"

Mode = Literal["fp32", "bf16", "fp16", "int8_dynamic", "int8_weight_only", "fp8"]
Group = Literal["first_block", "last_block", "attention", "mlp", "embeddings", "io"]
MODES = ("fp32", "bf16", "fp16", "int8_dynamic", "int8_weight_only", "fp8")
GROUPS = ("first_block", "last_block", "attention", "mlp", "embeddings", "io")


class QuantizeConfig(TechniqueConfig):
    type = "quantize"
    version = 1
    stage = STAGE_PRECISION

    mode: Mode = "bf16"
    backend: Literal["auto", "torch_ao", "torchao"] = "auto"   # for int8 modes
    include_conv: bool = False                                  # torch_ao int8_dynamic: Conv layers too
    exclude: Tuple(Group) = ()

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.exclude)) != len(self.exclude):
            raise ValueError("exclude lists a group twice")
        if self.mode in ("int8_weight_only", "fp8") and self.backend == "torch_ao":
            raise ValueError(f"mode {self.mode} needs backend torchao (or auto)")
        if self.include_conv and not (self.mode == "int8_dynamic" and self.backend in ("auto", "torch_ao")):
            raise ValueError("include_conv only applies to int8_dynamic with the torch_ao backend")
        if self.mode == "fp32" and self.exclude:
            raise ValueError("fp32 changes nothing: exclude must be empty")
        return self

    def label(self) -> str:
        ex = f", exclude={'+'.join(self.exclude)}" if self.exclude else ""
        return f"quantize(mode={self.mode}, backend={self.backend}{', conv' if self.include_conv else ''}{ex})"


# ------------------------------------------------------------------------------------------- device support

def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def fp16_cpu_reason() -> str:
    return ("fp16 on CPU has no fast kernels here (emulated, measured slower than fp32 on the digits DiT); "
            "use bf16 on CPU, fp16 on a CUDA GPU")


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def mode_unsupported(mode: str, device: torch.device, backend: str = "auto") -> str | None:
    """None when `mode` can run on `device`, else a one-line reason."""
    cuda = device.type == "cuda"
    if mode == "fp32":
        return None
    if mode == "bf16":
        if cuda:
            return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
        if device.type == "cpu":
            return None if cpu_supports_bf16() else "this CPU lacks AVX-512 BF16/AMX: bf16 would be emulated"
        return f"bf16 not supported on {device.type}"
    if mode == "fp16":
        return None if cuda else fp16_cpu_reason()
    if mode == "int8_dynamic":
        if backend == "torch_ao" or (backend == "auto" and device.type == "cpu"):
            if device.type != "cpu":
                return "torch.ao dynamic int8 quantisation runs on CPU only (use backend torchao on GPU)"
            if "fbgemm" not in torch.backends.quantized.supported_engines and \
                    "x86" not in torch.backends.quantized.supported_engines:
                return "this torch build has no x86/fbgemm quantised engine"
            return None
        return None if torchao_available() else "int8_dynamic on this device needs torchao (pip install torchao)"
    if mode == "int8_weight_only":
        return None if torchao_available() else "int8_weight_only needs torchao (pip install torchao)"
    if mode == "fp8":
        if not cuda:
            return "fp8 needs a CUDA GPU of compute capability >= 8.9 (Ada/Hopper)"
        if torch.cuda.get_device_capability(device) < (8, 9):
            return "fp8 needs compute capability >= 8.9; this GPU is %d.%d" % torch.cuda.get_device_capability(device)
        return None if torchao_available() else "fp8 needs torchao (pip install torchao)"
    return f"unknown mode {mode!r}"


def supported_modes(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [m for m in MODES if mode_unsupported(m, device) is None]


# ------------------------------------------------------------------------------------------- layer groups

_ATTN_WORDS = ("attn", "attention")
_MLP_WORDS = ("ff", "mlp", "feed_forward", "proj_mlp")
_EMBED_WORDS = ("embed", "emb", "time_proj", "class_embedding", "add_embedding", "pos_embed", "adaln", "norm1.emb")
_IO_NAMES = ("conv_in", "conv_out", "proj_out", "proj_in", "patch_embed", "x_embedder", "proj_out_1", "proj_out_2",
             "norm_out", "conv_norm_out")


def groups_of(denoiser, name: str, blocks: list[str]) -> set[str]:
    parts = name.split(".")
    groups = set()
    if any(any(w in p.lower() for w in _ATTN_WORDS) for p in parts):
        groups.add("attention")
    if any(p.lower() in _MLP_WORDS or p.lower().startswith(("ff", "mlp")) for p in parts):
        groups.add("mlp")
    if any(any(w in p.lower() for w in _EMBED_WORDS) for p in parts):
        groups.add("embeddings")
    if parts[0] in _IO_NAMES or not any(name == b or name.startswith(b + ".") for b in blocks) and \
            not ({"embeddings", "attention", "mlp"} & groups) and "mid_block" not in parts[0]:
        groups.add("io")
    if blocks:
        if name == blocks[0] or name.startswith(blocks[0] + "."):
            groups.add("first_block")
        if name == blocks[-1] or name.startswith(blocks[-1] + "."):
            groups.add("last_block")
    return groups


def block_names(pipe) -> list[str]:
    return [b.name for b in anatomy_of(pipe).blocks()]


def select_layers(pipe, exclude, kinds=(torch.nn.Linear,)) -> tuple[list[str], list[str]]:
    """(selected, excluded) names of leaf layers of `kinds` in the pipeline's denoiser."""
    denoiser, blocks = anatomy_of(pipe).denoiser, block_names(pipe)
    selected, excluded = [], []
    for name, module in denoiser.named_modules():
        if type(module) in kinds:
            (excluded if groups_of(denoiser, name, blocks) & set(exclude) else selected).append(name)
    return selected, excluded


# ------------------------------------------------------------------------------------------- handlers

def _applicable(pipe) -> str | None:
    try:
        anatomy_of(pipe).denoiser
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    return None


def _cast_tree(value, dtype, min_ndim: int = 0):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim >= min_ndim:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_tree(v, dtype, min_ndim) for v in value)
    if isinstance(value, dict):
        return {k: _cast_tree(v, dtype, min_ndim) for k, v in value.items()}
    return value


def _cast_output(out, dtype):
    if isinstance(out, torch.Tensor):
        return _cast_tree(out, dtype)
    if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
        out.sample = out.sample.to(dtype)
        return out
    if isinstance(out, tuple):
        return _cast_tree(out, dtype)
    return out


class _Hooks:
    """The casting hooks of one application, which can be taken off and put on again (suspend/resume)."""

    def __init__(self) -> None:
        self.placed: list[tuple[torch.nn.Module, Rewrite]] = []
        self.undos: list = []

    def cast(self, module, in_dtype, out_dtype, min_ndim: int = 0) -> None:
        """Cast floating inputs (of at least `min_ndim` dims: the denoiser keeps 1-d timesteps exact) and
        outputs of `module`."""
        def forward(original, *args, **kwargs):
            out = original(*_cast_tree(args, in_dtype, min_ndim), **_cast_tree(kwargs, in_dtype, min_ndim))
            return _cast_output(out, out_dtype)
        hook = Rewrite(forward)
        self.placed.append((module, hook))
        self.undos.append(add_forward_hook(module, HOOK, hook))

    def take_off(self) -> None:
        for fn in reversed(self.undos):
            fn()
        self.undos.clear()

    def put_on(self) -> None:
        self.undos = [add_forward_hook(module, HOOK, hook) for module, hook in self.placed]


def _outermost(names: list[str]) -> list[str]:
    names = sorted(names)
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _apply_precision(pipe, denoiser, config: QuantizeConfig, hooks: _Hooks) -> dict:
    dtype = torch.bfloat16 if config.mode == "bf16" else torch.float16
    blocks = block_names(pipe)
    # Modules the model itself declares must stay in float32 (diffusers' `_keep_in_fp32_modules`) are
    # kept like an excluded group; casting with nn.Module.to then does what diffusers' own `to` warns about.
    fp32_words = set(getattr(denoiser, "_keep_in_fp32_modules", None) or ())
    keep = [n for n, m in denoiser.named_modules()
            if n and len(list(m.children())) == 0 and any(True for _ in m.parameters(recurse=False))
            and (groups_of(denoiser, n, blocks) & set(config.exclude) or fp32_words & set(n.split(".")))]
    keep = _outermost(keep)
    original_dtype = next(denoiser.parameters()).dtype
    torch.nn.Module.to(denoiser, dtype)
    modules = dict(denoiser.named_modules())
    for name in keep:
        torch.nn.Module.to(modules[name], original_dtype)
    if keep:
        # Mixed precision: every layer with weights casts its inputs to its own dtype (code between
        # layers may read `module.dtype`, which is then no longer uniform).
        kept = set(keep)
        for name, module in modules.items():
            if name in kept:
                hooks.cast(module, original_dtype, original_dtype)
            elif name and not any(name.startswith(k + ".") for k in kept) and \
                    any(True for _ in module.parameters(recurse=False)):
                hooks.cast(module, dtype, dtype)
    # inputs cast to the compute dtype; the output comes back in it (pipelines read denoiser.dtype)
    hooks.cast(denoiser, dtype, dtype, min_ndim=2)
    return {"dtype": str(dtype), "kept_fp32": keep}


def _apply_torch_ao(pipe, denoiser, config: QuantizeConfig) -> dict:
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d) if config.include_conv \
        else (torch.nn.Linear,)
    selected, excluded = select_layers(pipe, config.exclude, kinds)
    if not selected:
        raise NotApplicable("quantize: no layers left to quantise after exclusions")
    mapping = None
    if config.include_conv:
        from torch.ao.nn.quantized import dynamic as nnqd
        from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

        mapping = dict(get_default_dynamic_quant_module_mappings())
        mapping.update({torch.nn.Conv1d: nnqd.Conv1d, torch.nn.Conv2d: nnqd.Conv2d, torch.nn.Conv3d: nnqd.Conv3d})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(denoiser, {n: default_dynamic_qconfig for n in selected}, dtype=torch.qint8,
                         mapping=mapping, inplace=True)
    return {"quantized": selected, "excluded": excluded}


def _apply_torchao(pipe, denoiser, config: QuantizeConfig) -> dict:
    from torchao.quantization import quantize_

    if config.mode == "int8_dynamic":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig as Cfg
    elif config.mode == "int8_weight_only":
        from torchao.quantization import Int8WeightOnlyConfig as Cfg
    else:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig as Cfg
    selected, excluded = select_layers(pipe, config.exclude)
    if not selected:
        raise NotApplicable("quantize: no layers left to quantise after exclusions")
    chosen = set(selected)
    quantize_(denoiser, Cfg(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in chosen)
    return {"quantized": selected, "excluded": excluded}


@register(QuantizeConfig, applicable=_applicable)
def apply_quantize(pipe, config: QuantizeConfig) -> Handle:
    denoiser = anatomy_of(pipe).denoiser
    device = device_of(denoiser)
    reason = mode_unsupported(config.mode, device, config.backend)
    if reason:
        raise NotApplicable(f"quantize {config.mode}: {reason}")
    if config.mode == "fp32":
        return Handle(config, lambda: None, info={"changed": []})
    swap = StateSwap(denoiser, HOOK)
    hooks = _Hooks()
    try:
        if config.mode in ("bf16", "fp16"):
            info = _apply_precision(pipe, denoiser, config, hooks)
        elif config.mode == "int8_dynamic" and (config.backend == "torch_ao" or
                                                (config.backend == "auto" and device.type == "cpu")):
            info = _apply_torch_ao(pipe, denoiser, config)
            info["backend"] = "torch_ao"
        else:
            info = _apply_torchao(pipe, denoiser, config)
            info["backend"] = "torchao"
    except BaseException:
        hooks.take_off()
        swap.undo()
        raise
    swap.done()   # the quantised state, to swap back in on resume

    def undo() -> None:
        hooks.take_off()
        swap.undo()

    def resume() -> None:
        swap.redo()
        hooks.put_on()
    info["exclude"] = list(config.exclude)
    return Handle(config, undo, info=info, suspend=undo, resume=resume)
