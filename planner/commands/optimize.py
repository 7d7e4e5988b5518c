"""`planner optimize MODEL --budget EXPR`: search for the fastest plan that keeps the quality budget."""
from __future__ import annotations

from planner.models import model_help

import shlex
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("optimize", help="search the fastest acceleration plan that meets a quality budget",
                              description="Profile, search (Optuna), verify on unseen seeds, write a plan YAML.")
    p.add_argument("model", help=model_help())
    p.add_argument("--budget", required=True, help="quality budget, e.g. fid+2 or 'fid+2,acc-1' or psnr>=30")
    p.add_argument("--out", default=None, help="plan YAML to write (default ./MODEL.plan.yaml)")
    p.add_argument("--trials", type=int, default=20, help="total trials in the study, across workers (default 20)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="sampler seed and first search seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch", type=int, default=8, help="batch size the plan is tuned and timed for (default 8)")
    p.add_argument("--resolution", type=int, default=None, help="image size for pipelines that take height/width")
    p.add_argument("--techniques", default="", help="comma list of families: sampler,quant,tokens,cache,compile")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL shared by all workers, e.g. postgresql://USER:PW@HOST/DB "
                        "(default: $PLANNER_STORAGE, else a journal file in .planner-cache)")
    p.add_argument("--study-name", default=None,
                   help="study to create or join; give every worker the same (default: derived from the inputs)")
    p.add_argument("--features", default=None, help="FID features: digits, inception, or a TorchScript PATH")
    p.add_argument("--reference", default=None, help="folder of reference images (default: see README)")
    p.add_argument("--samples", type=int, default=200, help="samples per trial on search seeds (default 200)")
    p.add_argument("--verify-samples", type=int, default=500, help="samples for the final verification on unseen seeds (default 500)")
    p.add_argument("--baseline-steps", type=int, default=50, help="steps of the unaccelerated baseline (default 50)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: pipeline's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, fixed for timing (default: all)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ground.errors import PlannerError
    from planner.search.context import SearchSettings
    from planner.search.optimize import optimize

    for name in ("trials", "batch", "samples", "verify_samples", "baseline_steps"):
        if getattr(args, name) < 1:
            raise PlannerError(f"--{name.replace('_', '-')}: must be at least 1")
    if args.samples < 20:
        raise PlannerError("--samples: at least 20 are needed for a confidence interval")
    out = args.out or f"{args.model.strip('/').replace('/', '--')}.plan.yaml"
    settings = SearchSettings(
        model=args.model, budget=args.budget, trials=args.trials, timeout=args.timeout, seed=args.seed,
        device=args.device, batch=args.batch, resolution=args.resolution,
        techniques=tuple(t.strip() for t in args.techniques.split(",") if t.strip()), storage=args.storage,
        study_name=args.study_name, features=args.features, reference=args.reference, samples=args.samples,
        cheap_samples=max(20, min(64, args.samples // 3)), verify_samples=args.verify_samples,
        baseline_steps=args.baseline_steps, guidance_scale=args.guidance, threads=args.threads, out=out,
        command="planner " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["optimize"]
        else f"planner optimize --budget {args.budget} {args.model}")
    try:
        optimize(settings)
    except KeyboardInterrupt:
        print("planner: interrupted; finished trials are kept in the study, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
