"""Soak test of production use: one accelerated pipeline served from many threads for a long time.

One pipeline with a plan applied (`planner.apply`) is served from `--threads` client threads (closed loop:
each client sends its next request as soon as the last one returns) for `--minutes`. A request asks for a
random batch (1..8 images, random class labels and seeds) in one pipeline call, through the project's one
generation path (`ground.generation.generate`). About one request in ten fails mid-call on purpose:

* a bad condition: one class label out of range (999), so the denoiser's class embedding raises inside the
  first step, after `scheduler.set_timesteps` ran and the caches took their per-call decision;
* an interrupted generation: a forward pre-hook on the denoiser, armed for that one request through a
  thread-local flag, raises at a random later step (after the caches filled).

Checks, all counted into `bench/results/soak.json` (written atomically):

* wrong images: every image of every successful request is compared bit for bit with the same request
  served alone, single-threaded, on the same pipeline and plan before the soak (requests are drawn from a
  pool of `--pool` random requests whose references are computed first; a few are served again alone
  after the soak, and `handle.remove()` must give back exactly the unaccelerated images);
* leaked state: right after each failed request, still under the plan's own (re-entrant) lock so that no
  other request can run in between, every cache runtime of the plan must hold no per-call state (no
  tensor anywhere in its attributes, empty `cache`/`history`/`template`/`state`/`delta`, no decision left
  set), its step tracker must be between calls and the scheduler must carry no step hooks;
* resident memory: VmRSS sampled every `--rss-every` seconds; after a warm-up of the first 10% of the
  soak, (max - min) / min must stay within 5%;
* latency: per-request latency (submit to images, queueing included) p50/p99 for the accelerated pipeline
  and, right after it in the same process, under the same load (same clients, same request mix, same
  failure rate) for `--baseline-minutes`, for an unaccelerated copy of the model (a second pipeline, no
  plan). The unaccelerated pipeline has no plan lock; the soak serialises its calls with a lock of its
  own, as a server must (a diffusers pipeline's scheduler is per-call state).

The memory figure covers the accelerated serving only: the unaccelerated phase after it has another
working set (its range is reported beside). Most of the growth during warm-up is the C allocator giving
each client thread that runs the model its own arena (glibc); with `MALLOC_ARENA_MAX=1` it is far smaller.

Torch runs with `--torch-threads` intra-op threads (default 1) in the whole process: calls are serialised
per pipeline anyway, and a fixed count keeps the images deterministic and the latencies comparable.

    python -m bench.soak --minutes 10 --threads 8 --model digits-unet [--plan PATH] [--out bench/results/soak.json]

Longer than ~400 lines because the server, the request mix, the faults and the per-image reference
check are one experiment whose parts share the request type; it is a bench, not library code.
"""
from __future__ import annotations

import argparse
import inspect
import math
import random
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

BAD_LABEL = 999
PER_CALL_STATE = ("cache", "history", "template", "state", "delta")   # what backends/caching/* reset per call
DECISIONS = ("reusing", "skip_rest")                                   # per-call flags that must be off between calls
RSS_TOLERANCE = 0.05
WARMUP_SHARE = 0.10


class Interrupted(RuntimeError):
    """Raised inside the denoiser, mid-call, for the one request armed to be interrupted."""


# -------------------------------------------------------------------------------------------- the plan

def soak_plan(pipe, plan_path: Path, cache: str):
    """The plan to serve: `plan_path`, plus a cache technique with per-call state when it has none
    (`cache`: auto = DeepCache interval 2 on UNets, TaylorSeer interval 2 on transformers)."""
    from backends.caching import DeepCacheConfig, TaylorSeerConfig
    from backends.technique import STAGE_CACHE
    from ground.anatomy import anatomy_of
    from planner.plan import Plan, TechniqueEntry, load_plan
    from search_spaces.compile import EXPORTERS

    plan = load_plan(plan_path)
    has_cache = any(c.stage == STAGE_CACHE for c in plan.technique_configs())
    if cache == "none" or (cache == "auto" and has_cache):
        return plan, None
    if cache == "auto":
        cache = "deepcache" if anatomy_of(pipe).is_unet else "taylorseer"
    config = DeepCacheConfig(interval=2) if cache == "deepcache" else TaylorSeerConfig(interval=2)
    kept = [t for t in plan.techniques if not (t.type == config.type or (has_cache and _is_cache(t)))]
    # an exported graph (ONNX Runtime, TensorRT) would freeze the cache's per-call decisions, so the
    # exporter refuses a hooked denoiser: such a plan is soaked with its sampler and precision only
    kept = [t for t in kept if not (t.type == "compile" and t.params.get("backend") in EXPORTERS)]
    data = plan.model_dump()
    data["techniques"] = [t.model_dump() for t in kept] + [TechniqueEntry(**config.to_dict()).model_dump()]
    return Plan.model_validate(data), config.label()


def _is_cache(entry) -> bool:
    from backends.technique import STAGE_CACHE, config_from_dict

    return config_from_dict(entry.model_dump()).stage == STAGE_CACHE


def plan_lock(handle):
    """The per-pipeline lock `planner.apply` put around every call (re-entrant): a client holding it can
    call the pipeline and look at its state before any other request runs."""
    return handle.lock


def _tensors_in(value, depth: int = 0) -> int:
    if torch.is_tensor(value):
        return 1
    if depth > 5 or isinstance(value, torch.nn.Module):
        return 0
    if isinstance(value, dict):
        return sum(_tensors_in(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set)):
        return sum(_tensors_in(v, depth + 1) for v in value)
    return 0


def leaked_state(pipe, handle) -> list[str]:
    """Per-call state that survived the end of a call: empty when every cache let go of its request."""
    from ground.hooks import method_hook_names

    found = []
    for h in handle.techniques.handles:
        runtime = h.info.get("runtime")
        if runtime is None:
            continue
        name = type(runtime).__name__
        for attr in PER_CALL_STATE:
            value = getattr(runtime, attr, None)
            if isinstance(value, dict) and value:
                found.append(f"{name}.{attr} has {len(value)} entr{'y' if len(value) == 1 else 'ies'}")
        for attr in DECISIONS:
            if getattr(runtime, attr, False):
                found.append(f"{name}.{attr} still set")
        for attr, value in vars(runtime).items():
            if attr not in PER_CALL_STATE and attr not in ("pipe", "denoiser", "anatomy") and _tensors_in(value):
                found.append(f"{name}.{attr} holds tensors")
        tracker = getattr(runtime, "tracker", None)
        if tracker is not None and tracker.scheduler is not None:
            found.append(f"{name}: step tracker still inside a call")
    hooks = method_hook_names(pipe.scheduler)
    if hooks:
        found.append(f"scheduler hooks left: {hooks}")
    return found


# ----------------------------------------------------------------------------------------- the requests

@dataclass(frozen=True)
class Ask:
    labels: tuple[int, ...]
    seeds: tuple[int, ...]


def request_pool(n: int, seed: int) -> list[Ask]:
    rng = random.Random(seed)
    pool = []
    for _ in range(n):
        batch = rng.randint(1, 8)
        pool.append(Ask(tuple(rng.randrange(10) for _ in range(batch)), tuple(rng.randrange(2**31) for _ in range(batch))))
    return pool


def serve(pipe, ask: Ask) -> torch.Tensor:
    from ground.generation import Request, generate

    return generate(pipe, Request(ask.labels, ask.seeds), batch_size=len(ask.seeds))


class Interrupter:
    """A forward pre-hook on the denoiser that raises at the k-th denoiser call of the one request armed in
    the current thread (thread-local), and does nothing for every other request."""

    def __init__(self, denoiser) -> None:
        self.local = threading.local()
        self.fired = 0
        self._handle = denoiser.register_forward_pre_hook(self._pre)

    def _pre(self, module, args):
        at = getattr(self.local, "at", None)
        if at is None:
            return None
        self.local.calls += 1
        if self.local.calls > at:
            self.local.at = None
            self.fired += 1
            raise Interrupted(f"request interrupted at denoiser call {at + 1}")
        return None

    def arm(self, at: int) -> None:
        self.local.at, self.local.calls = at, 0

    def disarm(self) -> None:
        self.local.at = None

    def close(self) -> None:
        self._handle.remove()


# ------------------------------------------------------------------------------------------------ memory

def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # peak, where /proc is missing


class RssSampler(threading.Thread):
    def __init__(self, every: float) -> None:
        super().__init__(daemon=True, name="rss")
        self.every, self.samples, self.start_t = every, [], time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((round(time.monotonic() - self.start_t, 2), round(rss_mb(), 2)))
            self._stop_event.wait(self.every)

    def stop(self) -> list:
        self._stop_event.set()
        self.join()
        self.samples.append((round(time.monotonic() - self.start_t, 2), round(rss_mb(), 2)))
        return self.samples


def rss_summary(samples: list, total_s: float) -> dict:
    warm = WARMUP_SHARE * total_s
    after = [mb for t, mb in samples if t >= warm] or [samples[-1][1]]
    low, high = min(after), max(after)
    drift = (high - low) / low
    times = [t for t, _ in samples if t >= warm]
    slope = None
    if len(times) >= 3 and times[-1] > times[0]:   # least squares, MB per minute: a leak grows, a plateau does not
        mt, mm = statistics.fmean(times), statistics.fmean(after)
        slope = 60 * sum((t - mt) * (m - mm) for t, m in zip(times, after)) / sum((t - mt) ** 2 for t in times)
    return {"warmup_s": round(warm, 1), "samples": len(samples), "first_mb": samples[0][1],
            "after_warmup": {"n": len(after), "min_mb": low, "max_mb": high, "first_mb": after[0], "last_mb": after[-1],
                             "drift": round(drift, 4), "slope_mb_per_min": None if slope is None else round(slope, 2)},
            "flat_within_5pct": drift <= RSS_TOLERANCE, "series": samples}


# -------------------------------------------------------------------------------------------------- soak

@dataclass
class Served:
    """One pipeline as the clients see it."""

    name: str
    pipe: object
    lock: object
    steps: int
    interrupter: Interrupter
    handle: object = None
    references: dict = field(default_factory=dict)   # pool index -> images served alone
    records: list = field(default_factory=list)
    leaks: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)


def client(served: Served, pool: list[Ask], deadline: float, rng: random.Random, fail_rate: float,
           torch_threads: int) -> None:
    torch.set_num_threads(torch_threads)
    while time.monotonic() < deadline:
        roll = rng.random()
        kind = "ok" if roll >= fail_rate else ("bad_label" if roll < fail_rate / 2 else "interrupted")
        index = rng.randrange(len(pool))
        ask = pool[index]
        if kind == "bad_label":
            labels = list(ask.labels)
            labels[rng.randrange(len(labels))] = BAD_LABEL
            ask = Ask(tuple(labels), ask.seeds)
        record = {"kind": kind, "batch": len(ask.seeds)}
        start = time.perf_counter()
        if kind == "ok":
            try:
                if served.handle is None:
                    with served.lock:           # the unaccelerated pipeline: a server's own lock
                        images = serve(served.pipe, ask)
                else:
                    images = serve(served.pipe, ask)   # the plan's lock serialises calls
            except BaseException as exc:  # noqa: BLE001 - a good request must not fail; count it
                served.unexpected.append(f"{type(exc).__name__}: {exc}"[:300])
                record["error"] = type(exc).__name__
            else:
                record["latency_s"] = time.perf_counter() - start
                reference = served.references.get(index)
                if reference is not None:
                    record["wrong_images"] = int(sum(not torch.equal(a, b) for a, b in zip(images, reference)))
                    if images.shape != reference.shape:
                        record["wrong_images"] = len(ask.seeds)
            served.records.append(record)
            continue
        # A failing request: under the pipeline's (re-entrant) lock, so that its state is inspected right
        # after the failure, before any other request can run and reset it.
        with served.lock:
            if kind == "interrupted":
                served.interrupter.arm(rng.randint(1, max(1, served.steps - 1)))
            try:
                serve(served.pipe, ask)
                record["raised"] = None
            except Interrupted:
                record["raised"] = "Interrupted"
            except IndexError:
                record["raised"] = "IndexError"
            except BaseException as exc:  # noqa: BLE001
                record["raised"] = type(exc).__name__
                served.unexpected.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
            finally:
                served.interrupter.disarm()
            record["latency_s"] = time.perf_counter() - start
            record["isolated"] = record["raised"] == {"bad_label": "IndexError", "interrupted": "Interrupted"}[kind]
            if served.handle is not None:
                leaks = leaked_state(served.pipe, served.handle)
                record["leaked"] = bool(leaks)
                if leaks:
                    served.leaks.append({"kind": kind, "found": leaks})
        served.records.append(record)


def run_phase(served: Served, pool, seconds: float, threads: int, seed: int, fail_rate: float,
              torch_threads: int) -> float:
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    workers = [threading.Thread(target=client, name=f"client-{i}", daemon=True,
                                args=(served, pool, deadline, random.Random(seed * 1000 + i), fail_rate, torch_threads))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.monotonic() - start


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def pct(q):   # nearest rank
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]
    return {"n": len(ordered), "p50": round(pct(50), 4), "p90": round(pct(90), 4), "p99": round(pct(99), 4),
            "max": round(ordered[-1], 4), "mean": round(statistics.fmean(ordered), 4)}


def summarise(served: Served, seconds: float) -> dict:
    recs = served.records
    ok = [r for r in recs if r["kind"] == "ok" and "error" not in r]
    failed = {k: [r for r in recs if r["kind"] == k] for k in ("bad_label", "interrupted")}
    out = {"served_s": round(seconds, 1), "requests": len(recs), "ok": len(ok),
           "images": sum(r["batch"] for r in ok),
           "images_per_s": round(sum(r["batch"] for r in ok) / seconds, 2) if seconds else None,
           "latency_s": percentiles([r["latency_s"] for r in ok]),
           "latency_failed_s": percentiles([r["latency_s"] for r in recs if r["kind"] != "ok"]),
           "failed": {k: {"n": len(v), "isolated": sum(bool(r.get("isolated")) for r in v),
                          "leaked": sum(bool(r.get("leaked")) for r in v)} for k, v in failed.items()},
           "errors_in_good_requests": sum("error" in r for r in recs if r["kind"] == "ok"),
           "unexpected": served.unexpected[:20]}
    checked = [r for r in ok if "wrong_images" in r]
    out["images_checked"] = sum(r["batch"] for r in checked)
    out["wrong_images"] = sum(r["wrong_images"] for r in checked)
    if served.handle is not None:
        out["leaks"] = served.leaks[:20]
    return out


def soak(model: str, plan_path: Path, minutes: float, threads: int, baseline_minutes: float, pool_size: int,
         fail_rate: float, seed: int, torch_threads: int, rss_every: float, cache: str, log=print) -> dict:
    import planner
    from bench.common import environment, now
    from ground.anatomy import denoiser_of
    from planner.models import load_pipeline

    warnings.filterwarnings("ignore", message="plan tuned for batch")   # batches of 1..8 on a batch-8 plan
    torch.set_num_threads(torch_threads)
    started, t0 = now(), time.monotonic()
    pipe, base_pipe = load_pipeline(model), load_pipeline(model)
    pool = request_pool(pool_size, seed)
    # The unaccelerated images of one request, before the plan goes on: after handle.remove() they must return.
    probe = Ask((1, 7), (11, 12))
    before_plan = serve(pipe, probe)
    plan, added = soak_plan(pipe, plan_path, cache)
    handle = planner.apply(pipe, plan)
    labels = [c.label() for c in sorted(plan.technique_configs(), key=lambda c: c.stage)]
    log(f"[soak] {model}: plan {plan_path}" + (f" + {added}" if added else "") + f" -> {', '.join(labels)}")
    steps_default = inspect.signature(type(base_pipe).__call__).parameters["num_inference_steps"].default
    acc = Served("accelerated", pipe, plan_lock(handle), plan.shapes.steps, Interrupter(denoiser_of(pipe)), handle)
    base = Served("unaccelerated", base_pipe, threading.RLock(), int(steps_default), Interrupter(denoiser_of(base_pipe)))
    # References: every pool request served alone, single-threaded, on the accelerated pipeline.
    t = time.monotonic()
    for i, ask in enumerate(pool):
        acc.references[i] = serve(pipe, ask)
    serve(base_pipe, Ask(tuple(range(8)), tuple(range(8))))   # warm the unaccelerated pipeline at the largest batch
    log(f"[soak] {len(pool)} reference requests served alone in {time.monotonic() - t:.1f}s; "
        f"{threads} clients, {minutes:g} min accelerated, then {baseline_minutes:g} min unaccelerated")

    sampler = RssSampler(rss_every)
    sampler.start()
    served_s = {"accelerated": run_phase(acc, pool, 60 * minutes, threads, seed + 1, fail_rate, torch_threads)}
    accelerated_end = time.monotonic() - sampler.start_t
    a = summarise(acc, served_s["accelerated"])
    log(f"[soak] accelerated: {a['requests']} requests, wrong images {a['wrong_images']}, leaks {len(acc.leaks)}, "
        f"RSS {rss_mb():.0f} MB; now the unaccelerated copy under the same load")
    served_s["unaccelerated"] = (run_phase(base, pool, 60 * baseline_minutes, threads, seed + 2, fail_rate, torch_threads)
                                 if baseline_minutes > 0 else 0.0)
    samples = sampler.stop()
    soak_s = time.monotonic() - sampler.start_t

    # After the soak: requests served alone again give the same images; the state is clean; removing the
    # plan gives back exactly the unaccelerated pipeline.
    again = [i for i in range(min(4, len(pool)))]
    after_soak_mismatches = sum(not torch.equal(serve(pipe, pool[i]), acc.references[i]) for i in again)
    final_leaks = leaked_state(pipe, handle)
    acc.interrupter.close()
    base.interrupter.close()
    handle.remove()
    restored = torch.equal(serve(pipe, probe), before_plan) and not handle.attached()

    accelerated, unaccelerated = summarise(acc, served_s["accelerated"]), summarise(base, served_s["unaccelerated"])
    # Memory of the accelerated pipeline's serving; the unaccelerated phase after it is reported beside it.
    rss = rss_summary([x for x in samples if x[0] <= accelerated_end], accelerated_end)
    rss["unaccelerated_phase_mb"] = [min((mb for t, mb in samples if t > accelerated_end), default=None),
                                     max((mb for t, mb in samples if t > accelerated_end), default=None)]
    failed = accelerated["failed"]
    checks = {
        "wrong_images": accelerated["wrong_images"],
        "leaked_after_failure": sum(v["leaked"] for v in failed.values()),
        "failed_requests_isolated": all(v["n"] == v["isolated"] for v in failed.values())
        and all(v["n"] == v["isolated"] for v in unaccelerated["failed"].values()),
        "each_failure_kind_seen": all(v["n"] > 0 for v in failed.values()),
        "errors_in_good_requests": accelerated["errors_in_good_requests"] + unaccelerated["errors_in_good_requests"],
        "same_images_served_alone_after": after_soak_mismatches == 0,
        "state_clean_at_end": not final_leaks,
        "remove_restores_pipeline": restored,
        "rss_flat_within_5pct": rss["flat_within_5pct"],
    }
    checks["all_hold"] = (checks["wrong_images"] == 0 and checks["leaked_after_failure"] == 0
                          and checks["failed_requests_isolated"] and checks["each_failure_kind_seen"]
                          and checks["errors_in_good_requests"] == 0 and checks["same_images_served_alone_after"]
                          and checks["state_clean_at_end"] and checks["remove_restores_pipeline"]
                          and checks["rss_flat_within_5pct"])
    return {"model": model, "plan": str(plan_path), "cache_added": added, "techniques": labels,
            "clients": threads, "torch_threads": torch_threads, "minutes": minutes, "baseline_minutes": baseline_minutes,
            "pool": pool_size, "fail_rate": fail_rate, "seed": seed, "started": started,
            "soak_s": round(soak_s, 1), "wall_s": round(time.monotonic() - t0, 1),
            "checks": checks, "accelerated": accelerated, "unaccelerated": unaccelerated,
            "final_leaks": final_leaks, "rss_mb": rss, "environment": environment(torch_threads)}


def summary(result: dict) -> str:
    a, b, c, rss = result["accelerated"], result["unaccelerated"], result["checks"], result["rss_mb"]
    lat = lambda s: (f"p50 {s['latency_s']['p50'] * 1e3:.0f} ms, p99 {s['latency_s']['p99'] * 1e3:.0f} ms "  # noqa: E731
                     f"(N={s['latency_s']['n']}), {s['images_per_s']} images/s") if s["latency_s"]["n"] else "no requests"
    fa = a["failed"]
    lines = [
        f"soak {result['model']} ({', '.join(result['techniques'])}): {result['clients']} clients, "
        f"{result['soak_s']:.0f}s, torch threads {result['torch_threads']}",
        f"  accelerated:   {a['requests']} requests ({a['ok']} good, {a['images_checked']} images checked): {lat(a)}",
        f"  unaccelerated: {b['requests']} requests: {lat(b)}",
        f"  failed mid-call: bad label {fa['bad_label']['n']} (isolated {fa['bad_label']['isolated']}, leaked "
        f"{fa['bad_label']['leaked']}), interrupted {fa['interrupted']['n']} (isolated {fa['interrupted']['isolated']}, "
        f"leaked {fa['interrupted']['leaked']})",
        f"  wrong images {c['wrong_images']}, errors in good requests {c['errors_in_good_requests']}, state clean at "
        f"end {c['state_clean_at_end']}, remove() restores {c['remove_restores_pipeline']}",
        f"  RSS after {rss['warmup_s']:.0f}s warm-up: {rss['after_warmup']['min_mb']:.0f}-{rss['after_warmup']['max_mb']:.0f} MB "
        f"(drift {100 * rss['after_warmup']['drift']:.1f}%, slope {rss['after_warmup']['slope_mb_per_min']} MB/min, "
        f"{rss['after_warmup']['n']} samples)",
        f"  all checks hold: {c['all_hold']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits-unet")
    p.add_argument("--plan", type=Path, default=None, help="plan YAML (default plans/MODEL.yaml)")
    p.add_argument("--cache", choices=("auto", "deepcache", "taylorseer", "none"), default="auto",
                   help="cache technique added when the plan has none (auto: DeepCache on UNets, TaylorSeer on "
                        "transformers; interval 2)")
    p.add_argument("--minutes", type=float, default=10.0, help="time the accelerated pipeline is served (default 10)")
    p.add_argument("--baseline-minutes", type=float, default=None,
                   help="time the unaccelerated copy is served under the same load (default: a quarter of --minutes)")
    p.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads for the process (default 1)")
    p.add_argument("--pool", type=int, default=64, help="distinct random requests, each checked against its "
                                                        "reference served alone (default 64)")
    p.add_argument("--fail-rate", type=float, default=0.1, help="share of requests failing mid-call (default 0.1)")
    p.add_argument("--rss-every", type=float, default=2.0, help="seconds between RSS samples (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = p.parse_args(argv)
    if not (args.minutes > 0 and args.threads >= 1 and args.torch_threads >= 1 and args.pool >= 1
            and 0 < args.fail_rate < 1 and args.rss_every > 0):
        p.error("--minutes, --threads, --torch-threads, --pool, --rss-every must be positive; --fail-rate in (0, 1)")
    baseline = args.minutes / 4 if args.baseline_minutes is None else args.baseline_minutes
    plan = args.plan or ROOT / "plans" / f"{args.model}.yaml"
    from bench.common import write_json

    result = soak(args.model, plan, args.minutes, args.threads, baseline, args.pool, args.fail_rate, args.seed,
                  args.torch_threads, args.rss_every, args.cache)
    write_json(args.out, result)
    print(summary(result))
    print(f"wrote {args.out}")
    return 0 if result["checks"]["all_hold"] else 1


if __name__ == "__main__":
    sys.exit(main())
