"""ONNX Runtime and TensorRT for `compile(backend="onnx" | "tensorrt")` (see backends/compile.py).

The denoiser is exported with `torch.onnx.export` (batch dimension dynamic) at its first call, with the
actual arguments, and run by onnxruntime (CPUExecutionProvider here; CUDA where present), or built into a
TensorRT engine. The pipeline's component is replaced (a named attribute replacement, `ground.hooks`) by
`OrtDenoiser`, called like the original module (returns an object with `.sample`, or a tuple with
`return_dict=False`; `.config`, `.dtype`, `.device` and any other attribute read through to the
original). Exports are cached under the cache root's `compiled/`, keyed by the model fingerprint, the
input signature and the torch version, so a second apply in production does not export again.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from backends.compile import CompileConfig, ort_providers
from backends.technique import Handle, NotApplicable
from ground.anatomy import anatomy_of
from ground.cache import cache_dir
from ground.devices import device_of
from ground.errors import first_line
from ground.hooks import is_hooked, replace_attribute
from ground.identity import fingerprint

HOOK = "planner.compile"


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
                              dynamic_shapes=shapes, dynamo=True, external_data=False, optimize=True,
                              verbose=False)   # not its "[torch.onnx] Obtain model graph ..." lines in our log
            used = "dynamo"
        except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter
            errors.append(f"dynamo: {first_line(exc, 200)}")
            try:
                axes = {n: {0: "batch"} for n, d in zip(names, dynamic) if d}
                axes["sample"] = {0: "batch"}
                torch.onnx.export(flat, tuple(sig.tensors), str(tmp), input_names=names, output_names=["sample"],
                                  dynamic_axes=axes, dynamo=False, opset_version=17, verbose=False)
                used = "torchscript"
            except Exception as exc2:  # noqa: BLE001
                errors.append(f"torchscript: {first_line(exc2, 200)}")
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
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._original)
        digest = hashlib.sha256(f"{self._fingerprint}|{key}|{torch.__version__}".encode()).hexdigest()[:20]
        directory = cache_dir("compiled")
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
        device = device_of(self._original)
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
                                                    "setup_s": round(build, 3), "disk_cache_hit": hit,
                                                    "path": str(path)})
        self._info["setup_s"] = round(sum(b["setup_s"] for b in self._info["builds"]), 3)
        self._info["setup_s_per_call"] = self._info["setup_s"] / self._config.amortize_calls
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


def apply_ort(pipe, denoiser, config: CompileConfig) -> Handle:
    inside = [n or "<root>" for n, m in denoiser.named_modules() if is_hooked(m)]
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
    name = anatomy_of(pipe).denoiser_name
    info: dict[str, Any] = {"amortize_calls": config.amortize_calls, "setup_s": 0.0, "provider": None}
    wrapper = OrtDenoiser(denoiser, config, info, tensorrt=config.backend == "tensorrt")
    info["provider"] = (ort_providers(device_of(denoiser), tensorrt=config.backend == "tensorrt") or ["?"])[0]
    undo = [replace_attribute(pipe, name, wrapper, HOOK)]

    def resume() -> None:   # the same wrapper: its sessions (exports, engines) are kept
        undo[0] = replace_attribute(pipe, name, wrapper, HOOK)
    return Handle(config, lambda: undo[0](), info=info, suspend=lambda: undo[0](), resume=resume)


