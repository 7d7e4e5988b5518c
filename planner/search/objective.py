"""One trial: propose techniques, apply them, run the fidelity cascade, time the survivor.

Stage 1 (cheap): the budget on the first `cheap_samples` seeds; the trial is pruned when a clause fails
even at its CI's favourable end (hopeless). Stage 2 (full): the budget on all search seeds, point
verdict -> Optuna constraints (<= 0 is feasible). Then latency, interleaved with the baseline, and
counted work. Everything is stored as readable trial attributes.
"""
from __future__ import annotations

import json
import math

import optuna
import torch

from backends.technique import NotApplicable, apply_all
from ground.errors import first_line
from planner.search.latency import interleaved_ratio
from planner.search.work import algorithmic, flops_of
from search_spaces.compose import suggest_configs

INFEASIBLE = 1e6  # constraint value for trials whose quality could not be measured (NaN images, ...)


def clause_margins(evaluation) -> list[float]:
    """Per clause: how far the point value is on the wrong side of the bound (<= 0 holds)."""
    out = []
    for r in evaluation.results:
        if not r.available or r.measured is None or not math.isfinite(r.measured.value):
            out.append(INFEASIBLE if not (r.measured and r.measured.value == math.inf and not r.clause.upper_bound)
                       else -INFEASIBLE)
            continue
        value, bound = r.measured.value, r.clause.bound
        out.append(value - bound if r.clause.upper_bound else bound - value)
    return out


def hopeless(evaluation) -> str | None:
    """A clause that fails even at the favourable end of its CI: no point measuring more samples."""
    for r in evaluation.results:
        if r.available and r.measured is not None:
            favourable = r.measured.ci_low if r.clause.upper_bound else r.measured.ci_high
            if not r.clause.holds(favourable):
                return f"{r.clause}: {r.measured.value:.3g} (CI {r.measured.ci_low:.3g}..{r.measured.ci_high:.3g})"
    return None


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


def _finite_images(images: torch.Tensor) -> bool:
    return bool(torch.isfinite(images).all())


class Objective:
    def __init__(self, *, context, families: list[str], profile_for, cost_model=None,
                 baseline_flops: float | None = None):
        self.ctx = context
        self.families = families
        self.profile_for = profile_for
        self.cost_model = cost_model
        self.baseline_flops = baseline_flops

    def __call__(self, trial: optuna.Trial) -> float:
        """One trial. Out of memory is infeasible; other exceptions propagate (the worker loop records
        them on the trial as `error`); a NaN/inf value fails the trial, with its reason recorded."""
        try:
            value = self._trial(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - any technique may fail in its own way
            if _out_of_memory(exc):
                # Too big at this batch on this device: infeasible, so the sampler learns to avoid it.
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                return self._infeasible(trial, f"out of memory: {first_line(exc)}")
            raise
        if not math.isfinite(value):  # NaN makes Optuna fail the trial (inf too, here); say why
            trial.set_user_attr("error", f"objective value {value}")
            return math.nan
        return value

    def _trial(self, trial: optuna.Trial) -> float:
        ctx = self.ctx
        configs = suggest_configs(trial, ctx.cand_pipe, self.families, self.profile_for, space=ctx.settings.space)
        trial.set_user_attr("techniques", [c.to_dict() for c in configs])
        trial.set_user_attr("label", " + ".join(c.label() for c in configs) or "identity")
        if self.cost_model is not None:
            reason = self.cost_model.dominated(trial.params)
            if reason:
                trial.set_user_attr("pruned_by", f"cost model: {reason}")
                raise optuna.TrialPruned(reason)
        try:
            handle = apply_all(ctx.cand_pipe, configs)
        except NotApplicable as exc:
            trial.set_user_attr("pruned_by", f"not applicable: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        try:
            return self._measure(trial, configs, handle)
        finally:
            handle.remove()

    def _measure(self, trial, configs, handle) -> float:
        ctx = self.ctx
        cheap_images = ctx.generate_candidate(ctx.cheap.request)
        if not _finite_images(cheap_images):
            return self._infeasible(trial, "non-finite images")
        cheap = ctx.cheap.evaluator.evaluate(cheap_images)
        trial.set_user_attr("cheap", {str(r.clause): r.measured.value for r in cheap.results if r.measured})
        reason = hopeless(cheap)
        if reason:
            trial.set_user_attr("pruned_by", f"fidelity cascade: {reason}")
            raise optuna.TrialPruned(reason)
        rest = ctx.search.request
        n_cheap = len(ctx.cheap.request)
        from ground.generation import Request

        more = ctx.generate_candidate(Request(rest.conditions[n_cheap:], rest.seeds[n_cheap:]))
        images = torch.cat([cheap_images, more])
        if not _finite_images(images):
            return self._infeasible(trial, "non-finite images")
        evaluation = ctx.search.evaluator.evaluate(images)
        margins = clause_margins(evaluation)
        for clause, margin in zip(ctx.budget, margins):
            trial.set_constraint(str(clause), margin)
        trial.set_user_attr("metrics", {str(r.clause): (r.measured.value if r.measured else None)
                                        for r in evaluation.results})
        trial.set_user_attr("feasible", all(m <= 0 for m in margins))
        latency = interleaved_ratio(ctx.run_baseline_batch, ctx.run_candidate_batch,
                                    repeats=ctx.settings.latency_repeats)
        trial.set_user_attr("latency_ratio", latency.ratio)
        trial.set_user_attr("speedup", latency.speedup)
        trial.set_user_attr("baseline_s", latency.baseline_s)
        trial.set_user_attr("candidate_s", latency.candidate_s)
        trial.set_user_attr("setup_s", sum(float(h.info.get("setup_s", 0.0)) for h in handle.handles))
        if self.baseline_flops:
            work = self.counted_work(configs)
            if work is not None:
                trial.set_user_attr("work_ratio", work / self.baseline_flops)
        return latency.ratio

    def _infeasible(self, trial, reason: str) -> float:
        """Recorded, marked infeasible, and the search goes on."""
        trial.set_user_attr("infeasible_because", reason)
        trial.set_user_attr("feasible", False)
        already = trial.constraints  # set when the failure came after the full-stage evaluation
        for clause in self.ctx.budget:
            if str(clause) not in already:
                trial.set_constraint(str(clause), INFEASIBLE)
        return INFEASIBLE

    def counted_work(self, configs) -> float | None:
        """FLOPs of one latency batch with only the algorithmic techniques, on the eager pipeline."""
        ctx = self.ctx
        alg = algorithmic(configs)
        handle = apply_all(ctx.base_pipe, alg)
        try:
            from ground.generation import generate

            return flops_of(lambda: generate(ctx.base_pipe, ctx.latency_request,
                                             guidance_scale=ctx.settings.guidance_scale,
                                             batch_size=ctx.settings.batch, **ctx.generation_kwargs()))
        finally:
            handle.remove()


def describe(trial: optuna.trial.FrozenTrial) -> str:
    return json.dumps(trial.user_attrs.get("techniques", []))
