"""The measuring side of `bench.peers`: one model's baseline, its search contexts, and every peer on a
freshly loaded pipeline beside it (row stores, the sequential verdicts, latency, the tuned peers' sweeps,
the hand stack, the side-by-side timing). `bench.peers` runs it and reports.

Longer than ~400 lines because `ModelBench` keeps one model's baseline images, row store and timing
state for every peer sweep; splitting it would pass that state between modules.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field

from bench.common import fmt, torch_threads

CALIBRATION_SEED = 900_000   # MagCache's calibration run
VERIFY_SEED_OFFSET = 500_000  # planner.search.context's: the verification seeds start this far above the search's
PROXY_ROWS = 2               # rows whose FLOPs rank the values that held in a sweep


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _clause_dict(r) -> dict:
    if not r.available or r.measured is None:
        return {"available": False, "message": r.message}
    m = r.measured
    return {"quantity": r.clause.measured_name, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "n": m.n, "baseline": r.baseline, "candidate": r.candidate, "holds": r.point,
            "holds_conservative": r.conservative}


def _decision_dict(decision) -> dict:
    return {"holds": decision.holds, "n": decision.largest,
            "clauses": {str(c): dict(_clause_dict(r), decided=decision.how.get(c)) for c, r in decision.results.items()}}


class NotFinite(Exception):
    """A peer produced NaN or infinite pixels."""


class RowStore:
    """The images of one peer configuration on one freshly loaded pipeline, per phase, generated lazily.

    Rows are generated in aligned chunks of the latency batch (the plans' batch, 8), whatever sample size is
    asked first: a batch-dependent cache (a threshold on a batch's residual) then makes the same decisions on
    the images it is judged by as on the batch it is timed on, gives each row the same image for every
    budget, and the budgets of one model share the images (their rows are prefixes of one seed sequence)."""

    def __init__(self, bench: "ModelBench", peer, steps: int | None = None) -> None:
        self.bench, self.peer, self.steps = bench, peer, steps
        self.pipe = self.undo = None
        self.images: dict[str, object] = {}
        self.seeds: dict[str, tuple] = {}
        self.work: float | None = None     # FLOPs of one latency batch / the baseline's
        self.info: dict = {}

    def ensure(self):
        if self.pipe is None:
            self.pipe, self.undo, self.info["compile_handles"] = self.bench.build(self.peer, self.steps)
        return self.pipe

    @property
    def compile_s(self) -> float | None:
        """torch.compile time this pipeline spent (measured by the compile handles at their first calls)."""
        handles = self.info.get("compile_handles")
        return sum(float(h.info.get("setup_s", 0.0)) for h in handles) if handles else None

    def get(self, phase: str, request, n: int):
        import torch

        have = self.images.get(phase)
        k = 0 if have is None else len(have)
        if k < n:
            chunk = self.bench.settings.batch
            stop = min(len(request), -(-n // chunk) * chunk)
            more = self.bench.generate(self.ensure(), request.rows(k, stop), batch_size=chunk)
            self.images[phase] = more if have is None else torch.cat([have, more])
            self.seeds[phase] = tuple(self.seeds.get(phase, ())) + tuple(request.seeds[k:stop])
        if self.seeds[phase][:n] != tuple(request.seeds[:n]):
            raise RuntimeError("row store asked for other rows than it holds")   # budgets must share seeds
        return self.images[phase][:n]

    def release(self) -> None:
        if self.undo is not None:
            try:
                self.undo()
            except Exception:  # noqa: BLE001 - the pipeline is discarded anyway
                pass
        self.pipe = self.undo = None
        self.images.clear()


@dataclass
class Point:
    """One knob value of a sweep: its store and what was decided on it."""
    index: int
    value: object
    store: RowStore              # the sweep's pipeline (search seeds; verification too unless `vstore`)
    vstore: RowStore | None = None   # the verified configuration when it differs (the stack with torch.compile)
    search: object = None        # Decision on the search seeds (point verdict)
    verify: object = None        # Decision on the verification seeds (conservative verdict)
    error: str | None = None


@dataclass
class SweepResult:
    tunable: object
    points: dict = field(default_factory=dict)         # index -> Point
    order: list = field(default_factory=list)          # indices in the order evaluated
    winner: int | None = None
    tries: list = field(default_factory=list)          # indices verified, in order
    final: int | None = None                            # verified index, or the last tried
    verified: bool = False
    reason: str | None = None


class ModelBench:
    """One model: the baseline pipeline, one search context per budget, and the peers' pipelines beside it."""

    def __init__(self, model: str, budgets: list[str], args, log) -> None:
        import torch

        from ground.anatomy import anatomy_of
        from ground.generation import default_request, generate
        from ground.identity import fingerprint
        from planner.demo import DEMO_MODELS
        from planner.models import load_pipeline
        from planner.quality.budget import parse_budget
        from planner.search.context import VERIFY_SEED_OFFSET as offset
        from planner.search.context import SearchContext, SearchSettings
        from planner.search.work import flops_of

        from bench.peer_methods import Env

        assert offset == VERIFY_SEED_OFFSET, "planner.search.context moved its verification seeds: update bench.peers"
        self.model, self.args, self.log = model, args, log
        self.trained = model in DEMO_MODELS
        self.budgets = budgets
        self._torch, self._load, self._generate = torch, load_pipeline, generate
        self.base_pipe = load_pipeline(model)
        fp = fingerprint(anatomy_of(self.base_pipe).denoiser)
        self.ctxs = {}
        for budget in budgets:
            parsed = parse_budget(budget)
            cap = args.tiny_samples if not self.trained else search_cap(parsed, args)
            verify = args.tiny_samples if not self.trained else args.verify_samples
            settings = SearchSettings(name=model, budget=budget, seed=args.seed, samples=cap, verify_samples=verify,
                                      batch=args.batch, latency_repeats=args.repeats, threads=args.threads,
                                      baseline_steps=args.baseline_steps, command="python -m bench.peers")
            self.ctxs[budget] = SearchContext(settings=settings, budget=parsed, pipe=self.base_pipe, fingerprint=fp)
        self.ctx = self.ctxs[budgets[0]]
        self.settings = self.ctx.settings
        self.steps, self.guidance = self.settings.baseline_steps, self.settings.guidance_scale
        self.env = Env(steps=self.steps, calibrate=lambda pipe: generate(pipe, default_request(pipe, 2, CALIBRATION_SEED),
                                                                          guidance_scale=self.guidance))
        self.classifier = anatomy_of(self.base_pipe).label_classifier()
        log(f"== {model}: budgets {', '.join(budgets)}; baseline {self.steps} steps, search seeds from {args.seed}, "
            f"verification seeds from {self.ctx.requests['verify'].seeds[0]}")
        # what the baseline pipeline gives now; compared again at the end: no peer may leak into it
        self._probe_request = default_request(self.base_pipe, 2, CALIBRATION_SEED + 1)
        self._probe = generate(self.base_pipe, self._probe_request, steps=self.steps, guidance_scale=self.guidance)
        self.base_flops = flops_of(self.ctx.run_baseline_batch) if args.work else None
        self.latencies: dict[str, dict] = {}
        self.finals: dict[tuple[str, str], RowStore] = {}      # (budget, kind) -> the store of the row to time
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------------------- pipelines, images
    def build(self, peer, steps: int | None = None):
        """A freshly loaded pipeline with `peer` applied: (pipe, undo, compile handles). Raises Unavailable
        with the reason."""
        import dataclasses

        from backends.sampler import pin_call_arguments

        from bench.peer_methods import Unavailable

        pipe = self._load(self.model)
        self._torch.manual_seed(0)   # tomesd forks the global generator: keep every run reproducible
        if peer.family not in ("steps", "plan", "stack"):
            # caches and token merging run at the baseline's steps, whatever count a caller passes
            pin_call_arguments(pipe, {"num_inference_steps": self.steps}, "bench.peers.steps")
        env = dataclasses.replace(self.env, steps=steps or self.steps)
        env.memo = self.env.memo
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                undo = peer.setup(pipe, env)
                return pipe, undo, env.memo.pop("compile_handles", [])
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a peer that breaks on this model is a result, not a crash
            raise Unavailable(f"could not apply: {_first_line(exc)}") from None

    def generate(self, pipe, request, batch_size: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._generate(pipe, request, steps=self.steps, guidance_scale=self.guidance, batch_size=batch_size)

    def store(self, peer, steps: int | None = None) -> RowStore:
        return RowStore(self, peer, steps)

    # ------------------------------------------------------------------------------------------ quality
    def decide(self, budget: str, phase: str, store: RowStore):
        """The budget's sequential verdict on `store`'s pipeline: point verdict in "search", conservative in
        "verify" (planner.quality.sequential.decide, the planner's sizes and evaluators)."""
        from planner.quality.sequential import decide

        ctx = self.ctxs[budget]
        request = ctx.requests[phase]

        def evaluate(n, sub_budget):
            evaluator = ctx.evaluator(phase, n, sub_budget)
            images = store.get(phase, request, n)
            if not bool(self._torch.isfinite(images).all()):
                raise NotFinite("produced non-finite images")
            return evaluator.evaluate(images)

        return decide(ctx.budget, ctx.sizes[phase], evaluate, phase)

    def info_metrics(self, budget: str, phase: str, store: RowStore, n: int) -> dict:
        """PSNR to the baseline's images and label accuracy, on the rows the decision used."""
        from planner.quality.budget import parse_budget
        from planner.quality.evaluate import Evaluator

        if not n:
            return {}
        ctx = self.ctxs[budget]
        text = "psnr>=0,acc>=0" if self.classifier is not None else "psnr>=0"
        evaluator = Evaluator(parse_budget(text), ctx.baseline_images(phase, n),
                              conditions=list(ctx.requests[phase].conditions[:n]), classifier=self.classifier)
        evaluation = evaluator.evaluate(store.get(phase, ctx.requests[phase], n))
        return {r.clause.metric: _clause_dict(r) for r in evaluation.results}

    # ------------------------------------------------------------------------------------------ latency
    def _run(self, pipe):
        ctx = self.ctx
        return lambda: self._generate(pipe, ctx.latency_request, steps=self.steps, guidance_scale=self.guidance,
                                      batch_size=self.settings.batch)

    def work(self, store: RowStore) -> float | None:
        """Counted work: FLOPs of one latency batch / the baseline's (cached on the store). Not on a compiled
        pipeline (the counter cannot see inside compiled graphs): its eager twin's is reported instead."""
        from planner.search.work import flops_of

        if store.work is None and self.base_flops and not store.info.get("compile_handles"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store.work = flops_of(self._run(store.ensure())) / self.base_flops
        return store.work

    def latency(self, store: RowStore) -> dict:
        """Interleaved with the baseline (planner.search.latency), once per configuration and model."""
        from planner.search.latency import interleaved_ratio

        key = json.dumps([store.peer.method, store.peer.params], sort_keys=True, default=str)
        if key not in self.latencies:
            run = self._run(store.ensure())
            with warnings.catch_warnings(), torch_threads(self.args.threads):
                warnings.simplefilter("ignore")
                lat = interleaved_ratio(self.ctx.run_baseline_batch, run, repeats=self.args.repeats)
            self.latencies[key] = {
                "latency_ratio": lat.ratio, "latency_ratio_ci": list(lat.ratio_ci), "speedup": lat.speedup,
                "speedup_ci": list(lat.speedup_ci), "baseline_s": lat.baseline_s, "candidate_s": lat.candidate_s,
                "repeats": lat.repeats, "threads": lat.threads, "work_ratio": self.work(store)}
        return self.latencies[key]

    # --------------------------------------------------------------------------------------------- rows
    def row(self, budget: str, kind: str, peer, reason: str | None = None, **extra) -> dict:
        ctx = self.ctxs[budget]
        r = {"model": self.model, "trained": self.trained, "budget": budget, "kind": kind, "method": peer.method,
             "family": peer.family, "package": peer.package, "params": peer.params, "reason": reason,
             "speedup": None, "speedup_ci": None, "meets_budget": False if reason else None,
             "batch": self.settings.batch,
             "seeds": {"search": [ctx.requests["search"].seeds[0], len(ctx.requests["search"])],
                       "verify": [ctx.requests["verify"].seeds[0], len(ctx.requests["verify"])]}}
        r.update(extra)
        return r

    def measured_row(self, budget: str, kind: str, store: RowStore, decision, **extra) -> dict:
        """A row for a configuration verified on the verification seeds (decision) and timed."""
        latency = self.latency(store)
        metrics = {str(c): dict(_clause_dict(res), decided=decision.how.get(c)) for c, res in decision.results.items()}
        metrics.update(self.info_metrics(budget, "verify", store, decision.largest))
        r = self.row(budget, kind, store.peer, **extra)
        r.update(latency, metrics=metrics, n=decision.largest, meets_budget=decision.holds,
                 meets_budget_point=all(res.point for res in decision.results.values()) if decision.results else False)
        images = store.images.get("verify")
        if images is not None and decision.largest:
            base = self.ctxs[budget].baseline_images("verify", decision.largest)
            if float((images[:decision.largest] - base).abs().max()) < 1e-3:   # batch-size rounding at most
                r["note"] = "images match the baseline's (max |Δ| < 0.001): nothing was skipped"
        return r

    def baseline_rows(self) -> list[dict]:
        import diffusers

        from bench.peer_methods import Peer

        scheduler = type(self.base_pipe.scheduler).__name__.replace("Scheduler", "")
        peer = Peer(f"baseline: {scheduler}, {self.steps} steps", "baseline", f"diffusers {diffusers.__version__}",
                    {"scheduler": scheduler, "steps": self.steps})
        return [self.row(b, "baseline", peer, speedup=1.0, speedup_ci=[1.0, 1.0], latency_ratio=1.0,
                         latency_ratio_ci=[1.0, 1.0], work_ratio=1.0 if self.base_flops else None, meets_budget=True,
                         metrics={}, n=0) for b in self.budgets]

    def verify_row(self, budget: str, kind: str, store: RowStore, **extra) -> dict:
        """Conservative verdict on the verification seeds, then timed (default recipes and plans)."""
        from bench.peer_methods import Unavailable

        try:
            decision = self.decide(budget, "verify", store)
            return self.measured_row(budget, kind, store, decision, **extra)
        except Unavailable as exc:
            return self.row(budget, kind, store.peer, reason=str(exc), **extra)
        except Exception as exc:  # noqa: BLE001 - recorded with the reason
            return self.row(budget, kind, store.peer, reason=f"failed while running: {_first_line(exc)}", **extra)

    def default_rows(self) -> list[dict]:
        from bench.peer_methods import all_peers

        rows = []
        for peer in all_peers(self.model):
            store = self.store(peer)
            for budget in self.budgets:
                rows.append(self.verify_row(budget, "default", store))
                print_row(rows[-1], self.log)
            store.release()
        return rows

    def plan_rows(self, plans: dict) -> list[dict]:
        from bench.peer_methods import Peer, plan_peer

        rows = []
        for budget in self.budgets:
            path = plans.get((self.model, budget))
            if path is None:
                peer = Peer("planner plan", "plan", "planner", {})
                rows.append(self.row(budget, "plan", peer, reason=f"no plan given for {self.model} at {budget} "
                                     f"(pass --plan {self.model}:{budget}=PATH)"))
            else:
                store = self.store(plan_peer(path))
                plan_budget = store.peer.params.get("budget")
                note = (f"plan searched for {plan_budget}, measured here at {budget}"
                        if plan_budget and plan_budget != budget else None)
                rows.append(self.verify_row(budget, "plan", store, **({"note": note} if note else {})))
                if store.peer.params.get("compiled") and not rows[-1]["reason"]:
                    # exported/compiled graphs hide their FLOPs from the counter: the plan's own eager count
                    rows[-1]["work_ratio"] = store.peer.params.get("plan_work_ratio")
                if not rows[-1]["reason"]:
                    self.finals[(budget, "plan")] = store
            print_row(rows[-1], self.log)
        return rows

    # ------------------------------------------------------------------------------------- tuned peers
    def _mid(self, tunable, lo: int, hi: int) -> int:
        """The middle of the open bracket (lo, hi) of grid indices, geometric or arithmetic in the value."""
        candidates = list(range(lo + 1, hi))
        a, b = tunable.grid[candidates[0]], tunable.grid[candidates[-1]]
        if tunable.scale == "log":
            target = math.sqrt(a * b)
            return min(candidates, key=lambda i: (abs(math.log(tunable.grid[i] / target)), abs(i - (lo + hi) / 2)))
        target = (a + b) / 2
        return min(candidates, key=lambda i: (abs(tunable.grid[i] - target), abs(i - (lo + hi) / 2)))

    def _point(self, sweep: SweepResult, stores: dict, index: int, make_peer, steps) -> Point:
        value = sweep.tunable.grid[index]
        if value not in stores:
            stores[value] = self.store(make_peer(value), steps)
        return sweep.points.setdefault(index, Point(index, value, stores[value]))

    def sweep(self, budget: str, tunable, stores: dict, make_peer, start, steps=None, make_verified=None) -> SweepResult:
        """Bisection of the knob on the search seeds (point verdict), then the winner verified on the
        verification seeds (conservative verdict), stepping back one notch toward quality when it fails.
        `make_verified(value)`: the peer that is verified and timed, when not the swept one (compiled)."""
        from bench.peer_methods import Unavailable

        result = SweepResult(tunable)
        grid = tunable.grid
        lo, hi = -1, len(grid)         # highest index known to hold, lowest known to fail
        probe = tunable.index(start)
        while hi - lo > 1 and len(result.order) < self.args.sweep_evals:
            i = probe if probe is not None and lo < probe < hi else self._mid(tunable, lo, hi)
            probe = None
            point = self._point(result, stores, i, make_peer, steps)
            try:
                point.search = self.decide(budget, "search", point.store)
            except Unavailable:
                if not result.order:
                    raise   # the peer cannot act on this model at all
                point.error = "could not apply"
            except Exception as exc:  # noqa: BLE001 - a knob value that breaks is a failing value
                point.error = _first_line(exc)
            result.order.append(i)
            holds = point.search is not None and point.search.holds
            self.log(f"    {tunable.describe(grid[i])}: {'holds' if holds else 'fails'} on the search seeds "
                     f"({_short(point)})")
            if holds:
                lo = i
            else:
                hi = i
                if lo < 0 and i > 0 and len(result.order) == 1:
                    probe = 0   # the first probe failed: does the safest value hold at all? (else: stop here)
        holding = sorted((i for i, p in result.points.items() if p.search is not None and p.search.holds), reverse=True)
        if not holding:
            result.reason = (f"no {tunable.knob} in the sweep holds {budget} on the search seeds "
                             f"(tried {', '.join(tunable.describe(grid[i]) for i in result.order)})")
            return result
        result.winner = self._fastest(result, holding)
        for back in range(self.args.step_backs + 1):
            j = result.winner - back
            if j < 0:
                break
            point = self._point(result, stores, j, make_peer, steps)
            if make_verified is not None and point.vstore is None:
                point.vstore = stores[("verified", point.value)] = self.store(make_verified(point.value), steps)
            try:
                point.verify = self.decide(budget, "verify", point.vstore or point.store)
            except Exception as exc:  # noqa: BLE001
                point.error = _first_line(exc)
            result.tries.append(j)
            result.final = j
            ok = point.verify is not None and point.verify.holds
            self.log(f"    verify {tunable.describe(grid[j])}: {'holds' if ok else 'fails'} (conservative, "
                     f"{_short(point, 'verify')})")
            if ok:
                result.verified = True
                break
        if result.final is not None and result.points[result.final].verify is None:
            result.reason = f"failed while running: {result.points[result.final].error}"
        return result

    def _fastest(self, result: SweepResult, holding: list[int]) -> int:
        """Among the points that held (most aggressive first): the least counted work; equal work (a knob
        past saturation) goes to the safer value. Counted only as far down as the work keeps equal, on the
        first PROXY_ROWS rows of the latency batch (a cheap ranking; rows report the whole batch's)."""
        best = holding[0]
        if not self.args.work or len(holding) == 1:
            return best
        best_work = self.work_proxy(result.points[best].store)
        for i in holding[1:]:
            w = self.work_proxy(result.points[i].store)
            if w > best_work * 1.005:
                break
            best, best_work = i, w
        return best

    def work_proxy(self, store: RowStore) -> float:
        from planner.search.work import flops_of

        if "work_proxy" not in store.info:
            request = self.ctx.latency_request.rows(0, PROXY_ROWS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store.info["work_proxy"] = flops_of(lambda: self.generate(store.ensure(), request, PROXY_ROWS))
        return store.info["work_proxy"]

    def sweep_row(self, budget: str, kind: str, result: SweepResult, peer_for_reason, **extra) -> dict:
        tunable = result.tunable
        sweep = [{tunable.knob: tunable.grid[i], "search": _decision_dict(result.points[i].search)
                  if result.points[i].search else None, "error": result.points[i].error,
                  "flops_proxy": result.points[i].store.info.get("work_proxy")} for i in result.order]
        verification = [{tunable.knob: tunable.grid[j], "verify": _decision_dict(result.points[j].verify)
                         if result.points[j].verify else None} for j in result.tries]
        details = {"sweep": sweep, "verification": verification, "grid": [tunable.grid[0], tunable.grid[-1], len(tunable.grid)],
                   "step_backs": max(0, len(result.tries) - 1), "tuning_note": tunable.note or None}
        if result.final is None or result.reason:
            return self.row(budget, kind, peer_for_reason, reason=result.reason, tuning=details, **extra)
        point = result.points[result.final]
        try:
            r = self.measured_row(budget, kind, point.vstore or point.store, point.verify, tuning=details, **extra)
        except Exception as exc:  # noqa: BLE001
            return self.row(budget, kind, point.store.peer, reason=f"failed while timing: {_first_line(exc)}",
                            tuning=details, **extra)
        if not result.verified:
            r["note"] = (f"no value verified: {len(result.tries)} tried from the search's winner "
                         f"{tunable.describe(tunable.grid[result.winner])} toward quality")
        return r

    def tuned_rows(self) -> list[dict]:
        from bench.peer_methods import Unavailable, tunables

        rows = []
        for tunable in tunables(self.steps):
            start = time.time()
            stores: dict = {}
            self.log(f"  tuning {tunable.name} ({tunable.knob}, {len(tunable.grid)} values, first probe "
                     f"{tunable.describe(tunable.start)})")
            for budget in self.budgets:
                try:
                    result = self.sweep(budget, tunable, stores, tunable.peer, tunable.start)
                except Unavailable as exc:
                    for b in self.budgets:
                        rows.append(self.row(b, "tuned", tunable.peer(tunable.start), reason=str(exc)))
                        rows[-1]["method"] = f"{tunable.name}, tuned"
                        print_row(rows[-1], self.log)
                    break
                rows.append(self.sweep_row(budget, "tuned", result, tunable.peer(tunable.start)))
                rows[-1]["tunable"] = tunable.name
                if rows[-1]["reason"]:
                    rows[-1]["method"] = f"{tunable.name}, tuned"
                print_row(rows[-1], self.log)
            for s in stores.values():
                s.release()
            self.timings[f"tuned {tunable.name}"] = time.time() - start
        return rows

    # --------------------------------------------------------------------------------------- hand stack
    def stack_rows(self, rows: list[dict]) -> list[dict]:
        from backends.quantization import mode_unsupported
        from bench.peer_methods import Peer, Unavailable, stack_peer, tunables

        out = []
        by_name = {t.name: t for t in tunables(self.steps)}
        bf16_reason = mode_unsupported("bf16", self._torch.device("cpu"))
        for budget in self.budgets:
            start = time.time()
            mine = [r for r in rows if r["budget"] == budget and r["kind"] == "tuned" and r["meets_budget"]
                    and r.get("speedup")]
            steps_row = max((r for r in mine if r["family"] == "steps"), key=lambda r: r["speedup"], default=None)
            cache_row = max((r for r in mine if r["family"] == "cache"), key=lambda r: r["speedup"], default=None)
            notes = []
            if bf16_reason:
                notes.append(f"bf16 left out: {bf16_reason}")
            if steps_row is None and cache_row is None:
                peer = Peer("hand stack", "stack", "", {})
                out.append(self.row(budget, "stack", peer, reason="neither a tuned step count nor a tuned cache "
                                                                  "peer verified: nothing to stack"))
                print_row(out[-1], self.log)
                continue
            if steps_row is None:
                sampler, steps = None, self.steps
                notes.append(f"no tuned step count verified: the baseline's own scheduler at {self.steps} steps")
            else:
                sampler, steps = steps_row["params"]["sampler"], steps_row["params"]["steps"]
            cache = by_name[cache_row["tunable"]] if cache_row else None
            if cache is None:
                notes.append("no tuned cache peer verified: the stack is the step count and precision only")
            bf16 = bf16_reason is None
            stores: dict = {}
            self.log(f"  hand stack at {budget}: {steps_row['method'] if steps_row else 'baseline steps'} + "
                     f"{cache_row['method'] if cache_row else 'no cache'} + {'bf16' if bf16 else 'fp32'}")
            # every stack is compiled under --compile: the cache's docs pair it with torch.compile where they say
            # so, and diffusers' own inference docs recommend compiling the denoiser whatever else is applied
            compile_ = bool(self.args.compile)
            head = steps_row["method"] if steps_row else "the baseline's steps"
            r = point = final = None
            try:
                if cache is not None:
                    tuned_value = cache_row["params"][cache.knob]
                    verified = (lambda v: stack_peer(sampler, steps, cache, v, bf16, True)) if compile_ else None
                    result = self.sweep(budget, cache, stores,
                                        lambda v: stack_peer(sampler, steps, cache, v, bf16, False), tuned_value, steps,
                                        make_verified=verified)
                    r = self.sweep_row(budget, "stack", result, stack_peer(sampler, steps, cache, tuned_value, bf16, False),
                                       retuned_from={cache.knob: tuned_value, "at_steps": self.steps})
                    point = result.points.get(result.final) if not r["reason"] else None
                    final = (point.vstore or point.store) if point is not None else None
                    if r["reason"] or not r["meets_budget"]:
                        # a practitioner drops a cache that breaks the budget on top of the step count
                        notes.append(f"{cache.name} dropped: {r['reason'] or 'fails verification'} on top of {head}")
                        cache, point, final = None, None, None
                if cache is None:
                    store = self.store(stack_peer(sampler, steps, None, None, bf16, compile_), steps)
                    stores[None] = store
                    r = self.verify_row(budget, "stack", store)
                    final = store if not r["reason"] else None
            except Unavailable as exc:
                r, final = self.row(budget, "stack", stack_peer(sampler, steps, cache, None, bf16, compile_),
                                    reason=str(exc)), None
            if compile_ and final is not None:
                why = cache.compile_docs if cache is not None and cache.compile_docs else \
                    "diffusers' inference docs recommend torch.compile on the denoiser"
                r["compile_s"] = final.compile_s
                # the same computation, counted on the eager twin (the counter cannot see into compiled graphs)
                r["work_ratio"] = self.work(point.store) if point is not None else steps_row and steps_row.get("work_ratio")
                notes.append(f"torch.compile regional ({why}): verified and timed compiled; compile time "
                             f"{fmt(final.compile_s, 0)} s at the first calls, not in the speed-up")
            elif final is not None:
                notes.append("no torch.compile (--compile adds it; its CPU warm-up is long)")
            r["stack_of"] = {"steps": steps_row and steps_row["method"], "cache": cache_row["method"] if cache_row and cache else None,
                             "bf16": bf16, "compile": compile_}
            if notes:
                r["note"] = "; ".join(([r["note"]] if r.get("note") else []) + notes)
            out.append(r)
            print_row(r, self.log)
            if not r["meets_budget"]:
                final = None   # timed in its row; not set beside the plan (it misses the budget)
            for s in stores.values():
                if s is not final:
                    s.release()
            if final is not None:
                self.finals[(budget, "stack")] = final
            self.timings[f"stack {budget}"] = time.time() - start
        return out

    # ------------------------------------------------------------------------------------- side by side
    def side_by_side(self, rows: list[dict]) -> dict:
        """Per budget: the baseline, the plan, the best tuned peer and the hand stack, each on its own pipeline,
        timed in rotating order within every repeat (like bench/oracle.py's two winners): per-repeat ratios."""
        import numpy as np

        from planner.search.latency import median_ci, timed

        out = {}
        for budget in self.budgets:
            mine = [r for r in rows if r["budget"] == budget]
            best = max((r for r in mine if r["kind"] == "tuned" and r["meets_budget"] and r.get("speedup")),
                       key=lambda r: r["speedup"], default=None)
            runs = {"baseline": self.ctx.run_baseline_batch}
            stores = {"plan": self.finals.get((budget, "plan")), "stack": self.finals.get((budget, "stack")),
                      "best tuned": None}
            if best is not None:
                stores["best tuned"] = self.store(_peer_of(best, self.steps), None)
            try:
                for name, store in stores.items():
                    if store is not None:
                        runs[name] = self._run(store.ensure())
            except Exception as exc:  # noqa: BLE001
                out[budget] = {"error": _first_line(exc)}
                continue
            if len(runs) < 2:
                out[budget] = {"error": "nothing to time beside the baseline"}
                continue
            times = {name: [] for name in runs}
            order = list(runs)
            with warnings.catch_warnings(), torch_threads(self.args.threads):
                warnings.simplefilter("ignore")
                for name, run in runs.items():
                    if name != "baseline":
                        run()   # warm-up
                for i in range(self.args.side_repeats):
                    for name in order[i % len(order):] + order[:i % len(order)]:
                        times[name].append(timed(runs[name]))
            t = {k: np.asarray(v) for k, v in times.items()}
            entry = {"repeats": self.args.side_repeats, "threads": self.args.threads,
                     "best_tuned": best and best["method"], "median_s": {k: float(np.median(v)) for k, v in t.items()}}
            for name in runs:
                if name != "baseline":
                    s, ci = median_ci(t["baseline"] / t[name])
                    entry[f"{name.replace(' ', '_')}_speedup"] = {"value": s, "ci": list(ci)}
            for other in ("best tuned", "stack"):
                if "plan" in t and other in t:
                    ratio, ci = median_ci(t[other] / t["plan"])
                    entry[f"plan_over_{other.replace(' ', '_')}"] = {"value": ratio, "ci": list(ci)}
            out[budget] = entry
            if stores["best tuned"] is not None:
                stores["best tuned"].release()
            self.log(f"  side by side at {budget}: " + ", ".join(
                f"{k} {fmt(v['value'])}×" for k, v in entry.items() if isinstance(v, dict) and "value" in v))
        return out

    def release(self) -> None:
        for store in self.finals.values():
            store.release()
        self.finals.clear()

    def baseline_unchanged(self) -> bool:
        again = self._generate(self.base_pipe, self._probe_request, steps=self.steps, guidance_scale=self.guidance)
        return bool(self._torch.equal(again, self._probe))


def _peer_of(row: dict, baseline_steps: int):
    """The Peer of a tuned row again (fresh setup), from its tunable and knob value."""
    from bench.peer_methods import tunables

    tunable = next(t for t in tunables(baseline_steps) if t.name == row["tunable"])
    return tunable.peer(row["params"][tunable.knob])


def _short(point: Point, phase: str = "search") -> str:
    decision = point.search if phase == "search" else point.verify
    if decision is None:
        return point.error or "not evaluated"
    parts = []
    for c, r in decision.results.items():
        if r.measured is not None:
            parts.append(f"{c} {fmt(r.measured.value)} [{fmt(r.measured.ci_low)}, {fmt(r.measured.ci_high)}] "
                         f"n={r.measured.n}")
    return "; ".join(parts) or "no result"


def search_cap(budget, args) -> int | None:
    """The peers' search cap for this budget's metrics (the largest of theirs), or None: the planner's own."""
    caps = [args.search_caps.get(m) for m in budget.metrics]
    return None if any(c is None for c in caps) else max(caps)


def run_model(model: str, budgets: list[str], args, log, plans: dict) -> tuple[list[dict], dict]:
    start = time.time()
    bench = ModelBench(model, budgets, args, log)
    bench.timings["baseline"] = time.time() - start
    rows = bench.baseline_rows()
    t = time.time()
    rows += bench.default_rows()
    bench.timings["default"] = time.time() - t
    side = {}
    if bench.trained:
        rows += bench.tuned_rows()
        rows += bench.stack_rows(rows)
        t = time.time()
        rows += bench.plan_rows(plans)
        bench.timings["plan"] = time.time() - t
        t = time.time()
        side = bench.side_by_side(rows)
        bench.timings["side_by_side"] = time.time() - t
    bench.release()
    bench.timings["total"] = time.time() - start
    return rows, {"model": model, "baseline_unchanged": bench.baseline_unchanged(), "side_by_side": side,
                  "timings_s": {k: round(v, 1) for k, v in bench.timings.items()}}


def _ci(d: dict | None, digits: int = 2) -> str:
    if not d or not d.get("available", True) or d.get("value") is None:
        return "–"
    return f"{fmt(d['value'], digits)} [{fmt(d['ci_low'], digits)}, {fmt(d['ci_high'], digits)}]"


def print_row(r: dict, log) -> None:
    head = f"  [{r['budget']}] {r['kind']:<8} {r['method'][:56]:<56}"
    if r["reason"]:
        log(f"{head} n/a: {r['reason']}")
        return
    clause = (r.get("metrics") or {}).get(r["budget"])
    log(f"{head} x{fmt(r.get('speedup'))}  {r['budget']}: {_ci(clause)} n={r.get('n')}  "
        f"psnr {_ci((r.get('metrics') or {}).get('psnr'), 1)}  meets: {r['meets_budget']}")
