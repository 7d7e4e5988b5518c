"""One trial: propose techniques, apply them, decide the budget on growing sample sizes, time the survivor.

Quality is decided sequentially (planner.quality.sequential): each clause on as few samples as its CI
needs. A clause that fails even at its CI's favourable end prunes the trial there (hopeless: no point in
more samples). Otherwise the point verdicts become Optuna constraints (one per clause, <= 0 feasible),
and the trial is timed interleaved with a short probe (the baseline's own call at 2 steps, techniques
suspended) and scaled by the session's one end-to-end baseline timing (planner.search.latency.probed_ratio),
with counted work beside it. Everything is stored as readable trial attributes.
"""
from __future__ import annotations

import json
import math

import optuna
import torch

from backends.technique import NotApplicable, apply_all
from ground.errors import first_line
from planner.search.context import NonFiniteImages
from planner.search.latency import probed_ratio
from planner.search.work import algorithmic, flops_of
from search_spaces.compose import suggest_configs

INFEASIBLE = 1e6  # constraint value for trials whose quality could not be measured (NaN images, ...)
NOT_APPLICABLE = "not applicable"
REPEAT_OF = "repeat_of"   # a configuration measured before: given its earlier measurement, not re-measured
COPIED = ("metrics", "samples", "decided", "feasible", "latency_ratio", "latency_ratio_ci", "speedup", "baseline_s",
          "candidate_s", "setup_s", "work_ratio", "value", "infeasible_because")


def clause_margins(results) -> list[float]:
    """Per clause result: how far the point value is on the wrong side of the bound (<= 0 holds)."""
    out = []
    for r in results:
        if not r.available or r.measured is None or math.isnan(r.measured.value):
            out.append(INFEASIBLE)
            continue
        value, bound = r.measured.value, r.clause.bound
        margin = value - bound if r.clause.upper_bound else bound - value
        out.append(max(min(margin, INFEASIBLE), -INFEASIBLE))   # +inf PSNR: as good as it gets
    return out


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


class Objective:
    def __init__(self, *, context, families: list[str], profile_for, fixed: list | None = None, cost_model=None,
                 baseline_flops: float | None = None):
        """`fixed`: technique configs every trial carries (the baseline's own sampler, when step cuts
        cannot help), before what the families suggest."""
        self.ctx = context
        self.families = families
        self.fixed = list(fixed or [])
        self.profile_for = profile_for
        self.cost_model = cost_model
        self.baseline_flops = baseline_flops

    def __call__(self, trial: optuna.Trial) -> float:
        """One trial. Out of memory and NaN images are infeasible; other exceptions propagate (the worker
        loop records them on the trial as `error`); a NaN/inf value fails the trial, its reason recorded."""
        try:
            value = self._trial(trial)
        except optuna.TrialPruned:
            raise
        except NonFiniteImages:
            return self._infeasible(trial, "non-finite images")
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
        configs = self.fixed + suggest_configs(trial, ctx.pipe, self.families, self.profile_for,
                                               space=ctx.settings.space, amortize_calls=ctx.settings.calls,
                                               baseline_steps=ctx.settings.baseline_steps)
        trial.set_user_attr("techniques", [c.to_dict() for c in configs])
        trial.set_user_attr("label", " + ".join(c.label() for c in configs) or "identity")
        earlier = self._measured_before(trial)
        if earlier is not None:
            return self._repeat(trial, earlier)
        if self.cost_model is not None and "step_back_of" not in trial.user_attrs:   # see step_back.py
            pending = self.cost_model.needs_confirmation()
            if pending is not None:   # re-time the incumbent before anything is pruned against it
                self.cost_model.confirm(pending, self.retime(pending))
            reason = self.cost_model.dominated(trial.params)
            if reason:
                trial.set_user_attr("pruned_by", f"cost model: {reason}")
                raise optuna.TrialPruned(reason)
        try:
            handle = apply_all(ctx.pipe, configs)
        except NotApplicable as exc:
            trial.set_user_attr("pruned_by", f"{NOT_APPLICABLE}: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        try:
            with ctx.trial(handle):
                return self._measure(trial, configs, handle)
        finally:
            handle.remove()

    def _measured_before(self, trial) -> optuna.trial.FrozenTrial | None:
        """A finished trial of this study with exactly these techniques (TPE repeats points in small spaces)."""
        key = json.dumps(trial.user_attrs["techniques"], sort_keys=True)
        for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.number != trial.number and json.dumps(t.user_attrs.get("techniques"), sort_keys=True) == key \
                    and REPEAT_OF not in t.user_attrs:
                return t
        return None

    def _repeat(self, trial, earlier) -> float:
        trial.set_user_attr(REPEAT_OF, earlier.number)
        for name in COPIED:
            if name in earlier.user_attrs:
                trial.set_user_attr(name, earlier.user_attrs[name])
        for name, value in earlier.constraints.items():
            trial.set_constraint(name, value)
        return earlier.value

    def _measure(self, trial, configs, handle) -> float:
        ctx = self.ctx
        trial.set_user_attr("load", load_average())
        decision, _ = ctx.decide("search")
        results = [decision.results[c] for c in ctx.budget if c in decision.results]
        trial.set_user_attr("metrics", {str(r.clause): (r.measured.value if r.measured else None) for r in results})
        trial.set_user_attr("samples", {str(c): decision.results[c].measured.n for c in decision.results
                                        if decision.results[c].measured is not None})
        trial.set_user_attr("decided", {str(c): how for c, how in decision.how.items()})
        failed = decision.failed()
        if failed and decision.how.get(failed[0]) == "decided":
            r = decision.results[failed[0]]
            reason = (f"{r.clause}: {r.measured.value:.3g} (CI {r.measured.ci_low:.3g}..{r.measured.ci_high:.3g}, "
                      f"n={r.measured.n})" if r.measured else f"{r.clause}: {r.message}")
            trial.set_user_attr("pruned_by", f"quality decided: {reason}")
            raise optuna.TrialPruned(reason)
        margins = clause_margins([decision.results.get(c) for c in ctx.budget])
        for clause, margin in zip(ctx.budget, margins):
            trial.set_constraint(str(clause), margin)
        trial.set_user_attr("feasible", all(m <= 0 for m in margins))
        probed = probed_ratio(ctx.run_candidate_batch, ctx.run_probe_batch, ctx.session_anchor(handle),
                              repeats=ctx.settings.latency_repeats, on_probe=handle.suspend,
                              on_candidate=handle.resume)
        latency = probed.result
        trial.set_user_attr("timing", {"probe_slowdown": round(probed.probe_slowdown, 3),
                                       "contended": probed.contended})
        trial.set_user_attr("latency_ratio", latency.ratio)
        trial.set_user_attr("latency_ratio_ci", list(latency.ratio_ci))
        trial.set_user_attr("speedup", latency.speedup)
        trial.set_user_attr("baseline_s", latency.baseline_s)
        trial.set_user_attr("candidate_s", latency.candidate_s)
        setup = setup_seconds(handle)
        trial.set_user_attr("setup_s", setup)
        trial.set_user_attr("load_after", load_average())
        if self.baseline_flops:
            handle.suspend()
            try:
                work = self.counted_work(configs)
            finally:
                handle.resume()
            if work is not None:
                trial.set_user_attr("work_ratio", work / self.baseline_flops)
        # The objective: per-call latency with the one-off setup (compile/export) spread over the calls.
        value = latency.ratio + setup / (ctx.settings.calls * latency.baseline_s)
        trial.set_user_attr("value", value)
        return value

    def _infeasible(self, trial, reason: str) -> float:
        """Recorded, marked infeasible, and the search goes on."""
        trial.set_user_attr("infeasible_because", reason)
        trial.set_user_attr("feasible", False)
        already = trial.constraints  # set when the failure came after the full evaluation
        for clause in self.ctx.budget:
            if str(clause) not in already:
                trial.set_constraint(str(clause), INFEASIBLE)
        return INFEASIBLE

    def retime(self, earlier) -> float:
        """Time a finished trial's configuration again (more repeats); the upper end of its ratio's CI."""
        from backends.technique import config_from_dict

        ctx = self.ctx
        handle = apply_all(ctx.pipe, [config_from_dict(d) for d in earlier.user_attrs["techniques"]])
        try:
            probed = probed_ratio(ctx.run_candidate_batch, ctx.run_probe_batch, ctx.session_anchor(handle),
                                  repeats=max(5, ctx.settings.latency_repeats), on_probe=handle.suspend,
                                  on_candidate=handle.resume)
        finally:
            handle.remove()
        return probed.result.ratio_ci[1]

    def counted_work(self, configs) -> float | None:
        """FLOPs of one latency batch with only the algorithmic techniques, on the eager pipeline (call it
        with no other technique applied)."""
        ctx = self.ctx
        handle = apply_all(ctx.pipe, algorithmic(configs))
        try:
            return flops_of(ctx.run_candidate_batch)
        finally:
            handle.remove()


def load_average() -> float | None:
    """The machine's 1-minute load average (what else competed for the cores while timing)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def setup_seconds(handle) -> float:
    """Compile/export time the techniques of `handle` spent (measured at their first call)."""
    return sum(float(h.info.get("setup_s", 0.0)) for h in handle.handles)


def describe(trial: optuna.trial.FrozenTrial) -> str:
    return json.dumps(trial.user_attrs.get("techniques", []))
