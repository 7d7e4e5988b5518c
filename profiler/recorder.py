"""Forward hooks that time and observe every block of a denoiser, step by step, without changing it.

Timing. Each hooked module gets a named forward hook ("planner.profiler.timing", a `ground.hooks.Observer`)
with a pre and a post callback. On CPU the region between them is timed with
`time.perf_counter`; on CUDA with a pair of CUDA events (recorded, never synchronised inside the
region; they are read after the pipeline call). What the hooks do besides timing (keeping a copy of
an output for the redundancy analysis) is itself timed and subtracted from every enclosing region, so
a parent's latency does not include its children's bookkeeping (exact on CPU; on CUDA the copies'
kernels remain inside the parent's events, a small bias). The analysis proper (relative L1, cosine,
token similarity) runs after `scheduler.step`, outside every timed region.

Observation only: hooks return None, inputs and outputs are never modified, copies are detached.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import torch

from ground.anatomy import anatomy_of
from ground.hooks import Observer, add_forward_hook
from ground.steps import release_steps, track_steps
from profiler.blocks import BlockSpec, primary_input, primary_output, tensors_in

EPS = 1e-12


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean|a - b| / mean|b| over the whole tensor (b is the previous step)."""
    a, b = a.float(), b.float()
    return float((a - b).abs().mean() / (b.abs().mean() + EPS))


def rel_l1_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.float().reshape(a.shape[0], -1), b.float().reshape(b.shape[0], -1)
    return ((a - b).abs().mean(1) / (b.abs().mean(1) + EPS)).cpu().numpy()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float().reshape(-1), b.float().reshape(-1)
    return float((a @ b) / (a.norm() * b.norm() + EPS))


def token_similarity(x: torch.Tensor, threshold: float, max_tokens: int, max_rows: int = 2) -> tuple[float, float]:
    """(fraction of tokens whose most similar other token has cosine > threshold, mean max cosine).

    x is (B, N, D) or (B, C, H, W) (tokens are the H*W positions). At most `max_rows` batch rows and
    `max_tokens` tokens (an even stride over the sequence) are used, to bound the N^2 cost.
    """
    if x.ndim == 4:
        x = x.flatten(2).transpose(1, 2)
    if x.ndim != 3 or x.shape[1] < 2:
        return math.nan, math.nan
    x = x[:max_rows].float()
    stride = max(1, math.ceil(x.shape[1] / max_tokens))
    x = x[:, ::stride]
    x = x / (x.norm(dim=-1, keepdim=True) + EPS)
    sim = x @ x.transpose(1, 2)
    sim.diagonal(dim1=1, dim2=2).fill_(-2.0)
    best = sim.max(dim=-1).values
    return float((best > threshold).float().mean()), float(best.mean())


class Recorder:
    """Attach with `attach()`, run the pipeline, `detach()`; results are in the public dicts."""

    def __init__(self, pipe, denoiser: torch.nn.Module, specs: list[BlockSpec], *, use_cuda_events: bool,
                 analyse: bool = True, token_threshold: float = 0.9, max_tokens: int = 1024) -> None:
        self.pipe, self.denoiser, self.specs = pipe, denoiser, specs
        self.index = {id(s.module): i for i, s in enumerate(specs)}
        self.cuda = use_cuda_events
        self.analyse = analyse
        self.token_threshold, self.max_tokens = token_threshold, max_tokens
        self._handles: list = []
        self._tracker = None
        self._untrack: list = []
        # state
        self.call = -1
        self.expected_rows: int | None = None
        self.overhead = 0.0                  # seconds of hook bookkeeping (subtracted from regions)
        self.analysis_seconds = 0.0          # seconds of step-end analysis (outside regions)
        self._open: dict[int, tuple] = {}
        self._calls_in_step = 0
        self._capture = False
        self._step_mark = (0.0, 0.0)
        self._events: list = []              # (key, block, call, step, start_event, end_event)
        # per-step captures of the current step (first denoiser call of the step only)
        self._cur: dict = {}
        self._prev: dict = {}
        # results
        self.first_seen: dict[int, int] = {}  # block -> order of first execution
        self.latency = defaultdict(float)     # (block, call, step) -> seconds
        self.denoiser_time = defaultdict(float)  # (call, step) -> seconds
        self.step_time: dict = {}             # (call, step) -> seconds
        self.shapes: dict[int, tuple] = {}    # block -> (input shape, output shape)
        self.activation_bytes: dict[int, int] = {}
        self.stats: dict = defaultdict(dict)  # (call, step) -> {metric: value or array}
        self.timesteps: list[float] = []
        self.cfg_calls: list[bool] = []
        self.step_calls: list[int] = []       # denoiser calls in each step (2 per step: CFG run as two calls)
        self.denoiser_args = None             # (args, kwargs) clone of the first call, for FLOP replay
        self.indicator_source = ""

    # ---- attach / detach -------------------------------------------------------------------------
    def attach(self) -> None:
        self._tracker = track_steps(self.pipe)
        self._untrack.append(self._tracker.on_reset(self._on_reset))
        self._untrack.append(self._tracker.on_step_end(self._on_step_end))
        # The indicator first: the hook added last runs outermost, and the denoiser's timing hook must
        # run before the indicator's (it decides whether this call is captured).
        self._attach_indicator()
        for i, spec in enumerate(self.specs):
            self._hook(spec.module, i)
        self._hook(self.denoiser, -1)

    def _hook(self, module: torch.nn.Module, i: int) -> None:
        observer = Observer(pre=lambda args, kwargs, i=i: self._pre(i, args, kwargs),
                            post=lambda out, i=i: self._post(i, out))
        self._handles.append(add_forward_hook(module, "planner.profiler.timing", observer))

    def detach(self) -> None:
        for undo in reversed(self._handles):
            undo()
        self._handles.clear()
        for undo in self._untrack:
            undo()
        self._untrack.clear()
        if self._tracker is not None:
            release_steps(self._tracker)
            self._tracker = None
        self._resolve_events()

    # ---- indicator (TeaCache's timestep-modulated input) -------------------------------------------
    def _attach_indicator(self) -> None:
        """Watch the first block's timestep-modulated input, as the pipeline's anatomy defines it (the
        same definition TeaCache uses, so the polynomial fitted here is valid for it)."""
        self.indicator_source, undo = anatomy_of(self.pipe).watch_modulated_input(self._capture_indicator,
                                                                                  "planner.profiler")
        self._untrack.append(undo)

    def _capture_indicator(self, tensor) -> None:
        if not self._capture or not isinstance(tensor, torch.Tensor):
            return
        t0 = time.perf_counter()
        self._cur["indicator"] = tensor.detach().float().clone()
        self.overhead += time.perf_counter() - t0

    # ---- hooks -------------------------------------------------------------------------------------
    def _pre(self, i: int, args: tuple, kwargs: dict) -> None:
        t0 = time.perf_counter()
        x = None
        if i == -1:
            self._calls_in_step += 1
            self._capture = self.analyse and self._calls_in_step == 1
            if self.denoiser_args is None:
                self.denoiser_args = _clone_tree((args, kwargs))
        x = primary_input(args, kwargs)
        if i >= 0 and i not in self.first_seen:
            self.first_seen[i] = len(self.first_seen)
        if self._capture and x is not None and i >= 0 and self.specs[i].attention:
            self._cur.setdefault("tokens_in", {})[i] = x.detach().clone()
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            t1 = time.perf_counter()
            self.overhead += t1 - t0
            self._open[i] = (t1, self.overhead, x, start)
            start.record()
        else:
            t1 = time.perf_counter()
            self.overhead += t1 - t0
            self._open[i] = (t1, self.overhead, x, None)

    def _post(self, i: int, output) -> None:
        t_end = time.perf_counter()
        end = None
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        opened = self._open.pop(i, None)
        if opened is None:
            return
        t_start, ov_start, x, start = opened
        seconds = (t_end - t_start) - (self.overhead - ov_start)
        step = self._tracker.step if self._tracker is not None else 0
        if self.cuda:
            self._events.append((i, self.call, step, start, end))
        elif i == -1:
            self.denoiser_time[(self.call, step)] += seconds
        else:
            self.latency[(i, self.call, step)] += seconds
        if i == -1 or self._capture or (i not in self.shapes):
            y = primary_output(output, x)
            if y is not None:
                if i >= 0 and i not in self.shapes:
                    self.shapes[i] = (tuple(x.shape) if x is not None else None, tuple(y.shape))
                    self.activation_bytes[i] = sum(t.numel() * t.element_size() for t in tensors_in(output))
                if i == -1 and self.expected_rows:
                    self.cfg_calls.append(y.shape[0] == 2 * self.expected_rows)
                if self._capture:
                    entry = {"out": y.detach().clone()}
                    if x is not None and x.shape == y.shape:
                        entry["res"] = (y.detach().float() - x.detach().float())
                    self._cur.setdefault("blocks", {})[i] = entry
        self.overhead += time.perf_counter() - t_end

    # ---- step boundaries ---------------------------------------------------------------------------
    def _on_reset(self) -> None:
        self.call += 1
        self._prev, self._cur = {}, {}
        self._calls_in_step = 0
        self._step_mark = (time.perf_counter(), self.overhead)
        if self.call == 0:
            try:
                self.timesteps = [float(t) for t in self.pipe.scheduler.timesteps]
            except (TypeError, ValueError):
                self.timesteps = []

    def _on_step_end(self, step: int) -> None:
        now = time.perf_counter()
        mark, ov = self._step_mark
        self.step_time[(self.call, step)] = (now - mark) - (self.overhead - ov)
        if self.cuda:
            torch.cuda.synchronize()
        if self._cur:
            self._analyse_step(step)
        self._prev, self._cur = self._cur, {}
        self.step_calls.append(self._calls_in_step)
        self._calls_in_step = 0
        self._capture = False
        done = time.perf_counter()
        self.analysis_seconds += done - now
        self._step_mark = (done, self.overhead)

    @torch.no_grad()
    def _analyse_step(self, step: int) -> None:
        stats = self.stats[(self.call, step)]
        cur_blocks, prev_blocks = self._cur.get("blocks", {}), self._prev.get("blocks", {})
        for i, entry in cur_blocks.items():
            if i == -1:
                continue
            prev = prev_blocks.get(i)
            if prev is not None and prev["out"].shape == entry["out"].shape:
                stats.setdefault("output_rel_l1", {})[i] = rel_l1(entry["out"], prev["out"])
                stats.setdefault("output_cos", {})[i] = cosine(entry["out"], prev["out"])
                if "res" in entry and "res" in prev:
                    stats.setdefault("residual_rel_l1", {})[i] = rel_l1(entry["res"], prev["res"])
                    stats.setdefault("residual_cos", {})[i] = cosine(entry["res"], prev["res"])
                    stats.setdefault("residual_rel_l1_rows", {})[i] = rel_l1_rows(entry["res"], prev["res"])
        for i, x in self._cur.get("tokens_in", {}).items():
            frac, mean = token_similarity(x, self.token_threshold, self.max_tokens)
            stats.setdefault("token_frac", {})[i] = frac
            stats.setdefault("token_mean_max", {})[i] = mean
        out = cur_blocks.get(-1)
        prev_out = prev_blocks.get(-1)
        if out is not None:
            y = out["out"]
            if prev_out is not None and prev_out["out"].shape == y.shape:
                stats["denoiser_rel_l1"] = rel_l1(y, prev_out["out"])
                stats["denoiser_cos"] = cosine(y, prev_out["out"])
                stats["denoiser_rel_l1_rows"] = rel_l1_rows(y, prev_out["out"])
            if self.expected_rows and y.shape[0] == 2 * self.expected_rows:
                cond, uncond = y.chunk(2)
                stats["cfg_rel_l1"] = rel_l1(cond, uncond)
                stats["cfg_cos"] = cosine(cond, uncond)
        ind, prev_ind = self._cur.get("indicator"), self._prev.get("indicator")
        if ind is not None and prev_ind is not None and ind.shape == prev_ind.shape:
            stats["indicator_rel_l1"] = rel_l1(ind, prev_ind)
            stats["indicator_rel_l1_rows"] = rel_l1_rows(ind, prev_ind)

    def _resolve_events(self) -> None:
        if not self._events:
            return
        torch.cuda.synchronize()
        for i, call, step, start, end in self._events:
            seconds = start.elapsed_time(end) / 1000.0
            if i == -1:
                self.denoiser_time[(call, step)] += seconds
            else:
                self.latency[(i, call, step)] += seconds
        self._events.clear()


def _clone_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple):
        return tuple(_clone_tree(o) for o in obj)
    if isinstance(obj, list):
        return [_clone_tree(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _clone_tree(v) for k, v in obj.items()}
    return obj
