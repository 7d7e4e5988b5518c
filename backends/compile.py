"""Compilation of the denoiser: `compile(backend=...)`.

* `eager`: identity (the baseline).
* `torch_regional`: `torch.compile` of the repeated blocks, in place (`module.compile()`, as diffusers'
  `compile_repeated_blocks`); models without `_repeated_blocks` get their transformer / down / mid / up
  blocks. Caches intercept a block's `__call__` outside the compiled code, so they compose.
* `torch_whole`: `torch.compile` of the whole denoiser (refused when caches intercept blocks inside it:
  their decisions would be traced into the graph).
* `onnx`: the denoiser exported with `torch.onnx.export` (batch dimension dynamic) at its first call, with
  the actual arguments, and run by onnxruntime (CPUExecutionProvider here; CUDA where present). The
  pipeline's component is swapped for `OrtDenoiser`, called like the original module (returns an object
  with `.sample`, or a tuple with `return_dict=False`; `.config`, `.dtype`, `.device` and any other
  attribute read through to the original). Exports are cached on disk keyed by the model fingerprint and
  the input signature.
* `tensorrt`: the same ONNX graph built into a TensorRT engine, through onnxruntime's TensorRT execution
  provider or, without it, the `tensorrt` package. Needs a CUDA GPU.

Build time (compile / export / engine build, measured on the first call of each input signature) is
kept apart from per-call latency in `handle.info["build_s"]`, with `amortize_calls`, the number of calls
a plan expects to spread it over, and `build_s_per_call`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from backends.technique import STAGE_COMPILE, Handle, NotApplicable, TechniqueConfig, register

Backend = Literal["eager", "torch_regional", "torch_whole", "onnx", "tensorrt"]
BACKENDS = ("eager", "torch_regional", "torch_whole", "onnx", "tensorrt")


class CompileConfig(TechniqueConfig):
    type = "compile"
    version = 1
    stage = STAGE_COMPILE

    backend: Backend = "torch_regional"
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    dynamic: bool = False                 # torch.compile: dynamic shapes
    fullgraph: bool = False               # torch.compile: error on graph breaks
    ort_opt_level: Literal["basic", "extended", "all"] = "all"
    ort_threads: int = Field(0, ge=0, le=256)   # 0: onnxruntime's default
    trt_fp16: bool = False                # tensorrt: allow fp16 kernels
    amortize_calls: int = Field(100, ge=1)
    disk_cache: bool = True               # onnx/tensorrt: reuse exports keyed by fingerprint + shapes

    @model_validator(mode="after")
    def _consistent(self):
        torch_knobs = self.mode != "default" or self.dynamic or self.fullgraph
        if torch_knobs and self.backend not in ("torch_regional", "torch_whole"):
            raise ValueError(f"mode/dynamic/fullgraph are torch.compile knobs; backend is {self.backend}")
        if self.trt_fp16 and self.backend != "tensorrt":
            raise ValueError("trt_fp16 applies to backend tensorrt only")
        return self


# ------------------------------------------------------------------------------------------- support

def _denoiser_name(pipe) -> str:
    for name in ("transformer", "unet"):
        if isinstance(getattr(pipe, name, None), torch.nn.Module):
            return name
    from planner.errors import PlannerError

    raise PlannerError(f"{type(pipe).__name__}: no `transformer` or `unet` component to accelerate")


def _device_of(module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def ort_providers(device: torch.device, tensorrt: bool = False) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = (["TensorrtExecutionProvider"] if tensorrt else []) + \
        (["CUDAExecutionProvider"] if device.type == "cuda" else []) + ["CPUExecutionProvider"]
    return [p for p in wanted if p in available]


def backend_unsupported(backend: str, device: torch.device | str = "cpu") -> str | None:
    """None when `backend` can run on `device`, else a one-line reason."""
    device = torch.device(device)
    if backend in ("eager", "torch_regional", "torch_whole"):
        if backend != "eager" and device.type == "cpu":
            try:
                from torch._inductor import cpp_builder  # noqa: F401
            except Exception as exc:  # noqa: BLE001
                return f"torch.compile's inductor is unusable here: {exc}"
        return None
    if backend == "onnx":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
            return "onnx backend needs the onnx and onnxruntime packages"
        if device.type == "cuda" and "CUDAExecutionProvider" not in ort_providers(device):
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu)"
        return None
    if backend == "tensorrt":
        if not torch.cuda.is_available() or device.type != "cuda":
            return "TensorRT needs a CUDA GPU and the model on it"
        has_ep = importlib.util.find_spec("onnxruntime") is not None and \
            "TensorrtExecutionProvider" in ort_providers(device, tensorrt=True)
        if not has_ep and importlib.util.find_spec("tensorrt") is None:
            return "TensorRT needs the tensorrt package or onnxruntime's TensorrtExecutionProvider"
        return None
    return f"unknown backend {backend!r}"


def supported_backends(device: torch.device | str = "cpu") -> list[str]:
    return [b for b in BACKENDS if backend_unsupported(b, device) is None]


def _intercepted(module: torch.nn.Module) -> list[str]:
    """Submodules whose calls other techniques intercept (class swap, instance forward, hooks)."""
    found = []
    for name, m in module.named_modules():
        if getattr(type(m), "_planner_intercepted", False) or "forward" in m.__dict__ or \
                getattr(m, "_diffusers_hook", None) is not None or m._forward_hooks or m._forward_pre_hooks:
            found.append(name or "<root>")
    return found


# ------------------------------------------------------------------------------------------- torch.compile

def regional_targets(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    names = set(getattr(denoiser, "_repeated_blocks", None) or ())
    found = [(n, m) for n, m in denoiser.named_modules() if n and type(m).__name__ in names]
    if not found:
        for attr in ("transformer_blocks", "single_transformer_blocks", "down_blocks", "mid_block", "up_blocks"):
            value = getattr(denoiser, attr, None)
            if isinstance(value, torch.nn.ModuleList):
                found += [(f"{attr}.{i}", m) for i, m in enumerate(value)]
            elif isinstance(value, torch.nn.Module):
                found.append((attr, value))
    return [(n, m) for n, m in found if not any(n.startswith(o + ".") for o, _ in found if o != n)]


def _time_first_call(module: torch.nn.Module, info: dict, key: str):
    """Record in `info[key]` how long the first call of `module` takes (the one that compiles).

    The timer swaps the module's class for a subclass whose `__call__` runs outside the compiled code
    (hooks would be traced into it); the returned undo puts the class back.
    """
    base = type(module)

    def __call__(self, *args, **kwargs):
        if key in info:
            return base.__call__(self, *args, **kwargs)
        t0 = time.perf_counter()
        out = base.__call__(self, *args, **kwargs)
        info[key] = time.perf_counter() - t0
        info.setdefault("build_s", info[key])
        return out

    subclass = type(base.__name__, (base,), {"__call__": __call__, "__module__": base.__module__,
                                              "__qualname__": base.__qualname__})
    object.__setattr__(module, "__class__", subclass)

    def undo() -> None:
        if type(module) is subclass:
            object.__setattr__(module, "__class__", base)
    return undo


def _apply_torch(pipe, denoiser, config: CompileConfig) -> Handle:
    kwargs: dict[str, Any] = {"mode": None if config.mode == "default" else config.mode,
                              "dynamic": config.dynamic, "fullgraph": config.fullgraph}
    if config.backend == "torch_whole":
        inside = [n for n in _intercepted(denoiser) if n != "<root>"]
        if inside:
            raise NotApplicable(f"compile torch_whole: {len(inside)} submodules are intercepted by other techniques "
                                f"(e.g. {inside[0]}); their decisions would be traced: use torch_regional")
        targets = [("", denoiser)]
    else:
        targets = regional_targets(denoiser)
        if not targets:
            raise NotApplicable(f"compile torch_regional: no repeated blocks found in {type(denoiser).__name__}")
    info: dict[str, Any] = {"compiled": [n or "<root>" for n, _ in targets], "amortize_calls": config.amortize_calls}
    previous = [(m, m.__dict__.get("_compiled_call_impl")) for _, m in targets]
    t0 = time.perf_counter()
    for _, m in targets:
        m.compile(**kwargs)
    info["wrap_s"] = time.perf_counter() - t0
    # Compilation happens lazily at the first denoiser call: its time (compile + one call) is the build time.
    stop_timer = _time_first_call(denoiser, info, "first_call_s")

    def undo() -> None:
        stop_timer()
        for m, prev in previous:
            m._compiled_call_impl = prev
    handle = Handle(config, undo, info=info)
    return handle


# ------------------------------------------------------------------------------------------- ONNX runtime

def cache_dir() -> Path:
    root = os.environ.get("PLANNER_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "planner")
    return Path(root) / "onnx"


class _Signature:
    """Flattening of one call's arguments: tensors become graph inputs, the rest is baked in."""

    def __init__(self, args: tuple, kwargs: dict, param_names: list[str]) -> None:
        self.entries: list[tuple[str, str | None]] = []   # (argument name, dict key or None)
        self.constants: dict[str, Any] = {}
        bound = dict(zip(param_names, args))
        bound.update(kwargs)
        self.tensors: list[torch.Tensor] = []
        for name, value in bound.items():
            if name == "timestep" and isinstance(value, (int, float)):
                value = torch.tensor([value], dtype=torch.float32)
            if isinstance(value, torch.Tensor):
                self.entries.append((name, None))
                self.tensors.append(value)
            elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                for k in sorted(value):
                    self.entries.append((name, k))
                    self.tensors.append(value[k])
            elif name == "return_dict":
                continue
            else:
                self.constants[name] = value
        self.batch = self.tensors[0].shape[0] if self.tensors and self.tensors[0].ndim else 1

    def key(self) -> str:
        parts = []
        for (name, k), t in zip(self.entries, self.tensors):
            shape = list(t.shape)
            if t.ndim and shape[0] == self.batch:
                shape[0] = "B"
            parts.append(f"{name}.{k}:{t.dtype}:{shape}")
        parts.append(json.dumps({k: repr(v) for k, v in sorted(self.constants.items())}))
        return "|".join(parts)

    def rebuild(self, tensors) -> dict:
        kwargs: dict[str, Any] = dict(self.constants)
        for (name, k), t in zip(self.entries, tensors):
            if k is None:
                kwargs[name] = t
            else:
                kwargs.setdefault(name, {})[k] = t
        return kwargs


class _Flat(torch.nn.Module):
    def __init__(self, module: torch.nn.Module, signature: _Signature) -> None:
        super().__init__()
        self.module = module
        self.signature = signature

    def forward(self, *tensors):
        out = self.module(**self.signature.rebuild(tensors), return_dict=False)
        return out[0] if isinstance(out, (tuple, list)) else out


def _export(module: torch.nn.Module, sig: _Signature, path: Path) -> str:
    """Export to `path`; returns which exporter worked. Batch dims (dim 0 equal to the call's batch) are dynamic."""
    import warnings

    flat = _Flat(module, sig).eval()
    names = [f"in{i}" for i in range(len(sig.tensors))]
    dynamic = [bool(t.ndim and t.shape[0] == sig.batch) for t in sig.tensors]
    tmp = path.with_suffix(".tmp.onnx")
    errors = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            batch = torch.export.Dim("batch", min=1, max=4096)
            shapes = tuple({0: batch} if d else None for d in dynamic)
            torch.onnx.export(flat, tuple(sig.tensors), str(tmp), input_names=names, output_names=["sample"],
                              dynamic_shapes=shapes, dynamo=True, external_data=False, optimize=True)
            used = "dynamo"
        except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter
            errors.append(f"dynamo: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}")
            try:
                axes = {n: {0: "batch"} for n, d in zip(names, dynamic) if d}
                axes["sample"] = {0: "batch"}
                torch.onnx.export(flat, tuple(sig.tensors), str(tmp), input_names=names, output_names=["sample"],
                                  dynamic_axes=axes, dynamo=False, opset_version=17)
                used = "torchscript"
            except Exception as exc2:  # noqa: BLE001
                errors.append(f"torchscript: {str(exc2).strip().splitlines()[0][:200]}")
                raise NotApplicable("compile onnx: export failed (" + "; ".join(errors) + ")") from None
    os.replace(tmp, path)
    return used


class _Output:
    """What diffusers models return: `.sample`, and tuple-like indexing."""

    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample

    def __getitem__(self, index):
        return (self.sample,)[index]

    def to_tuple(self):
        return (self.sample,)


class OrtDenoiser(torch.nn.Module):
    """Stands in for the denoiser: exports per input signature at first use and runs onnxruntime."""

    def __init__(self, original: torch.nn.Module, config: CompileConfig, info: dict, tensorrt: bool) -> None:
        super().__init__()
        object.__setattr__(self, "_original", original)   # not a submodule: parameters stay with the original
        self._config = config
        self._info = info
        self._tensorrt = tensorrt
        self._sessions: dict[str, tuple[Any, _Signature]] = {}
        import inspect

        self._params = [p for p in inspect.signature(original.forward).parameters if p not in ("self",)]
        self._fingerprint: str | None = None

    # attributes the pipeline reads
    @property
    def config(self):
        return self._original.config

    @property
    def dtype(self):
        return self._original.dtype

    @property
    def device(self):
        return self._original.device

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_original"), name)

    def _session(self, sig: _Signature):
        import onnxruntime as ort

        key = sig.key()
        if key in self._sessions:
            return self._sessions[key][0]
        t0 = time.perf_counter()
        from planner.models import fingerprint

        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._original)
        digest = hashlib.sha256(f"{self._fingerprint}|{key}|{torch.__version__}".encode()).hexdigest()[:20]
        directory = cache_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{digest}.onnx"
        hit = self._config.disk_cache and path.exists()
        if not hit:
            self._info["exporter"] = _export(self._original, sig, path)
        export_s = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self._config.ort_opt_level]
        if self._config.ort_threads:
            options.intra_op_num_threads = self._config.ort_threads
        else:
            options.intra_op_num_threads = torch.get_num_threads()
        device = _device_of(self._original)
        providers: list = ort_providers(device, tensorrt=self._tensorrt)
        if self._tensorrt and "TensorrtExecutionProvider" in providers:
            trt_cache = directory / "trt"
            trt_cache.mkdir(exist_ok=True)
            providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": self._config.trt_fp16,
                                                        "trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": str(trt_cache)})] + providers[1:]
            session = ort.InferenceSession(str(path), options, providers=providers)
        elif self._tensorrt:
            session = _TrtEngine(path, sig, self._config.trt_fp16)
        else:
            session = ort.InferenceSession(str(path), options, providers=providers)
        self._sessions[key] = (session, sig)
        build = time.perf_counter() - t0
        self._info.setdefault("builds", []).append({"signature": key, "export_s": round(export_s, 3),
                                                    "build_s": round(build, 3), "disk_cache_hit": hit,
                                                    "path": str(path)})
        self._info["build_s"] = round(sum(b["build_s"] for b in self._info["builds"]), 3)
        self._info["build_s_per_call"] = self._info["build_s"] / self._config.amortize_calls
        return session

    def forward(self, *args, **kwargs):
        return_dict = kwargs.pop("return_dict", True)
        sig = _Signature(args, kwargs, self._params)
        session = self._session(sig)
        if isinstance(session, _TrtEngine):
            sample = session.run(sig.tensors)
        else:
            feeds = {f"in{i}": t.detach().cpu().numpy() for i, t in enumerate(sig.tensors)}
            inputs = {i.name for i in session.get_inputs()}
            feeds = {k: v for k, v in feeds.items() if k in inputs}   # exporters drop unused inputs
            sample = torch.from_numpy(session.run(None, feeds)[0]).to(sig.tensors[0].device)
        self._info["calls"] = self._info.get("calls", 0) + 1
        return _Output(sample) if return_dict else (sample,)


class _TrtEngine:
    """A TensorRT engine built from the ONNX file with the `tensorrt` package (CUDA tensors in and out)."""

    def __init__(self, onnx_path: Path, sig: _Signature, fp16: bool) -> None:
        import tensorrt as trt

        logger = trt.Logger(trt.Logger.WARNING)
        engine_path = onnx_path.with_suffix(".fp16.plan" if fp16 else ".plan")
        runtime = trt.Runtime(logger)
        if engine_path.exists():
            engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        else:
            builder = trt.Builder(logger)
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse(onnx_path.read_bytes()):
                raise NotApplicable("compile tensorrt: ONNX parse failed: " + str(parser.get_error(0)))
            config = builder.create_builder_config()
            if fp16:
                config.set_flag(trt.BuilderFlag.FP16)
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                shape = list(tensor.shape)
                idx = int(tensor.name[2:])
                concrete = list(sig.tensors[idx].shape)
                lo, hi = list(concrete), list(concrete)
                if shape and shape[0] == -1:
                    lo[0], hi[0] = 1, max(2 * concrete[0], 1)
                profile.set_shape(tensor.name, lo, concrete, hi)
            config.add_optimization_profile(profile)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise NotApplicable("compile tensorrt: engine build failed")
            engine_path.write_bytes(bytes(serialized))
            engine = runtime.deserialize_cuda_engine(bytes(serialized))
        self.engine = engine
        self.context = engine.create_execution_context()
        self.input_names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                            if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT]
        self.output_name = next(engine.get_tensor_name(i) for i in range(engine.num_io_tensors)
                                if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT)

    def run(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        keep = []
        for name in self.input_names:
            t = tensors[int(name[2:])].contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=keep[0].dtype if keep else torch.float32, device="cuda")
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return out


def _apply_ort(pipe, denoiser, config: CompileConfig) -> Handle:
    inside = _intercepted(denoiser)
    if inside:
        raise NotApplicable(f"compile {config.backend}: {len(inside)} modules are patched by other techniques "
                            f"(e.g. {inside[0]}); an exported graph would freeze their per-step decisions")
    dtypes = {p.dtype for p in denoiser.parameters()}
    quantized = [n for n, m in denoiser.named_modules() if type(m).__module__.startswith(("torch.ao.nn.quantized",
                 "torch.nn.quantized"))] + [n for n, p in denoiser.named_parameters() if type(p.data) is not torch.Tensor]
    if quantized:
        raise NotApplicable(f"compile {config.backend}: {len(quantized)} quantised layers (e.g. {quantized[0]}); "
                            "export supports fp32/fp16 weights only")
    if not dtypes <= {torch.float32, torch.float16}:
        raise NotApplicable(f"compile {config.backend}: parameters in {sorted(map(str, dtypes))}; "
                            "export supports fp32/fp16 weights (no bf16, no torch.ao int8 modules)")
    name = _denoiser_name(pipe)
    info: dict[str, Any] = {"amortize_calls": config.amortize_calls, "build_s": 0.0, "provider": None}
    wrapper = OrtDenoiser(denoiser, config, info, tensorrt=config.backend == "tensorrt")
    info["provider"] = (ort_providers(_device_of(denoiser), tensorrt=config.backend == "tensorrt") or ["?"])[0]
    # Pipelines hold components as plain instance attributes: swap without DiffusionPipeline.__setattr__
    # (which would rewrite the pipeline's config), put the original object back on undo.
    pipe.__dict__[name] = wrapper

    def undo() -> None:
        if pipe.__dict__.get(name) is wrapper:
            pipe.__dict__[name] = denoiser
    return Handle(config, undo, info=info)


# ------------------------------------------------------------------------------------------- handler

def _applicable(pipe) -> str | None:
    try:
        _denoiser_name(pipe)
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    return None


@register(CompileConfig, applicable=_applicable)
def apply_compile(pipe, config: CompileConfig) -> Handle:
    name = _denoiser_name(pipe)
    denoiser = getattr(pipe, name)
    reason = backend_unsupported(config.backend, _device_of(denoiser))
    if reason:
        raise NotApplicable(f"compile {config.backend}: {reason}")
    if config.backend == "eager":
        return Handle(config, lambda: None, info={"build_s": 0.0, "amortize_calls": config.amortize_calls})
    if config.backend in ("torch_regional", "torch_whole"):
        return _apply_torch(pipe, denoiser, config)
    return _apply_ort(pipe, denoiser, config)
