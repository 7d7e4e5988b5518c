"""Do the search's cheap FID verdicts predict the verification? Per model, a grid of few-step samplers is
decided the search's way (sequential sizes 64..200 on the search seeds, point verdict) under two rules,
and measured the verification's way (500 unseen seeds, point estimate):

    before  the paired dFID as measured at the search's sample size
    after   each side's FID moved to the verification's size by its grouped-jackknife bias estimate
            (planner.quality.fid.fid_bias_shift; what `planner optimize` now does)

    .venv/bin/python -m bench.decisions                   # 4 models, about 25 minutes on 2 quiet cores
    .venv/bin/python -m bench.decisions --quick           # plumbing only

Models: the two demo models, and two standard pipeline folders outside the demo set built by
`python -m planner.demo.folders` (a v-prediction DDPMPipeline on a cosine schedule, a class-conditional
DiT trained differently); their FID reference is the baseline's own outputs on disjoint seeds, the
default for a model without a reference set. Both rules see the same images; candidates are the
configurations an FID budget turns on (samplers x few steps), not a search's trials: the decisions at
issue are step decisions, and the grid makes both rules decide the same candidates.
Results: bench/results/decisions.json and the README block between the bench.decisions markers.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, environment, now, update_readme, write_json

MODELS = ("digits-unet", "digits-dit", "digits-ddpm-v", "digits-dit-b")
FOLDERS = ("digits-ddpm-v", "digits-dit-b")   # built by planner.demo.folders (not shipped: trained here)
STEPS = (3, 4, 5, 6, 8)
SAMPLERS = ("ddim", "dpmpp_2m", "keep")
BUDGET = "fid+2"


def _model_path(name: str, folders: Path, log) -> str:
    if name not in FOLDERS:
        return name
    folder = folders / name
    if not (folder / "model_index.json").exists():
        from planner.demo.folders import build_folder

        log(f"[decisions] training {name} into {folder} (a few minutes)")
        build_folder(name.removeprefix("digits-"), folder)
    return str(folder)


def _contexts(pipe, name: str, args):
    from ground.anatomy import anatomy_of
    from ground.identity import fingerprint
    from planner.quality.budget import parse_budget
    from planner.search.context import SearchContext, SearchSettings

    settings = SearchSettings(name=name, budget=BUDGET, features="digits", threads=args.threads,
                              **({"samples": 32, "verify_samples": 64, "baseline_steps": 10} if args.quick else {}))
    fp = fingerprint(anatomy_of(pipe).denoiser)
    return {rule: SearchContext(settings=dataclasses.replace(settings, fid_shift=rule == "after"),
                                budget=parse_budget(BUDGET), pipe=pipe, fingerprint=fp)
            for rule in ("before", "after")}


def _candidate_row(ctxs: dict, config) -> dict:
    from backends.technique import apply_all

    verify_ctx = ctxs["after"]
    clause = verify_ctx.budget.clauses[0]
    handle = apply_all(verify_ctx.pipe, [config])
    row = {"candidate": f"{config.name} {config.steps}"}
    try:
        for rule, ctx in ctxs.items():
            with ctx.trial(handle):
                decision, _ = ctx.decide("search")
            r = decision.results[clause]
            row[rule] = {"feasible": decision.holds, "value": r.measured.value, "n": r.measured.n,
                         "shift": r.shift}
        n = verify_ctx.sizes["verify"]["fid"].cap
        with verify_ctx.trial(handle):
            images = verify_ctx.generate_candidate(verify_ctx.requests["verify"].rows(0, n))
            verify_ctx._ensure_reference()
            evaluation = verify_ctx.evaluator("verify", n, verify_ctx.budget).evaluate(
                images, candidate_features=verify_ctx.extractor(images))
    finally:
        handle.remove()
    r = evaluation.results[0]
    row["verify"] = {"value": r.measured.value, "n": r.measured.n, "point": bool(r.point)}
    return row


def summarise(rows: list[dict]) -> dict:
    """Per rule: agreement of the search verdict with the verification's point verdict (all candidates,
    and among those the search calls feasible), and search - verification dFID."""
    out = {}
    for rule in ("before", "after"):
        diffs = [r[rule]["value"] - r["verify"]["value"] for r in rows]
        feasible = [r for r in rows if r[rule]["feasible"]]
        out[rule] = {
            "agreement": sum(r[rule]["feasible"] == r["verify"]["point"] for r in rows) / len(rows),
            "search_feasible": len(feasible),
            "feasible_that_hold": sum(r["verify"]["point"] for r in feasible),
            "mean_diff": statistics.fmean(diffs), "sd_diff": statistics.pstdev(diffs),
            "mean_abs_diff": statistics.fmean(abs(d) for d in diffs)}
    return out


def run_model(name: str, args, folders: Path, log) -> dict:
    import torch

    from backends.sampler import SamplerConfig
    from planner.models import load_pipeline
    from search_spaces.sampler import sampler_choices

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(_model_path(name, folders, log))
    ctxs = _contexts(pipe, name, args)
    names = [s for s in args.samplers.split(",") if s in sampler_choices(pipe)]
    steps = STEPS[:2] if args.quick else tuple(int(k) for k in args.steps.split(","))
    rows, start = [], time.time()
    for sampler in names:
        for k in steps:
            rows.append(_candidate_row(ctxs, SamplerConfig(name=sampler, steps=k, spacing="trailing")))
            row = rows[-1]
            log(f"[decisions] {name} {row['candidate']:<28} search before {row['before']['value']:+.2f} "
                f"({'F' if row['before']['feasible'] else '-'}) after {row['after']['value']:+.2f} "
                f"({'F' if row['after']['feasible'] else '-'})  verification {row['verify']['value']:+.2f} "
                f"({'holds' if row['verify']['point'] else 'fails'})")
    return {"model": name, "rows": rows, "summary": summarise(rows), "seconds": round(time.time() - start, 1)}


def readme_block(models: list[dict]) -> str:
    out = ["| model | rule | agreement with the 500-seed verdict | search-feasible that hold at 500 | "
           "search - verification dFID, mean (sd) | mean abs. |", "|---|---|---|---|---|---|"]
    for m in models:
        for rule, s in m["summary"].items():
            out.append(f"| `{m['model']}` | {rule} | {100 * s['agreement']:.0f}% ({len(m['rows'])} candidates) | "
                       f"{s['feasible_that_hold']} of {s['search_feasible']} | {s['mean_diff']:+.2f} "
                       f"({s['sd_diff']:.2f}) | {s['mean_abs_diff']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decisions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--folders", type=Path, default=None, help="where the folder models are (trained if absent)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument("--append", action="store_true", help="keep the models already in --out (other models)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "decisions.json")
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)

    def log(text):
        print(text, file=sys.stderr, flush=True)

    models, started = [], time.time()
    if args.append and args.out.exists():
        import json

        names = set(args.models.split(","))
        models = [m for m in json.loads(args.out.read_text())["models"] if m["model"] not in names]
    with tempfile.TemporaryDirectory(prefix="decisions-") as tmp:
        os.environ["PLANNER_CACHE"] = str(Path(tmp) / "cache")
        folders = args.folders or Path(tmp) / "folders"
        for name in [m for m in args.models.split(",") if m]:
            models.append(run_model(name, args, folders, log))
            write_json(args.out, {"created": now(), "environment": environment(args.threads), "quick": args.quick,
                                  "budget": BUDGET, "models": models, "seconds": round(time.time() - started, 1)})
    if args.update_readme and not args.quick:
        update_readme("bench.decisions", readme_block(models))
    print(readme_block(models))
    return 0


if __name__ == "__main__":
    sys.exit(main())
