"""The planner's plans side by side with what users would pick instead: default recipes, tuned peers, a hand stack.

    .venv/bin/python -m bench.peers                  # everything (needs `pip install -e '.[peers]'`)
    .venv/bin/python -m bench.peers --quick          # a few samples, a narrow sweep, 1 repeat: the plumbing only
    .venv/bin/python -m bench.peers --plan digits-dit:psnr>=30=plans/digits-dit-psnr.yaml   # a plan per (model, budget)

Each (model, budget) of `--configs` (default: `fid+2` on digits-unet and digits-dit, `psnr>=30` on
digits-dit) gets one search context on the 50-step baseline pipeline (`planner.search.SearchContext`: the
plans' search seeds 0.. and their verification seeds 500,000.., the planner's evaluators, sequential
sample sizes). Every method runs on a freshly loaded pipeline of its own beside the baseline's, through
its own package (`bench.peer_methods`), and every row gets:

* `meets_budget`: the conservative verdict on the verification seeds, decided sequentially with the
  planner's verification caps (FID 64..500, PSNR 16..256), exactly as `planner optimize` verifies a plan;
* `speedup`: `interleaved_ratio` against the baseline (B C C B ..., median of pair ratios) at the plans'
  batch with the torch thread count fixed (`--threads`, the plans' 1), and counted work (FLOPs) beside it.

Rows, by `kind`:

* `default`: each peer's documented recipe (fewer steps with the model's own spacing, DeepCache 3/5,
  tomesd 0.5, diffusers' cache hooks, cache-dit), as before;
* `tuned`: each peer's one knob (steps of DPM-Solver++ 2M/UniPC/DDIM/Euler with trailing spacing, the
  DeepCache interval, the First Block Cache / TeaCache / MagCache / cache-dit thresholds, the tomesd ratio)
  bisected on the search seeds under the point verdict, as a user would ("the budget just holds"; first
  probe at the default recipe, the safest value next if that fails, at most `--sweep-evals` evaluations,
  sample caps `--search-caps`, counted FLOPs choosing among the values that hold), then verified; a winner
  that fails verification steps back one notch (grid value) toward quality, at most `--step-backs` times;
* `stack`: the hand stack practitioners build: the fastest verified tuned step count, plus the fastest
  verified tuned cache peer re-tuned on top of those steps by the same bisection, plus bf16, plus regional
  torch.compile with `--compile` (compile time recorded apart);
* `plan`: the plan given for that (model, budget) (`--plan`; by default the shipped `plans/MODEL.yaml` for
  `fid+2`), applied with `planner.apply`.

Finally the baseline, the plan, the best tuned peer and the hand stack are timed side by side in rotating
order (`--side-repeats`, 9): plan ÷ best tuned peer and plan ÷ hand stack are medians of per-repeat ratios.
The tiny random-weight pipelines (`--tiny`) get the default recipes only, under `--tiny-budget`.

Results: bench/results/peers.json (one row per model, budget and method) and bench/results/peers.md
(`--update-readme` also puts the summary into README.md).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bench.common import RESULTS, ROOT, environment, fmt, now, update_readme, write_json
from bench.peer_bench import VERIFY_SEED_OFFSET, _ci, _first_line, run_model

DEMO = ("digits-unet", "digits-dit")
TINY = ("tiny-sd", "tiny-pixart", "tiny-flux")
CONFIGS = ("digits-unet:fid+2", "digits-dit:fid+2", "digits-dit:psnr>=30")
# The sweeps' sample caps (the planner's search: fid 64..200, psnr 16..128), lowered so that `make peers` fits
# 45 minutes on 2 free cores: fid decides on 64 samples, psnr on 16 then 32. Verification keeps the
# planner's caps (fid 500, psnr 256), as plans are verified. `--search-caps fid=128 psnr=64` (about 5 more
# minutes) or `fid=planner psnr=planner` for closer sweeps.
SEARCH_CAPS = {"fid": 64, "kid": 64, "psnr": 32, "ssim": 32, "lpips": 32, "acc": 64, "clip": 64}
KINDS = ("baseline", "default", "tuned", "stack", "plan")


# ------------------------------------------------------------------------------------------ reporting

def summary(rows: list[dict], checks: list[dict]) -> list[dict]:
    """Per trained (model, budget): the best tuned peer, the hand stack, the plan, and their side-by-side ratios."""
    out = []
    sides = {c["model"]: c.get("side_by_side") or {} for c in checks}
    for key in dict.fromkeys((r["model"], r["budget"]) for r in rows if r["trained"]):
        model, budget = key
        mine = [r for r in rows if (r["model"], r["budget"]) == key]
        ok = [r for r in mine if r["meets_budget"] and r.get("speedup") and not r["reason"]]

        def best(kind):
            return max((r for r in ok if r["kind"] == kind), key=lambda r: r["speedup"], default=None)

        tuned, default = best("tuned"), best("default")
        stack = next((r for r in mine if r["kind"] == "stack"), None)
        plan = next((r for r in mine if r["kind"] == "plan"), None)
        side = sides.get(model, {}).get(budget, {})
        out.append({
            "model": model, "budget": budget,
            "best_tuned": tuned and {"method": tuned["method"], "tunable": tuned.get("tunable"),
                                     "params": tuned["params"], "speedup": tuned["speedup"],
                                     "speedup_ci": tuned["speedup_ci"]},
            "best_default": default and {"method": default["method"], "speedup": default["speedup"],
                                         "speedup_ci": default["speedup_ci"]},
            "stack": stack and {"method": stack["method"], "speedup": stack.get("speedup"),
                                "speedup_ci": stack.get("speedup_ci"), "meets_budget": stack["meets_budget"],
                                "reason": stack["reason"]},
            "plan": plan and {"method": plan["method"], "speedup": plan.get("speedup"),
                              "speedup_ci": plan.get("speedup_ci"), "meets_budget": plan["meets_budget"],
                              "reason": plan["reason"]},
            "side_by_side": side,
            "plan_over_best_tuned": side.get("plan_over_best_tuned"),
            "plan_over_stack": side.get("plan_over_stack")})
    return out


def _speed(r: dict | None) -> str:
    if not r or r.get("speedup") is None:
        return "–"
    ci = r.get("speedup_ci") or [None, None]
    return f"{fmt(r['speedup'])}× ({fmt(ci[0])}–{fmt(ci[1])})"


def _params(params: dict) -> str:
    shown = {k: v for k, v in params.items() if k not in ("plan", "budget", "plan_speedup", "techniques",
                                                         "plan_work_ratio", "compiled")}
    return ", ".join(f"{k}={v}" for k, v in shown.items()).replace("|", "\\|") or "–"


def _ratio(d: dict | None) -> str:
    if not d or d.get("value") is None:
        return "–"
    return f"{fmt(d['value'])}× ({fmt(d['ci'][0])}–{fmt(d['ci'][1])})"


def markdown(rows: list[dict], summaries: list[dict], args) -> str:
    lines = []
    for key in dict.fromkeys((r["model"], r["budget"]) for r in rows):
        model, budget = key
        mine = [r for r in rows if (r["model"], r["budget"]) == key]
        first = mine[0]
        what = ("trained weights" if first["trained"] else
                "random weights: only the paired metric (PSNR to this model's own baseline) means anything")
        lines += [f"**{model} at `{budget}`** ({what}; `meets` = conservative verdict on the verification seeds "
                  f"from {first['seeds']['verify'][0]:,}, sequential N up to {first['seeds']['verify'][1]}; "
                  f"batch {first['batch']}, {args.threads} thread(s), {args.repeats} interleaved repeats)", "",
                  f"| kind | method | params | speed-up (95% CI) | work | `{budget}` quantity [95% CI] | N | "
                  f"PSNR dB [95% CI] | acc % | meets | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(mine, key=lambda r: KINDS.index(r["kind"])):
            if r["reason"]:
                lines.append(f"| {r['kind']} | {r['method']} | {_params(r['params'])} | n/a | | | | | | | "
                             f"{r['reason']} |")
                continue
            metrics = r.get("metrics") or {}
            acc = metrics.get("acc")
            acc_text = fmt(acc["value"], 1) if acc and acc.get("available", True) else "–"
            tuning = r.get("tuning")
            tuned_note = (f"swept {len(tuning['sweep'])} values, {tuning['step_backs']} step(s) back"
                          if tuning else "")
            note = "; ".join(x for x in (tuned_note, r.get("note") or "") if x)
            lines.append(f"| {r['kind']} | {r['method']} | {_params(r['params'])} | {_speed(r)} | "
                         f"{fmt(r.get('work_ratio'))} | {_ci(metrics.get(budget))} | {r.get('n') or '–'} | "
                         f"{_ci(metrics.get('psnr'), 1)} | {acc_text} | {'yes' if r['meets_budget'] else 'no'} | "
                         f"{note} |")
        lines.append("")
    for s in summaries:
        tuned = s["best_tuned"]
        lines.append(f"- {s['model']} at `{s['budget']}`: best tuned peer "
                     f"{tuned['method'] + ' ' + _speed(tuned) if tuned else 'none verified'}; hand stack "
                     f"{_speed(s['stack']) if s['stack'] and s['stack']['meets_budget'] else 'not verified'}; plan "
                     f"{_speed(s['plan']) if s['plan'] and not s['plan']['reason'] else 'not measured'}; side by side: "
                     f"plan ÷ best tuned {_ratio(s['plan_over_best_tuned'])}, plan ÷ hand stack "
                     f"{_ratio(s['plan_over_stack'])}")
    return "\n".join(lines) + "\n"


def readme_block(rows: list[dict], summaries: list[dict], args, wall_s: float) -> str:
    """The README's compact view of one run, generated from its rows (the full table is peers.md)."""
    lines = [f"Measured {now()[:10]} in one run ({wall_s / 60:.0f} min on {os.cpu_count()} cores; latency at "
             f"{args.threads} thread(s), images and FLOPs on {args.work_threads}; full table with every row, "
             f"sweep and verification: `bench/results/peers.md`). Every row's verdict is the conservative one on "
             f"the verification seeds ({args.seed + VERIFY_SEED_OFFSET:,} on, unseen by the sweeps), N grown sequentially to "
             f"the planner's caps (FID 500, PSNR 256; N per row in the full table); speed-ups over the "
             f"{args.baseline_steps}-step baseline at batch {args.batch}, median of {args.repeats} interleaved pairs "
             f"(95% CI). Tuned peers: each peer's knob bisected on the search seeds ({args.seed:,} on) to the fastest "
             f"value that holds the budget, then verified, stepping back toward quality when verification fails. "
             f"The last two columns time the plan, the best tuned peer, the hand stack and the baseline side by "
             f"side in rotating order: median of {args.side_repeats} per-repeat ratios (95% CI).", "",
             "| model, budget | best tuned peer (knob) | its speed-up | hand stack | its speed-up | planner's plan | "
             "plan's speed-up | **plan ÷ best tuned peer** | plan ÷ hand stack | best default recipe |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        tuned, stack, plan, default = s["best_tuned"], s["stack"], s["plan"], s["best_default"]
        stack_text = "–"
        if stack and not stack["reason"]:
            stack_text = stack["method"] + ("" if stack["meets_budget"] else " †")
        plan_text = plan["method"].replace("planner plan: ", "") if plan and not plan["reason"] else "no plan given"
        if plan and not plan["reason"] and not plan["meets_budget"]:
            plan_text += " †"
        lines.append(
            f"| `{s['model']}`, `{s['budget']}` | {tuned['method'] if tuned else 'none verified'} | {_speed(tuned)} | "
            f"{stack_text} | {_speed(stack) if stack_text != '–' else '–'} | {plan_text} | "
            f"{_speed(plan) if plan and not plan['reason'] else '–'} | **{_ratio(s['plan_over_best_tuned'])}** | "
            f"{_ratio(s['plan_over_stack'])} | "
            f"{default['method'] + ': ' + fmt(default['speedup']) + '×' if default else 'none meets it'} |")
    lines += ["", "† misses the budget under the conservative verdict on the verification seeds."]
    tiny = [m for m in dict.fromkeys(r["model"] for r in rows if not r["trained"])]
    if tiny:
        lines += ["", f"Tiny random-weight pipelines (budget `{args.tiny_budget}`; only PSNR to their own baseline "
                      f"means anything), default recipes, speed-ups of the methods that run:", ""]
        for m in tiny:
            ran = [f"{r['method']}: {fmt(r['speedup'])}×" for r in rows
                   if r["model"] == m and not r["reason"] and r["kind"] == "default"]
            na = sum(1 for r in rows if r["model"] == m and r["reason"])
            lines.append(f"- `{m}`: {'; '.join(ran) or 'none'} ({na} n/a)")
    return "\n".join(lines) + "\n"


def parse_plans(values: list[str], plans_dir: Path, configs: list[tuple[str, str]]) -> dict:
    """--plan MODEL:BUDGET=PATH (repeatable); by default plans/MODEL.yaml for the fid+2 configurations."""
    from planner.quality.budget import parse_budget

    plans = {}
    for model, budget in configs:
        default = plans_dir / f"{model}.yaml"
        if budget == "fid+2" and default.exists():
            plans[(model, budget)] = default
    for value in values or []:
        model, colon, rest = value.partition(":")
        # the budget ends at the first '=' after which it parses (its own '>=' comes before that one)
        cuts = [i for i, ch in enumerate(rest) if ch == "="]
        for i in cuts:
            try:
                budget = str(parse_budget(rest[:i]))
            except Exception:  # noqa: BLE001 - not the end of the budget yet
                continue
            if rest[i + 1:]:
                plans[(model, budget)] = Path(rest[i + 1:])
                break
        else:
            raise ValueError(f"--plan {value!r}: expected MODEL:BUDGET=PATH")
        if not colon:
            raise ValueError(f"--plan {value!r}: expected MODEL:BUDGET=PATH")
    return plans


def parse_configs(values: list[str]) -> list[tuple[str, str]]:
    from planner.quality.budget import parse_budget

    out = []
    for value in values:
        model, colon, budget = value.partition(":")
        if not colon:
            raise ValueError(f"--configs {value!r}: expected MODEL:BUDGET")
        out.append((model, str(parse_budget(budget))))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="MODEL:BUDGET pairs (trained models)")
    parser.add_argument("--models", nargs="+", help="only these models of --configs (and of --tiny)")
    parser.add_argument("--tiny", action="store_true", help=f"also the default recipes on {', '.join(TINY)}")
    parser.add_argument("--tiny-budget", default="psnr>=30", help="budget on the random-weight tiny pipelines")
    parser.add_argument("--tiny-samples", type=int, default=8, help="samples per method on the tiny pipelines")
    parser.add_argument("--plan", action="append", metavar="MODEL:BUDGET=PATH",
                        help="the plan to measure for that configuration (repeatable)")
    parser.add_argument("--plans", type=Path, default=ROOT / "plans",
                        help="folder of the shipped MODEL.yaml plans (used for fid+2 unless --plan says otherwise)")
    parser.add_argument("--seed", type=int, default=0,
                        help="first search seed (verification seeds start 500,000 above): the plans' by default")
    parser.add_argument("--search-caps", nargs="+", default=[f"{k}={v}" for k, v in SEARCH_CAPS.items()],
                        metavar="METRIC=N", help="the tuning sweep's sample caps per metric ('METRIC=planner': the planner's)")
    parser.add_argument("--verify-samples", type=int, default=None,
                        help="cap of the verification's sample sizes (default: the planner's, fid 500, psnr 256)")
    parser.add_argument("--baseline-steps", type=int, default=50)
    parser.add_argument("--sweep-evals", type=int, default=6, help="knob values evaluated per tuned peer at most")
    parser.add_argument("--step-backs", type=int, default=3, help="notches back toward quality when verification fails")
    parser.add_argument("--compile", action="store_true", help="regional torch.compile in the hand stack")
    parser.add_argument("--batch", type=int, default=8, help="latency batch (the plans' batch)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved baseline/method pairs per row")
    parser.add_argument("--side-repeats", type=int, default=9, help="rotating repeats of the side-by-side timing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (the plans' count)")
    parser.add_argument("--work-threads", type=int, default=None,
                        help="torch threads for everything not timed: images, FLOPs (default: every core; 1 with "
                             "--quick: two threads on a core another process holds run many times slower)")
    parser.add_argument("--no-work", dest="work", action="store_false", help="skip counted work (FLOPs)")
    parser.add_argument("--quick", action="store_true",
                        help="8 samples, 10 baseline steps, 2 sweep evaluations, 1 repeat: the plumbing only")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    parser.add_argument("--update-readme", action="store_true", help="put the summary into README.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.work_threads is None:
        args.work_threads = 1 if args.quick else (os.cpu_count() or 1)
    caps = {}
    for item in args.search_caps:
        metric, _, n = item.partition("=")
        caps[metric] = None if n == "planner" else int(n)
    args.search_caps = caps
    if args.quick:
        args.search_caps = {m: 8 for m in SEARCH_CAPS}
        args.verify_samples, args.tiny_samples, args.baseline_steps = 8, 4, 10
        args.sweep_evals, args.step_backs, args.batch, args.repeats, args.side_repeats = 2, 1, 2, 1, 1
    try:
        configs = parse_configs(args.configs)
        plans = parse_plans(args.plan, args.plans, configs)
    except Exception as exc:  # noqa: BLE001
        parser.error(str(exc))
    models = list(dict.fromkeys(m for m, _ in configs)) + (list(TINY) if args.tiny else [])
    if args.models:
        models = [m for m in models if m in args.models] + [m for m in args.models if m in TINY and m not in models]
    import torch

    torch.set_num_threads(args.work_threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # FasterCache and friends warn on every use

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.time()
    rows, checks = [], []
    for model in models:
        budgets = [b for m, b in configs if m == model] or [args.tiny_budget]
        try:
            new, check = run_model(model, budgets, args, log, plans)
        except Exception as exc:  # noqa: BLE001 - e.g. weights missing: say so and go on with the others
            log(f"== {model}: cannot be measured: {_first_line(exc)}")
            new, check = [], {"model": model, "error": _first_line(exc)}
        rows += new
        checks.append(check)
        _write(args, rows, checks, started, partial=model != models[-1])
    summaries = summary(rows, checks)
    table = markdown(rows, summaries, args)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    if args.update_readme and not args.quick:
        update_readme("bench.peers", readme_block(rows, summaries, args, time.time() - started))
    log(f"wrote {args.out} and {args.out.with_suffix('.md')} in {time.time() - started:.0f}s")
    return 0


def _write(args, rows, checks, started, partial: bool) -> None:
    write_json(args.out, {
        "created": now(), "wall_s": time.time() - started, "partial": partial, "quick": args.quick,
        "command": "python -m bench.peers " + " ".join(args.argv),
        "environment": environment(args.threads),
        "protocol": {"seeds": f"search {args.seed}.., verification {args.seed + VERIFY_SEED_OFFSET}.. (the plans' own)",
                     "search_caps": args.search_caps, "verify_samples": args.verify_samples or "the planner's caps",
                     "baseline_steps": args.baseline_steps, "sweep_evals": args.sweep_evals,
                     "step_backs": args.step_backs, "tiny_samples": args.tiny_samples, "batch": args.batch,
                     "repeats": args.repeats, "side_repeats": args.side_repeats, "timing_threads": args.threads,
                     "work_threads": args.work_threads, "tiny_budget": args.tiny_budget, "compile": args.compile,
                     "tuning": "bisection of the knob on the search seeds, point verdict, first probe at the default "
                               "recipe; the fastest holding value by counted FLOPs",
                     "latency_ratio": "method/baseline, median of interleaved pairs (planner.search.latency)",
                     "meets_budget": "conservative verdict on the verification seeds, sequential sizes "
                                     "(planner.quality.sequential), as plans are verified",
                     "work_ratio": "FLOPs executed per latency batch / the baseline's (torch.utils.flop_counter)"},
        "checks": checks, "summary": summary(rows, checks), "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
