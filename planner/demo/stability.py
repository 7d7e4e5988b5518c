"""Measure how stable the paired quality metrics are on a demo model (used to choose N; see README).

    python -m planner.demo.stability digits-unet --steps 50 --candidates 20,10,5 --n 1000 \
        --seed-sets 0,100000 [--subsets 250,500]

For every seed set and candidate step count: FID/KID of baseline and candidate, the paired difference
with its bootstrap CI, label accuracy, PSNR and SSIM; plus the unpaired FID of the baseline on each seed
set (two disjoint seed sets of one config should agree within their CIs). Generations are cached.
"""
from __future__ import annotations

import argparse
import json
import sys
import time



def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m planner.demo.stability")
    p.add_argument("model", default="digits-unet", nargs="?")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--candidates", default="20,10,5")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed-sets", default="0,100000")
    p.add_argument("--subsets", default="", help="also report the first K samples of each set, e.g. 250,500")
    p.add_argument("--boot", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from ground.generation import default_request
    from planner.models import load_pipeline
    from planner.quality.bootstrap import bootstrap
    from planner.quality.cli import set_sampler
    from ground.anatomy import anatomy_of
    from planner.quality.evaluate import Evaluator
    from planner.quality.features import get_extractor
    from planner.quality.reference import resolve_reference
    from planner.quality.store import DiskCache, cached_generate
    from planner.quality.fid import fid

    pipe = load_pipeline(args.model)
    set_sampler(pipe, "ddim")
    ex = get_extractor(None, pipe=pipe)
    ref = resolve_reference(ex, pipe=pipe)
    cache = DiskCache()
    cands = [int(c) for c in args.candidates.split(",") if c]
    sizes = sorted({int(s) for s in args.subsets.split(",") if s} | {args.n})
    rows = []
    for seed in (int(s) for s in args.seed_sets.split(",")):
        request = default_request(pipe, args.n, seed)
        t = time.time()
        base = cached_generate(pipe, request, steps=args.steps, sampler="ddim", cache=cache)
        print(f"[seed {seed}] baseline {args.steps} steps: {time.time() - t:.0f}s", file=sys.stderr, flush=True)
        outs = {}
        for k in cands:
            t = time.time()
            outs[k] = cached_generate(pipe, request, steps=k, sampler="ddim", cache=cache)
            print(f"[seed {seed}] {k} steps: {time.time() - t:.0f}s", file=sys.stderr, flush=True)
        for n in sizes:
            feats = ex(base[:n]).numpy()
            absolute = bootstrap("fid", lambda w: fid(feats, ref.stats, w), n, args.boot, seed=0)
            rows.append(dict(seed=seed, n=n, config=f"{args.steps} steps (unpaired)", fid=absolute.value,
                             ci=[absolute.ci_low, absolute.ci_high]))
            print(f"seed {seed:>6} N {n:>4}  baseline {args.steps:>2} steps  FID {absolute}", flush=True)
            ev = Evaluator("fid+2,kid+0.001,acc-1,psnr>=30,ssim>=0.9", base[:n], ref, ex,
                           list(request.conditions[:n]), n_boot=args.boot, seed=0,
                           classifier=anatomy_of(pipe).label_classifier())
            for k in cands:
                res = ev.evaluate(outs[k][:n])
                row = dict(seed=seed, n=n, config=f"{k} vs {args.steps} steps")
                for r in res.results:
                    row[str(r.clause)] = dict(baseline=r.baseline, candidate=r.candidate, value=r.measured.value,
                                              ci=[r.measured.ci_low, r.measured.ci_high])
                rows.append(row)
                f, kd, acc, ps, ss = res.results
                print(f"seed {seed:>6} N {n:>4}  {k:>2} vs {args.steps} steps  "
                      f"FID {f.baseline:.3f}->{f.candidate:.3f} diff {f.measured.value:+.3f} "
                      f"[{f.measured.ci_low:+.3f}, {f.measured.ci_high:+.3f}]  "
                      f"KID diff {kd.measured.value:+.4f} [{kd.measured.ci_low:+.4f}, {kd.measured.ci_high:+.4f}]  "
                      f"acc {acc.baseline:.1f}->{acc.candidate:.1f} [{acc.measured.ci_low:+.1f}, {acc.measured.ci_high:+.1f}]  "
                      f"PSNR {ps.measured.value:.2f}  SSIM {ss.measured.value:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
