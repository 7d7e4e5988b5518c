"""The planner's plan side by side with what users would pick instead, in one run, on the same seeds.

    .venv/bin/python -m bench.peers                  # all models, defaults (needs `pip install -e '.[peers]'`)
    .venv/bin/python -m bench.peers --quick          # a few samples per model: checks the plumbing only

For each model, every method of `bench.peer_methods.all_peers` (fewer steps, the DeepCache and tomesd
packages, diffusers' own cache hooks, cache-dit, the shipped plan) is applied to a freshly loaded
pipeline and measured exactly like a planner trial (`planner.search.SearchContext`):

* quality: the same N (condition, seed) pairs for every method, seeds disjoint from the plans' search
  and verification seeds; the budget through the planner's `Evaluator` (demo models: FID to the
  held-out digits with the digits features, paired bootstrap CI, conservative verdict), plus PSNR to
  the baseline's images and label accuracy, each with its CI and N;
* latency: `interleaved_ratio` against the 50-step baseline (B C C B ..., median of pair ratios) at
  the plans' batch size with the torch thread count fixed (`--threads`, the plans' 1); counted work
  (FLOPs executed) beside it. Images and FLOPs are not timed: they use every core (`--work-threads`).

A method that cannot act on a model is listed with the reason. The tiny pipelines (`tiny-sd`,
`tiny-pixart`, `tiny-flux`) have random weights: they show which peers apply to those architectures,
and only paired metrics against their own baseline (PSNR) mean anything there; their budget is
`--tiny-budget` (psnr>=30), not FID.

Results: bench/results/peers.json (one row per model and method) and bench/results/peers.md (the
table; `--update-readme` also puts it into README.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from bench.common import RESULTS, ROOT, environment, fmt, now, torch_threads, update_readme, write_json

PEER_SEED = 700_000          # evaluation seeds: the plans searched on 0.., verified on 500,000..
CALIBRATION_SEED = 900_000   # MagCache's calibration run
DEMO = ("digits-unet", "digits-dit")
TINY = ("tiny-sd", "tiny-pixart", "tiny-flux")


def _clause_dict(r) -> dict:
    if not r.available or r.measured is None:
        return {"available": False, "message": r.message}
    m = r.measured
    return {"quantity": r.clause.measured_name, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high,
            "n": m.n, "baseline": r.baseline, "candidate": r.candidate, "holds": r.point,
            "holds_conservative": r.conservative}


def _metrics(evaluation, info) -> dict:
    out = {str(r.clause): _clause_dict(r) for r in evaluation.results}
    out.update({r.clause.metric: _clause_dict(r) for r in info.results})
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class ModelBench:
    """One model: its baseline (images, evaluators, latency callable) and one row per method."""

    def __init__(self, model: str, args, log) -> None:
        import torch

        from ground.generation import default_request, generate
        from planner.demo import DEMO_MODELS
        from ground.anatomy import anatomy_of, denoiser_of
        from ground.identity import fingerprint
        from planner.models import load_pipeline
        from planner.quality.budget import parse_budget
        from planner.quality.evaluate import Evaluator
        from planner.search.context import SearchContext, SearchSettings
        from planner.search.work import flops_of

        from bench.peer_methods import Env

        self.model, self.args, self.log = model, args, log
        self.trained = model in DEMO_MODELS
        self.budget_text = args.budget if self.trained else args.tiny_budget
        n = args.samples if self.trained else args.tiny_samples
        self.settings = SearchSettings(model=model, budget=self.budget_text, seed=PEER_SEED, samples=n,
                                       cheap_samples=min(64, n), verify_samples=n, batch=args.batch,
                                       latency_repeats=args.repeats, threads=args.threads)
        self.base_pipe = load_pipeline(model)
        log(f"== {model}: baseline on {n} seeds from {PEER_SEED} ({self.settings.baseline_steps} steps) ...")
        self.ctx = SearchContext(self.settings, parse_budget(self.budget_text), self.base_pipe, None,
                                 fingerprint(denoiser_of(self.base_pipe)))
        request = self.ctx.search.request
        self.info = Evaluator(parse_budget("psnr>=0,acc>=0" if self.trained else "psnr>=0"), self.ctx.search.images,
                              conditions=list(request.conditions), classifier=self.ctx.classifier
                              or anatomy_of(self.base_pipe).label_classifier())
        steps, guidance = self.settings.baseline_steps, self.settings.guidance_scale
        self.env = Env(steps=steps, calibrate=lambda pipe: generate(pipe, default_request(pipe, 2, CALIBRATION_SEED),
                                                                     guidance_scale=guidance))
        # what the baseline pipeline gives now; compared again at the end: no peer may leak into it
        self._probe_request = default_request(self.base_pipe, 2, PEER_SEED)
        self._probe = generate(self.base_pipe, self._probe_request, steps=steps, guidance_scale=guidance)
        self.base_flops = flops_of(self.ctx.run_baseline_batch) if args.work else None
        self._torch, self._load = torch, load_pipeline

    def baseline_row(self) -> dict:
        import diffusers

        scheduler = type(self.base_pipe.scheduler).__name__.replace("Scheduler", "")
        steps = self.settings.baseline_steps
        row = self._row(f"baseline: {scheduler}, {steps} steps", "baseline", f"diffusers {diffusers.__version__}",
                        {"scheduler": scheduler, "steps": steps})
        images = self.ctx.search.images
        evaluation = self.ctx.search.evaluator.evaluate(images)
        row.update(latency_ratio=1.0, latency_ratio_ci=[1.0, 1.0], speedup=1.0, speedup_ci=[1.0, 1.0],
                   work_ratio=1.0 if self.base_flops else None,
                   metrics=_metrics(evaluation, self.info.evaluate(images)),
                   meets_budget=evaluation.holds, meets_budget_point=evaluation.point_holds)
        return row

    def _row(self, method, family, package, params) -> dict:
        s = self.settings
        return {"model": self.model, "trained": self.trained, "method": method, "family": family, "package": package,
                "params": params, "budget": self.budget_text, "n": s.samples, "seeds": [PEER_SEED, s.samples],
                "batch": s.batch, "reason": None}

    def measure(self, peer) -> dict:
        """A freshly loaded pipeline per method (discarded after): nothing carries over between methods."""
        from backends.call_override import override_call
        from planner.search.latency import interleaved_ratio
        from planner.search.work import flops_of

        from bench.peer_methods import Unavailable

        row = self._row(peer.method, peer.family, peer.package, peer.params)
        pipe = self._load(self.model)
        self._torch.manual_seed(0)  # tomesd forks the global generator: keep every run reproducible
        if peer.family not in ("steps", "plan"):
            # caches and token merging run at the baseline's steps, not at the pipeline's default count
            override_call(pipe, {"num_inference_steps": self.settings.baseline_steps})
        try:
            undo = peer.setup(pipe, self.env)
        except Unavailable as exc:
            return dict(row, reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - a peer that breaks on this model is a result, not a crash
            return dict(row, reason=f"could not apply: {_first_line(exc)}")
        ctx = self.ctx
        ctx.cand_pipe = pipe
        start = time.time()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = ctx.generate_candidate(ctx.search.request)
                if not bool(self._torch.isfinite(images).all()):
                    return dict(row, reason="produced non-finite images")
                evaluation = ctx.search.evaluator.evaluate(images)
                info = self.info.evaluate(images)
                generation_s = time.time() - start
                with torch_threads(self.args.threads):
                    latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch,
                                                repeats=self.args.repeats)
                work = flops_of(ctx.run_candidate_batch) / self.base_flops if self.base_flops else None
        except Exception as exc:  # noqa: BLE001 - recorded with the reason
            return dict(row, reason=f"failed while running: {_first_line(exc)}")
        finally:
            undo()
            ctx.cand_pipe = None
        row.update(latency_ratio=latency.ratio, latency_ratio_ci=list(latency.ratio_ci), speedup=latency.speedup,
                   speedup_ci=list(latency.speedup_ci), baseline_s=latency.baseline_s, candidate_s=latency.candidate_s,
                   repeats=latency.repeats, threads=latency.threads, work_ratio=work, generation_s=generation_s,
                   metrics=_metrics(evaluation, info), meets_budget=evaluation.holds,
                   meets_budget_point=evaluation.point_holds)
        if bool(self._torch.equal(images, ctx.search.images)):
            row["note"] = "images identical to the baseline's: nothing was skipped"
        return row

    def baseline_unchanged(self) -> bool:
        from ground.generation import generate

        again = generate(self.base_pipe, self._probe_request, steps=self.settings.baseline_steps,
                         guidance_scale=self.settings.guidance_scale)
        return bool(self._torch.equal(again, self._probe))


def run_model(model: str, args, log) -> tuple[list[dict], dict]:
    from bench.peer_methods import all_peers

    bench = ModelBench(model, args, log)
    rows = [bench.baseline_row()]
    _print_row(rows[0], log)
    for peer in all_peers(model, args.plans):
        rows.append(bench.measure(peer))
        _print_row(rows[-1], log)
    return rows, {"model": model, "baseline_unchanged": bench.baseline_unchanged()}


# ------------------------------------------------------------------------------------------ reporting

def summary(rows: list[dict]) -> list[dict]:
    """Per model: the fastest peer that meets the budget (conservative) against the plan."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r.get("speedup") is not None]
        peers = [r for r in mine if r["family"] not in ("baseline", "plan") and r.get("meets_budget")]
        best = max(peers, key=lambda r: r["speedup"], default=None)
        plan = next((r for r in mine if r["family"] == "plan"), None)
        ratio = plan["speedup"] / best["speedup"] if plan and best else None
        out.append({"model": model, "best_peer": best and best["method"], "best_peer_speedup": best and best["speedup"],
                    "plan_speedup": plan and plan["speedup"], "plan_meets_budget": plan and plan["meets_budget"],
                    "plan_over_best_peer": ratio, "target_1_5x": None if ratio is None else ratio >= 1.5})
    return out


def _ci(d: dict | None, digits: int = 2) -> str:
    if not d or not d.get("available", True):
        return "–"
    return f"{fmt(d['value'], digits)} [{fmt(d['ci_low'], digits)}, {fmt(d['ci_high'], digits)}]"


def _params(params: dict) -> str:
    shown = {k: v for k, v in params.items() if k not in ("plan", "budget", "plan_speedup", "techniques")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()).replace("|", "\\|") or "–"


def markdown(rows: list[dict], summaries: list[dict], args) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        first = mine[0]
        budget = first["budget"]
        kind = ("trained weights" if first["trained"] else
                "random weights: only the paired metric (PSNR to this model's own baseline) means anything")
        lines += [f"**{model}** ({kind}; budget `{budget}`, conservative verdict; N={first['n']} seeds, "
                  f"batch {first['batch']}, {args.threads} thread(s), {args.repeats} interleaved repeats)", "",
                  f"| method | params | speed-up (95% CI) | work | `{budget}` quantity [95% CI] | PSNR dB [95% CI] | "
                  f"acc % | meets `{budget}` | note |", "|---|---|---|---|---|---|---|---|---|"]
        for r in mine:
            if r["reason"]:
                lines.append(f"| {r['method']} | {_params(r['params'])} | n/a | | | | | | {r['reason']} |")
                continue
            clause = r["metrics"].get(budget)
            speed = f"{fmt(r['speedup'])}× ({fmt(r['speedup_ci'][0])}–{fmt(r['speedup_ci'][1])})"
            acc = r["metrics"].get("acc")
            acc_text = fmt(acc["value"], 1) if acc and acc.get("available", True) else "–"
            meets = "yes" if r["meets_budget"] else "no"
            lines.append(f"| {r['method']} | {_params(r['params'])} | {speed} | {fmt(r.get('work_ratio'))} | "
                         f"{_ci(clause)} | {_ci(r['metrics'].get('psnr'), 1)} | {acc_text} | {meets} | "
                         f"{r.get('note') or ''} |")
        lines.append("")
    for s in summaries:
        if s["model"] not in DEMO:
            continue
        best = (f"the best peer meeting the budget is {s['best_peer']} at {fmt(s['best_peer_speedup'])}×"
                if s["best_peer"] else "no peer meets the budget")
        if s["plan_speedup"] is None:
            lines.append(f"- {s['model']}: plan not measured (see its row); {best}")
        elif s["plan_over_best_peer"] is None:
            lines.append(f"- {s['model']}: plan {fmt(s['plan_speedup'])}×; {best}")
        else:
            lines.append(f"- {s['model']}: plan {fmt(s['plan_speedup'])}× "
                         f"({'meets' if s['plan_meets_budget'] else 'misses'} the budget here), "
                         f"{fmt(s['plan_over_best_peer'])}× the best peer that meets it "
                         f"({s['best_peer']}, {fmt(s['best_peer_speedup'])}×); "
                         f"target 1.5×: {'met' if s['target_1_5x'] else 'not met'}")
    return "\n".join(lines) + "\n"


def readme_block(rows: list[dict], summaries: list[dict], args, wall_s: float) -> str:
    """The README's compact view of one run, generated from its rows (the full table is peers.md)."""
    budget = args.budget
    lines = [f"Measured {now()[:10]} in one run ({wall_s / 60:.0f} min on {os.cpu_count()} cores; latency at "
             f"{args.threads} thread(s), images and FLOPs on {args.work_threads}; full table with every row, PSNR, "
             f"label accuracy and counted work: `bench/results/peers.md`). Speed-up over the 50-step baseline, "
             f"median of {args.repeats} interleaved pairs at batch {args.batch}; ΔFID on {args.samples} seeds "
             f"({PEER_SEED:,} on, unseen by either search) with 95% CI.", "",
             f"| model | best peer that meets `{budget}` | its speed-up | other peers (speed-up; † misses the budget) | "
             f"planner's plan | plan's ΔFID [95% CI] | plan / best peer |", "|---|---|---|---|---|---|---|"]
    for s in (s for s in summaries if s["model"] in DEMO):
        mine = [r for r in rows if r["model"] == s["model"]]
        best = next((r for r in mine if r["method"] == s["best_peer"]), None)
        plan = next((r for r in mine if r["family"] == "plan"), None)
        others = [f"{r['method']}: {fmt(r['speedup'])}×{'' if r['meets_budget'] else '†'}"
                  for r in sorted(mine, key=lambda r: -(r.get("speedup") or 0))
                  if r["family"] not in ("baseline", "plan") and r is not best and not r["reason"]]
        na = [r["method"] for r in mine if r["reason"] and r["family"] != "plan"]
        if na:
            others.append(f"n/a here: {len(na)} (reasons in the full table)")

        def speed(r):
            return f"{fmt(r['speedup'])}× ({fmt(r['speedup_ci'][0])}–{fmt(r['speedup_ci'][1])})"

        plan_text = f"**{speed(plan)}**" if plan and not plan["reason"] else "not measured"
        dfid = _ci(plan["metrics"].get(budget)) if plan and not plan["reason"] else "–"
        lines.append(f"| `{s['model']}` | {s['best_peer'] or 'none'} | {speed(best) if best else '–'} | "
                     f"{'; '.join(others)} | {plan_text} | {dfid} | **{fmt(s['plan_over_best_peer'], 1)}×** |")
    tiny = [m for m in dict.fromkeys(r["model"] for r in rows) if m not in DEMO]
    if tiny:
        lines += ["", f"Tiny random-weight pipelines (budget `{args.tiny_budget}`; only PSNR to their own baseline "
                      f"means anything), speed-ups of the methods that run:", ""]
        for m in tiny:
            ran = [f"{r['method']}: {fmt(r['speedup'])}×" for r in rows
                   if r["model"] == m and not r["reason"] and r["family"] != "baseline"]
            na = sum(1 for r in rows if r["model"] == m and r["reason"])
            lines.append(f"- `{m}`: {'; '.join(ran) or 'none'} ({na} n/a)")
    return "\n".join(lines) + "\n"


def _print_row(r: dict, log) -> None:
    if r["reason"]:
        log(f"  {r['method'][:48]:<48} n/a: {r['reason']}")
        return
    clause = r["metrics"].get(r["budget"])
    log(f"  {r['method'][:48]:<48} x{fmt(r['speedup'])}  {r['budget']}: {_ci(clause)}  "
        f"psnr {_ci(r['metrics'].get('psnr'), 1)}  meets: {r['meets_budget']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[*DEMO, *TINY])
    parser.add_argument("--budget", default="fid+2", help="budget on the demo models (default fid+2)")
    parser.add_argument("--tiny-budget", default="psnr>=30", help="budget on the random-weight tiny pipelines")
    parser.add_argument("--samples", type=int, default=200, help="seeds per method on the demo models")
    parser.add_argument("--tiny-samples", type=int, default=8, help="seeds per method on the tiny pipelines")
    parser.add_argument("--batch", type=int, default=8, help="latency batch (the plans' batch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved baseline/method pairs per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (the plans' count)")
    parser.add_argument("--work-threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for everything not timed: images, FLOPs (default: every core)")
    parser.add_argument("--no-work", dest="work", action="store_false", help="skip counted work (FLOPs)")
    parser.add_argument("--plans", type=Path, default=ROOT / "plans", help="folder of MODEL.yaml plans")
    parser.add_argument("--quick", action="store_true", help="8 samples, batch 2, 1 repeat: the plumbing only")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--update-readme", action="store_true", help="put the table into README.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.quick:
        args.samples, args.tiny_samples, args.batch, args.repeats = 8, 4, 2, 1
    import torch

    torch.set_num_threads(args.work_threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # FasterCache and friends warn on every use

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.time()
    rows, checks = [], []
    for model in args.models:
        try:
            new, check = run_model(model, args, log)
        except Exception as exc:  # noqa: BLE001 - e.g. weights missing: say so and go on with the others
            log(f"== {model}: cannot be measured: {_first_line(exc)}")
            new, check = [], {"model": model, "error": _first_line(exc)}
        rows += new
        checks.append(check)
        _write(args, rows, checks, started, partial=model != args.models[-1])
    table = markdown(rows, summary(rows), args)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    if args.update_readme and not args.quick:
        update_readme("bench.peers", readme_block(rows, summary(rows), args, time.time() - started))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')} in {time.time() - started:.0f}s")
    return 0


def _write(args, rows, checks, started, partial: bool) -> None:
    write_json(args.out, {
        "created": now(), "wall_s": time.time() - started, "partial": partial, "quick": args.quick,
        "command": "python -m bench.peers " + " ".join(args.argv),
        "environment": environment(args.threads),
        "protocol": {"seeds": f"{PEER_SEED}.. (disjoint from the plans' search and verification seeds)",
                     "samples": args.samples, "tiny_samples": args.tiny_samples, "batch": args.batch,
                     "repeats": args.repeats, "timing_threads": args.threads, "work_threads": args.work_threads,
                     "budget": args.budget, "tiny_budget": args.tiny_budget,
                     "latency_ratio": "method/baseline, median of interleaved pairs (planner.search.latency)",
                     "meets_budget": "conservative verdict (CI's unfavourable end), planner.quality.Evaluator",
                     "work_ratio": "FLOPs executed per latency batch / the baseline's (torch.utils.flop_counter)"},
        "checks": checks, "summary": summary(rows), "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
