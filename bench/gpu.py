"""GPU evidence in one call: real-size diffusers denoisers, the profiler and every technique, timed on CUDA.

    python -m bench.gpu [--device cuda|cpu] [--tiny] [--budget-s 420] [--models sd15 pixart flux] --out gpu.json

Within a wall-clock budget it enforces itself (a section that cannot fit is skipped with its reason; one
that overruns is interrupted; a watchdog ends the process 20 s past the budget), per model of
bench.gpu_models (SD1.5 UNet, PixArt-alpha, a 12-block FLUX; seeded random weights):

1. build + fp16 / bf16 denoiser latency (CUDA events, median of >= 20 calls after warm-up, real inputs
   captured from a pipeline call);
2. the profiler (profiler.profile_pipeline, bf16): top-level block times vs the denoiser time, overhead;
3. techniques on a bf16 pipeline with a pinned sampler (DPM-Solver++ 2M 20 steps; flow Euler for FLUX):
   fp8 and int8 weight-only (torchao), DeepCache, FBCache, TeaCache, TaylorSeer, ToMe, ToDo; speed-up over
   the bf16 run and relative L2 of the final latents against it (same seeds); `handle.remove()` after each;
4. `planner optimize ... tiny-sd` then `planner gate` on its plan (subprocesses with timeouts);
5. predicted vs measured: profile-based prediction for the caches, the plan's counted work vs its timing;
6. torch.compile regional / whole, default and reduce-overhead (CUDA graphs), build time apart from latency
   (regional-default runs before step 4, the costlier variants last; `--skip PATTERN` drops sections).
The JSON (`--out`) is rewritten atomically after every section; a summary table is printed last.
`--device cpu --tiny` is the CPU dry run (tests/bench/test_gpu_dryrun.py): tiny configs, 8 steps, compile
through dynamo's eager backend (no inductor codegen; `--tiny-inductor` to use inductor).
TensorRT is not measured: its libraries cannot travel in the 64 MiB working tree that reaches the GPU machine.

Longer than ~400 lines because it is the driver of one timed run on a lent machine (minutes, no second
try): the order of its steps, their time limits and what each writes on failure are easier to check in one
place; the pure helpers are in `bench/gpu_report.py` and `bench/gpu_models.py`.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

from bench.gpu_report import (clone_tree, dynamo_backend, environment, json_safe, one_line, predict, rel_l2, run_cli,
                              summary, technique_config)

ROOT = Path(__file__).resolve().parents[1]
TECHNIQUES = ("fp8", "int8_weight_only", "deepcache", "fbcache", "teacache", "taylorseer", "tome", "todo")
COMPILE_ORDER = {"flux": 0, "pixart": 1, "sd15": 2}
COMPILES = (("regional", "default"), ("whole", "default"), ("whole", "reduce-overhead"),
            ("regional", "reduce-overhead"))


class OutOfTime(BaseException):
    """Raised by SIGALRM in the main thread when a section overruns the budget."""


class Bench:
    def __init__(self, args) -> None:
        self.args, self.tiny = args, args.tiny
        self.dynamo_backend = "eager" if args.tiny and not args.tiny_inductor else None
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.steps = 8 if self.tiny else 20
        self.repeats = 1 if self.tiny else 3
        self.calls = 5 if self.tiny else 25
        self.state: dict = {}
        self.doc: dict = {"schema": "planner.bench.gpu", "version": 1, "args": vars(args),
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          "environment": environment(self.device), "sections": {}, "models": {},
                          "unavailable": {"tensorrt": "not measured: the TensorRT libraries cannot travel in the "
                                                      "64 MiB working tree (and the GPU machine has no network)"}}
        self.lock = threading.Lock()
        self.torchao_error = self.doc["environment"].get("torchao_error")

    # ---- bookkeeping -----------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def write(self) -> None:
        with self.lock:
            self.doc["elapsed_s"] = round(time.monotonic() - self.t0, 2)
            text = json.dumps(json_safe(self.doc), indent=1)
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, out)

    def section(self, name: str, need_s: float, fn, missing: str | None = None, max_s: float | None = None):
        """Run `fn` as one section: skipped when under `need_s` is left, stopped after `max_s` (default: the
        budget's end) so that one slow section (an SD1.5 compile took 153 s on an H200) cannot eat the rest."""
        entry = {"status": "ok"}
        with self.lock:
            self.doc["sections"][name] = entry
        missing = missing or next((f"--skip {p}" for p in self.args.skip if fnmatch.fnmatch(name, p)), None)
        if missing:
            entry.update(status="skipped", reason=missing)
            print(f"[gpu] {name}: skipped ({missing})", flush=True)
            return None
        if self.left() < need_s:
            entry.update(status="skipped", reason=f"budget: {self.left():.0f} s left, section needs ~{need_s:.0f} s")
            print(f"[gpu] {name}: skipped ({entry['reason']})", flush=True)
            self.write()
            return None
        start = time.monotonic()
        limit = min(self.left() - 3.0, max_s) if max_s else self.left() - 3.0
        signal.setitimer(signal.ITIMER_REAL, max(1.0, limit))
        result = None
        try:
            result = fn()
        except OutOfTime:
            spent = time.monotonic() - start
            why = "budget exhausted" if self.left() < 4.0 else f"section limit {max_s:.0f} s reached"
            entry.update(status="error", reason=f"timed out: {why} after {spent:.0f} s")
        except Exception as exc:  # noqa: BLE001 - a section's failure is evidence, the run goes on
            entry.update(status="error", reason=one_line(exc))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        entry["seconds"] = round(time.monotonic() - start, 2)
        print(f"[gpu] {name}: {entry['status']} in {entry['seconds']} s"
              + (f" ({entry['reason']})" if "reason" in entry else ""), flush=True)
        self.write()
        return result

    # ---- timing ----------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_ms(self, fn, n: int, warmup: int) -> list[float]:
        """Per-call milliseconds: CUDA events on GPU, perf_counter on CPU."""
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        for _ in range(n):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t) * 1000)
        return out

    def run_pipe(self, name: str, pipe, output_type: str = "latent"):
        """One timed pipeline call (seed 0): (final latents as float32 on CPU, wall ms)."""
        from bench.gpu_models import call_kwargs
        kwargs = call_kwargs(name, pipe, self.steps, 0, self.device)
        kwargs["output_type"] = output_type
        self.sync()
        t = time.perf_counter()
        with torch.no_grad():
            out = pipe(**kwargs)
        self.sync()
        ms = (time.perf_counter() - t) * 1000
        images = out.images if hasattr(out, "images") else out[0]
        return torch.as_tensor(images).float().cpu(), ms

    # ---- sections --------------------------------------------------------------------------------
    def build(self, name: str) -> None:
        from bench.gpu_models import build_pipeline, call_kwargs, init_weights
        pipe, info = build_pipeline(name, self.tiny, self.device, torch.float16)
        self.doc["models"][name] = model = {"info": info, "baseline": {}, "techniques": {}}
        denoiser = getattr(pipe, info["denoiser"])
        for dtype_name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            if dtype is torch.bfloat16:
                pipe.to(dtype=dtype)
                init_weights(denoiser, 0)   # the seeded weights, drawn in bf16
            captured = {}   # the denoiser's real inputs: first call of a 2-step pipeline call

            def keep(m, args, kwargs):
                captured.setdefault("call", clone_tree((tuple(args), dict(kwargs))))
            hook = denoiser.register_forward_pre_hook(keep, with_kwargs=True)
            try:
                with torch.no_grad():
                    pipe(**call_kwargs(name, pipe, 2, 0, self.device))
            finally:
                hook.remove()
            a, kw = captured["call"]

            def call():
                with torch.no_grad():
                    denoiser(*a, **kw)
            ms = self.time_ms(call, self.calls, warmup=3)
            model["baseline"][dtype_name] = {"denoiser_ms": statistics.median(ms), "calls": len(ms),
                                             "min_ms": min(ms), "max_ms": max(ms),
                                             "method": "cuda_events" if self.cuda else "perf_counter"}
        model["info"]["denoiser_input"] = {**{f"arg{i}": list(v.shape) for i, v in enumerate(a) if torch.is_tensor(v)},
                                           **{k: list(v.shape) for k, v in kw.items() if torch.is_tensor(v)}}
        self.state[name] = {"pipe": pipe, "inputs": (a, kw), "denoiser": denoiser}

    def sampler(self, pipe):
        from backends.sampler import SamplerConfig, is_flow_matching
        return SamplerConfig(name="flow_euler" if is_flow_matching(pipe) else "dpmpp_2m", steps=self.steps)

    def profile(self, name: str) -> None:
        import numpy as np

        import backends
        from backends.sampler import SamplerConfig
        from profiler import profile_pipeline
        st, model = self.state[name], self.doc["models"][name]
        pipe = st["pipe"]
        steps = 4 if self.tiny else 10
        sampler = SamplerConfig(**{**self.sampler(pipe).model_dump(), "steps": steps})
        t = time.perf_counter()
        prof = profile_pipeline(pipe, sampler=sampler, samples=1, batch=1, model=name)
        wall = time.perf_counter() - t
        handle = backends.apply(pipe, sampler)   # the same call unprofiled: prompt 0, seed 0, decoded
        try:
            saved, self.steps = self.steps, steps
            plain = [self.run_pipe(name, pipe, "np")[1] for _ in range(1 + self.repeats)][1:]
        finally:
            self.steps = saved
            handle.remove()
        timing = prof.data["timing"]
        lat = np.nan_to_num(np.array(prof.latency, dtype=float))
        top = prof.top_level
        block_sum = float(lat[top].sum())
        den = float(np.nansum(np.array(timing["denoiser_ms"], dtype=float)))
        per_block = lat[top].sum(axis=1)
        names = [b for b, keep in zip(prof.block_names, top) if keep]
        order = np.argsort(-per_block)[:6]
        st["profile"] = prof
        model["profiler"] = {
            "method": timing["method"], "steps": steps, "profile_wall_s": wall,
            "top_level_sum_ms": block_sum, "denoiser_ms_sum": den, "block_sum_ratio": block_sum / den if den else None,
            "denoiser_ms_per_step": den / max(1, len(timing["denoiser_ms"])),
            "denoiser_call_ms_bf16": model["baseline"]["bf16"]["denoiser_ms"],
            "pipeline_ms_with_profiler": timing["pipeline_ms_with_profiler"], "pipeline_ms_hooks_subtracted":
            timing["pipeline_ms"], "pipeline_ms_unprofiled": statistics.median(plain),
            "overhead_ratio": timing["pipeline_ms_with_profiler"] / statistics.median(plain),
            "hook_overhead_ms": timing["hook_overhead_ms"], "analysis_ms": timing["analysis_ms"],
            "flops_per_call": prof.data["flops"]["denoiser_call"],
            "block_sum_vs_denoiser_call": block_sum / steps / model["baseline"]["bf16"]["denoiser_ms"],
            "top_blocks": [{"name": names[i], "ms_per_step": float(per_block[i]) / steps,
                            "share": float(per_block[i]) / block_sum} for i in order],
            "blocks_ms_per_step": {n: float(v) / steps for n, v in zip(names, per_block)}}

    def techniques(self, name: str, which) -> None:
        import backends
        st, model = self.state[name], self.doc["models"][name]
        pipe = st["pipe"]
        sampler = backends.apply(pipe, self.sampler(pipe))
        try:
            if "ref" not in st:
                self.run_pipe(name, pipe)
                runs = [self.run_pipe(name, pipe) for _ in range(self.repeats)]
                st["ref"], st["ref_ms"] = runs[-1][0], statistics.median(r[1] for r in runs)
                model["pipeline_bf16"] = {"ms": st["ref_ms"], "sampler": self.sampler(pipe).label(),
                                          "steps": self.steps}
            for label, make in which:
                est = 5 + (4 + self.repeats) * st["ref_ms"] / 1000 * (3 if "int8" in label else 1)
                if label.startswith("compile"):
                    est += 20 if self.tiny else 60
                if self.left() < est:
                    model["techniques"][label] = {"skipped": f"budget: {self.left():.0f} s left, needs ~{est:.0f} s"}
                    continue
                model["techniques"][label] = self.one(name, pipe, make)
                self.write()
            if "recheck_rel_l2" not in model:   # remove() restored the pipeline: same latents as before
                latents, ms = self.run_pipe(name, pipe)
                model.update(recheck_rel_l2=rel_l2(latents, st["ref"]), recheck_ms=ms)
        finally:
            sampler.remove()

    def one(self, name: str, pipe, make) -> dict:
        import backends
        st = self.state[name]
        backend = self.dynamo_backend
        try:
            config = make()
            if self.torchao_error and getattr(config, "mode", None) in ("fp8", "int8_weight_only"):
                return {"error": self.torchao_error}
            t = time.perf_counter()
            with dynamo_backend(backend if config.type == "compile" else None):
                handle = backends.apply(pipe, config)
        except Exception as exc:  # noqa: BLE001 - NotApplicable and friends: one line, go on
            return {"error": one_line(exc)}
        row = {"config": config.to_dict(), "apply_s": time.perf_counter() - t}
        if config.type == "compile":
            row["dynamo_backend"] = backend or "inductor"
        try:
            warm = 2 if config.type == "compile" else 1
            first = [self.run_pipe(name, pipe)[1] for _ in range(warm)]
            runs = [self.run_pipe(name, pipe) for _ in range(self.repeats)]
            ms = statistics.median(r[1] for r in runs)
            row.update(ms=ms, ms_all=[r[1] for r in runs], warmup_ms=first, speedup=st["ref_ms"] / ms,
                       rel_l2=rel_l2(runs[-1][0], st["ref"]))
            info = handle.info
            for key in ("setup_s", "build_s"):   # compile: first denoiser call (compile + one call), s
                if info.get(key) is not None:
                    row["build_s"], row["build_key"] = info[key], key
            runtime = info.get("runtime")
            if runtime is not None:
                row["stats"] = dict(runtime.stats) | {f"blocks_{k}": v for k, v in
                                                      getattr(runtime, "block_stats", {}).items()}
            if config.type in ("quantize", "compile"):
                a, kw = st["inputs"]

                def call():
                    with torch.no_grad():
                        st["denoiser"](*a, **kw)
                row["denoiser_ms"] = statistics.median(self.time_ms(call, max(3, self.calls // 2), warmup=2))
        except OutOfTime:
            raise
        except Exception as exc:  # noqa: BLE001
            row["error"] = one_line(exc)
        finally:
            handle.remove()
            if config.type == "compile":
                torch._dynamo.reset()
            if self.cuda:
                torch.cuda.empty_cache()
        return row

    def optimize(self) -> None:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:   # the plan's text goes into the JSON
            self._optimize(Path(tmp))

    def _optimize(self, tmp: Path) -> None:
        env = dict(os.environ, PLANNER_CACHE=str(tmp / "cache"), PYTHONUNBUFFERED="1")
        threads = ["--threads", "1"] if not self.cuda else []
        plan = tmp / "plan.yaml"
        dev = self.device.type
        if self.tiny:
            opt = ["--trials", "1", "--samples", "24", "--verify-samples", "24", "--batch", "4",
                   "--baseline-steps", "10", *threads]
            gate = ["--samples", "24", "--repeats", "3", *threads]
        else:
            opt = ["--trials", "4", "--samples", "24", "--verify-samples", "48", "--batch", "4"]
            gate = ["--samples", "24"]
        cmd = [sys.executable, "-m", "planner.cli", "optimize", "--device", dev, "--budget", "psnr>=30", "tiny-sd",
               *opt, "--out", str(plan)]
        res = self.doc["optimize"] = run_cli(cmd, env, max(5.0, min(120 if self.tiny else 150, self.left() - 5)), ROOT)
        if plan.exists():
            import yaml
            text = plan.read_text()
            measured = (yaml.safe_load(text) or {}).get("measured", {})
            res.update(plan_yaml=text, speedup=measured.get("speedup"), work_ratio=measured.get("work_ratio"),
                       latency_ratio=(1 / measured["speedup"]) if measured.get("speedup") else None)
            cmd = [sys.executable, "-m", "planner.cli", "gate", str(plan), "--device", dev, *gate]
            g = self.doc["gate"] = run_cli(cmd, env, max(5.0, min(60 if self.tiny else 90, self.left() - 5)), ROOT)
            g["verdict"] = "PASS" if "gate: PASS" in g["tail"] else ("FAIL" if "gate: FAIL" in g["tail"] else None)
        else:
            self.doc["gate"] = {"skipped": f"no plan written (optimize exit code {res['returncode']})"}



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (the CPU dry run)")
    parser.add_argument("--models", nargs="+", default=["sd15", "pixart", "flux"])
    parser.add_argument("--skip", nargs="+", default=[], metavar="PATTERN",
                        help="skip sections whose name matches (fnmatch), e.g. optimize 'flux.*' '*.compile_whole_ro'")
    parser.add_argument("--tiny-inductor", action="store_true",
                        help="--tiny: compile with inductor (10-60 s a compile on CPU), not dynamo's eager backend")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu --tiny for the dry run)")
    import diffusers
    import transformers
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*[Pp]olyfit.*")
    torch.manual_seed(0)
    if args.tiny and args.device == "cpu":
        # one thread: on a shared 2-core machine two spinning OpenMP pools slow each other down tens of times
        torch.set_num_threads(1)
    b = Bench(args)

    def alarm(signum, frame):
        raise OutOfTime()
    signal.signal(signal.SIGALRM, alarm)

    def watchdog():
        time.sleep(max(0.0, b.left() + 20))
        b.doc["killed"] = "watchdog: 20 s past the budget"
        for _ in range(5):   # the main thread may be changing the document meanwhile
            try:
                b.write()
                break
            except RuntimeError:
                time.sleep(0.2)
        os._exit(3)
    threading.Thread(target=watchdog, daemon=True).start()
    cpu_s = 1 if args.tiny else 5
    for name in args.models:
        b.section(f"{name}.build", 10 * cpu_s, lambda: b.build(name))
        missing = None if name in b.state else f"{name}.build did not finish"
        b.section(f"{name}.profiler", 6 * cpu_s, lambda: b.profile(name), missing)
        tech = [(t, (lambda t=t: technique_config(t))) for t in TECHNIQUES]
        b.section(f"{name}.techniques", 10 * cpu_s, lambda: b.techniques(name, tech), missing)
    from backends.compile import CompileConfig

    def compile_round(scope: str, mode: str) -> None:
        # the smallest compile first: a FLUX-like stack of few blocks, then PixArt, then the SD1.5 UNet
        for name in sorted(args.models, key=lambda n: COMPILE_ORDER.get(n, 9)):
            label = f"compile_{scope}" + ("" if mode == "default" else "_ro")
            make = (lambda s=scope, m=mode: CompileConfig(backend=f"torch_{s}", mode=m))
            why = ("CUDA graphs need a GPU" if mode == "reduce-overhead" and not b.cuda else
                   "tiny dry run: compile on sd15 only" if args.tiny and name != "sd15" else None)
            if why:   # the same code path for every model: the dry run stays short
                b.doc["sections"][f"{name}.{label}"] = {"status": "skipped", "reason": why}
                b.doc["models"].get(name, {}).get("techniques", {})[label] = {"skipped": why}
                continue
            missing = None if "ref" in b.state.get(name, {}) else f"{name}.techniques has no bf16 reference"
            b.section(f"{name}.{label}", 20 if args.tiny else 45,
                      lambda n=name, lab=label, mk=make: b.techniques(n, [(lab, mk)]), missing,
                      max_s=None if args.tiny else 100)
    # the planner's own search and gate first (the first H200 run spent its budget compiling), then compiles
    b.section("optimize", 30 if args.tiny else 90, b.optimize)
    b.section("prediction", 0, lambda: predict(b.doc, b.state, b.steps))
    for scope, mode in COMPILES:
        compile_round(scope, mode)
    b.doc["complete"] = True
    b.write()
    print(summary(b.doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
