"""Everything a search measures against, on ONE pipeline: the baseline's images (generated lazily, per
(condition, seed) row, cached on disk), the evaluators per sample size, the latency callables.

The pipeline is the user's own, unaccelerated between trials. A trial applies its techniques, and to
time the baseline beside it suspends them (`Handle.suspend`: weights swapped back, hooks off) and
resumes them: one copy of the weights in memory, the baseline and the candidate timed side by side.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from ground.anatomy import anatomy_of
from ground.generation import Request, generate
from planner.conditions import make_request
from planner.plan import Conditions
from planner.quality.budget import Budget
from planner.quality.evaluate import Evaluator
from planner.quality.features import get_extractor
from planner.quality.reference import resolve_reference
from planner.quality.sequential import Decision, boot_replicates, ci_level, decide, sizes_for
from planner.quality.store import DiskCache, ImageStore
from planner.search.latency import PROBE_STEPS, Anchor, measure_anchor

VERIFY_SEED_OFFSET = 500_000        # verification seeds never meet search seeds
REFERENCE_SEED_OFFSET = 1_000_000   # nor the seeds of a generated FID reference set
GENERATION_BATCH = 16               # images per pipeline call when generating for quality


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    name: str                          # the model as the plan names it (built-in name, folder, hub id)
    budget: str
    trials: int = 20
    timeout: float | None = None
    seed: int = 0
    device: str = "cpu"
    batch: int = 8                     # images per call the plan is tuned and timed for
    height: int | None = None
    width: int | None = None
    dtype: str | None = None           # fp32 | fp16 | bf16: the baseline's precision
    negative_prompt: str | None = None
    conditions: Conditions | None = None
    techniques: tuple[str, ...] = ()
    storage: str | None = None
    study_name: str | None = None
    features: str | None = None
    reference: str | None = None
    samples: int | None = None         # cap of the search's sample sizes (default: per metric kind)
    verify_samples: int | None = None  # cap of the final verification's
    baseline_steps: int = 50
    guidance_scale: float | None = None
    latency_repeats: int = 3           # per trial; the final verification uses at least 7
    threads: int | None = None
    calls: int = 1000                  # production calls a compile/export setup time is spread over
    space: dict | None = None          # parameter name -> allowed values (search_spaces.compose.RestrictedTrial)
    max_minutes: float | None = None   # refuse when the estimate is longer
    sample_mode: str = "sequential"    # or "fixed": the fixed sizes of before (bench/search_cost.py compares)
    fid_shift: bool = True             # FID decisions predict the verification's size (False: as measured; bench/decisions.py)
    out: str | None = None
    command: str = ""

    @property
    def size(self) -> tuple[int, int] | None:
        return (self.height, self.width) if self.height and self.width else None


@dataclass
class _Features:
    """Features of a growing prefix of images, extracted once each."""
    rows: list = field(default_factory=list)

    def upto(self, extractor, images: torch.Tensor, n: int) -> torch.Tensor:
        if len(self.rows) < n:
            self.rows.append(extractor(images[len(self.rows):n]))
            self.rows = [torch.cat(self.rows)]
        return self.rows[0][:n]


class SearchContext:
    def __init__(self, *, settings: SearchSettings, budget: Budget, pipe, fingerprint: str) -> None:
        self.settings, self.budget, self.pipe = settings, budget, pipe
        self.fingerprint = fingerprint
        self.anatomy = anatomy_of(pipe)
        self.cache = DiskCache()
        self.sizes = {"search": sizes_for(budget, "search", settings.samples, settings.sample_mode),
                      "verify": sizes_for(budget, "verify", settings.verify_samples, settings.sample_mode)}
        self.candidate_images = 0   # images generated to decide quality (baseline images: self.baseline.generated)
        self.decisions = 0          # quality decisions taken (frontier probes, trials, verifications, gates)
        largest = {phase: max(s.cap for s in sizes.values()) for phase, sizes in self.sizes.items()}
        self.requests = {
            "search": self.request(largest["search"], settings.seed, "search"),
            "verify": self.request(largest["verify"], settings.seed + VERIFY_SEED_OFFSET, "verify")}
        self.latency_request = self.request(settings.batch, settings.seed, "search")
        self.baseline = ImageStore(pipe, {"sampler": "baseline", "steps": settings.baseline_steps,
                                          "guidance": settings.guidance_scale, "size": settings.size},
                                   self._generate_baseline, self.cache)
        self.classifier = self.anatomy.label_classifier() if "acc" in budget.metrics else None
        self.extractor = self.reference = None
        self._evaluators: dict = {}
        self._baseline_features = {"search": _Features(), "verify": _Features()}
        self.applied = None   # the handle of the techniques on the pipeline now (see `trial`)
        self.anchor: Anchor | None = None   # see session_anchor
        self.timing_images = {"baseline": 0, "candidate": 0, "probe": 0}

    @contextlib.contextmanager
    def trial(self, handle):
        """The pipeline carries `handle`'s techniques inside; baseline images asked for meanwhile are
        generated with them suspended."""
        self.applied = handle
        try:
            yield
        finally:
            self.applied = None

    def request(self, n: int, first_seed: int, phase: str) -> Request:
        s = self.settings
        return make_request(self.pipe, n, first_seed, s.conditions, phase, s.negative_prompt, s.size)

    # generation -----------------------------------------------------------------------------------
    def _generate_baseline(self, request: Request) -> torch.Tensor:
        if self.applied is not None:
            self.applied.suspend()
        try:
            return generate(self.pipe, request, steps=self.settings.baseline_steps,
                            guidance_scale=self.settings.guidance_scale, batch_size=GENERATION_BATCH)
        finally:
            if self.applied is not None:
                self.applied.resume()

    def generate_candidate(self, request: Request) -> torch.Tensor:
        """Images of the pipeline as it is now: a trial's sampler pins its own steps over these."""
        return generate(self.pipe, request, steps=self.settings.baseline_steps,
                        guidance_scale=self.settings.guidance_scale, batch_size=GENERATION_BATCH)

    def baseline_images(self, phase: str, n: int) -> torch.Tensor:
        return self.baseline.get(self.requests[phase].rows(0, n))

    # quality ------------------------------------------------------------------------------------------
    def _ensure_reference(self) -> None:
        if self.reference is not None or not self.budget.metrics & {"fid", "kid"}:
            return
        s = self.settings
        self.extractor = get_extractor(s.features, pipe=self.pipe)
        n = max(self.sizes["verify"]["fid" if "fid" in self.budget.metrics else "kid"].cap, 500)
        ref_request = self.request(n, s.seed + REFERENCE_SEED_OFFSET, "search")
        self.reference = resolve_reference(
            self.extractor, pipe=self.pipe, reference_dir=s.reference,
            generate_reference=lambda: self.baseline.get(ref_request), cache=self.cache,
            cache_key={"kind": "reference", "setting": self.baseline.setting, "n": n, "seed": s.seed})

    def evaluator(self, phase: str, n: int, budget: Budget, mode: str | None = None) -> Evaluator:
        mode = mode or self.settings.sample_mode
        key = (phase, n, str(budget), mode)
        if key not in self._evaluators:
            self._ensure_reference()
            images = self.baseline_images(phase, n)
            features = None
            if budget.metrics & {"fid", "kid"}:
                features = self._baseline_features[phase].upto(self.extractor, self.baseline_images(phase, n), n)
            conditions = list(self.requests[phase].conditions[:n])
            level = ci_level(phase, self.sizes[phase], mode)
            self._evaluators[key] = Evaluator(budget, images, self.reference, self.extractor, conditions,
                                              baseline_features=features, classifier=self.classifier, level=level,
                                              n_boot=boot_replicates(level, budget), fid_at=self.fid_at())
        return self._evaluators[key]

    def fid_at(self) -> int | None:
        """The sample size every FID decision estimates: the verification's cap (what a plan's claim is
        measured at), so that small-N looks in the search, the step frontier and the verification's own
        early looks predict it rather than a quantity biased differently for each candidate."""
        sizes = self.sizes["verify"].get("fid")
        return None if sizes is None or not self.settings.fid_shift else sizes.cap

    def decide(self, phase: str, on_size=None, holds_at_cap_only: bool = False) -> tuple[Decision, torch.Tensor]:
        """The budget's verdict on the pipeline as it is now, on growing sample sizes (sequential).
        `holds_at_cap_only`: a clause may fail early but holds only at its cap, where one look at 95% is
        the whole test (`planner gate`: no early stop for "holds", so no split of the error either)."""
        mode = "fixed" if holds_at_cap_only else self.settings.sample_mode
        request = self.requests[phase]
        self.decisions += 1
        state = {"images": torch.empty(0), "features": _Features()}

        def evaluate(n: int, budget: Budget):
            have = len(state["images"])
            if have < n:
                more = self.generate_candidate(request.rows(have, n))
                self.candidate_images += len(more)
                state["images"] = more if have == 0 else torch.cat([state["images"], more])
            images = state["images"][:n]
            if not torch.isfinite(images).all():
                raise NonFiniteImages()
            features = None
            if budget.metrics & {"fid", "kid"}:
                self._ensure_reference()
                features = state["features"].upto(self.extractor, state["images"], n)
            return self.evaluator(phase, n, budget, mode).evaluate(images, candidate_features=features)

        return decide(self.budget, self.sizes[phase], evaluate, phase, on_size,
                      stop_when_holding=mode != "fixed"), state["images"]

    # latency ------------------------------------------------------------------------------------------
    def _timed_call(self, side: str, steps: int) -> torch.Tensor:
        self.timing_images[side] += self.settings.batch
        return generate(self.pipe, self.latency_request, steps=steps,
                        guidance_scale=self.settings.guidance_scale, batch_size=self.settings.batch)

    def run_baseline_batch(self) -> torch.Tensor:
        return self._timed_call("baseline", self.settings.baseline_steps)

    def run_candidate_batch(self) -> torch.Tensor:
        return self._timed_call("candidate", self.settings.baseline_steps)

    def run_probe_batch(self) -> torch.Tensor:
        """The short probe trials are timed against (planner.search.latency.probed_ratio)."""
        return self._timed_call("probe", PROBE_STEPS)

    def session_anchor(self, handle=None) -> Anchor:
        """The baseline timed end to end against the probe, once per session (`handle`'s techniques, if
        any, are suspended meanwhile)."""
        if self.anchor is None:
            if handle is not None:
                handle.suspend()
            try:
                self.anchor = measure_anchor(self.run_baseline_batch, self.run_probe_batch,
                                             repeats=self.settings.latency_repeats)
            finally:
                if handle is not None:
                    handle.resume()
        return self.anchor

    @property
    def images_generated(self) -> int:
        """Every image this session generated: baseline and candidates, for quality and for timing."""
        return self.baseline.generated + self.candidate_images + sum(self.timing_images.values())


class NonFiniteImages(Exception):
    """A candidate produced NaN or infinite pixels."""
