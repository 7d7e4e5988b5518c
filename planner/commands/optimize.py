"""`planner optimize MODEL --budget EXPR`: search for the fastest plan that keeps the quality budget."""
from __future__ import annotations

import shlex
import sys

from planner.commands.common import add_condition_arguments, check_seed, conditions_from_args, positive_float
from planner.models import model_help


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("optimize", help="search the fastest acceleration plan that meets a quality budget",
                              description="Check the inputs, estimate the time, search (Optuna) on one pipeline, "
                                          "verify on unseen seeds, write a plan YAML and its report.")
    p.add_argument("model", help=model_help())
    p.add_argument("--budget", required=True, help="quality budget, e.g. fid+2 or 'fid+2,acc-1' or psnr>=30")
    p.add_argument("--out", default=None, help="plan YAML to write (default ./MODEL.plan.yaml); checked first")
    p.add_argument("--trials", type=int, default=20, help="total trials in the study, across workers (default 20)")
    p.add_argument("--timeout", type=positive_float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="refuse to start when the printed estimate is longer than this")
    p.add_argument("--seed", type=int, default=0, help="sampler seed and first search seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--batch", type=int, default=8, help="batch size the plan is tuned and timed for (default 8)")
    add_condition_arguments(p)
    p.add_argument("--techniques", default="", help="comma list of families: sampler,quant,tokens,cache,compile")
    p.add_argument("--calls", type=int, default=1000,
                   help="production calls a compile/export setup time is spread over (default 1000)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL shared by all workers, e.g. postgresql://USER:PW@HOST/DB "
                        "(default: $PLANNER_STORAGE, else a journal file in the cache)")
    p.add_argument("--study-name", default=None,
                   help="study to create or join; give every worker the same (default: derived from the inputs)")
    p.add_argument("--features", default=None, help="FID features: inception, a registered name, or a TorchScript PATH")
    p.add_argument("--reference", default=None, help="folder of reference images (default: see README)")
    p.add_argument("--samples", type=int, default=None,
                   help="cap of the search's sample sizes (default per metric: 128 paired, 200 fid/kid/acc)")
    p.add_argument("--verify-samples", type=int, default=None,
                   help="cap of the final verification's sample sizes (default: 256 paired, 500 fid/kid/acc)")
    p.add_argument("--baseline-steps", type=int, default=50, help="steps of the unaccelerated baseline (default 50)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, fixed for timing (default: all)")
    p.add_argument("--custom-pipeline", default=None,
                   help="load MODEL's folder with this diffusers custom pipeline (its code runs: only pass one you trust)")
    p.add_argument("--verbose", action="store_true", help="show third-party warnings and logs as they come")
    p.set_defaults(func=run)


def run(args) -> int:
    from ground.errors import PlannerError
    from planner.search.context import SearchSettings
    from planner.search.optimize import default_out, optimize

    if args.threads is not None and not 1 <= args.threads <= 4096:   # torch.set_num_threads overflows past 2**31
        raise PlannerError(f"--threads: must be 1..4096, got {args.threads}")
    if not 1 <= args.baseline_steps <= 1000:   # past the scheduler's training steps diffusers raises mid-search
        raise PlannerError(f"--baseline-steps: must be 1..1000, got {args.baseline_steps}")
    check_seed(args.seed)
    conditions, size = conditions_from_args(args)
    command = ("planner " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["optimize"]
               else f"planner optimize --budget {args.budget} {args.model}")
    settings = SearchSettings(
        name=args.model, budget=args.budget, trials=args.trials, timeout=args.timeout, seed=args.seed,
        device=args.device, batch=args.batch, height=size[0] if size else None, width=size[1] if size else None,
        dtype=args.dtype, negative_prompt=args.negative_prompt, conditions=conditions,
        techniques=tuple(t.strip() for t in args.techniques.split(",") if t.strip()), storage=args.storage,
        study_name=args.study_name, features=args.features, reference=args.reference, samples=args.samples,
        verify_samples=args.verify_samples, baseline_steps=args.baseline_steps, guidance_scale=args.guidance,
        threads=args.threads, calls=args.calls, max_minutes=args.max_minutes,
        out=args.out or default_out(args.model), command=command)
    try:
        optimize(settings, verbose=args.verbose, custom_pipeline=args.custom_pipeline)
    except KeyboardInterrupt:
        print("planner: interrupted; finished trials are kept in the study, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0
