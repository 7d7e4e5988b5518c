"""Quality metrics with uncertainty, reference sets and the budget language.

One module per concern:

- `features`  pluggable feature extractors ("digits", "inception", a TorchScript PATH)
- `fid`       FID and KID from features (float64 statistics)
- `paired`    PSNR, SSIM, LPIPS between a candidate and its baseline (same conditions and seeds)
- `accuracy`  label accuracy of generated digits
- `bootstrap` result objects with bootstrap confidence intervals (paired where relative)
- `budget`    the `--budget` language: parse, check, serialise
- `evaluate`  the evaluator (verdicts per clause), reference sets and the on-disk cache
- `cli`       the `planner evaluate` command
"""
from planner.quality.bootstrap import MetricResult
from planner.quality.budget import Budget, Clause, parse_budget


def __getattr__(name):  # the evaluator pulls in torch and diffusers: import it on first use
    if name in ("ClauseResult", "Evaluation", "Evaluator", "evaluate_budget"):
        from planner.quality import evaluate

        return getattr(evaluate, name)
    raise AttributeError(name)


__all__ = ["MetricResult", "Budget", "Clause", "parse_budget", "ClauseResult", "Evaluation", "Evaluator",
           "evaluate_budget"]
