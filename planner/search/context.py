"""Everything a search measures against, computed once: the baseline pipeline, its images on the search
and verification seeds, the reference features, the evaluators, the baseline's latency callable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ground.generation import Request, default_request, generate
from planner.quality.budget import Budget
from ground.anatomy import anatomy_of
from planner.quality.evaluate import Evaluator
from planner.quality.features import get_extractor
from planner.quality.reference import resolve_reference
from planner.quality.store import DiskCache, cached_generate, generation_key

VERIFY_SEED_OFFSET = 500_000  # verification seeds never meet search seeds


@dataclass(frozen=True)
class SearchSettings:
    model: str
    budget: str
    trials: int = 20
    timeout: float | None = None
    seed: int = 0
    device: str = "cpu"
    batch: int = 8
    resolution: int | None = None
    techniques: tuple[str, ...] = ()
    storage: str | None = None
    study_name: str | None = None
    features: str | None = None
    reference: str | None = None
    samples: int = 200            # full-stage samples per trial (search seeds)
    cheap_samples: int = 64       # first stage of the fidelity cascade
    verify_samples: int = 500     # final verification on unseen seeds
    baseline_steps: int = 50
    guidance_scale: float | None = None
    latency_repeats: int = 3     # per trial; the final verification uses at least 7
    threads: int | None = None
    # Optional restriction of the search space: Optuna parameter name -> allowed values (see
    # search_spaces.compose.RestrictedTrial); None searches every family's full range.
    space: dict | None = None
    out: str = "plan.yaml"
    command: str = ""


@dataclass
class Baseline:
    request: Request
    images: torch.Tensor
    evaluator: Evaluator
    fid: float | None = None
    extra: dict = field(default_factory=dict)


def _subset(request: Request, n: int) -> Request:
    return Request(request.conditions[:n], request.seeds[:n])


class SearchContext:
    def __init__(self, settings: SearchSettings, budget: Budget, base_pipe, cand_pipe, model_fingerprint: str) -> None:
        self.settings, self.budget = settings, budget
        self.base_pipe, self.cand_pipe = base_pipe, cand_pipe
        self.fingerprint = model_fingerprint
        self.cache = DiskCache()
        self.extractor = None
        self.reference = None
        self.classifier = anatomy_of(base_pipe).label_classifier() if "acc" in budget.metrics else None
        search_request = default_request(base_pipe, settings.samples, settings.seed)
        verify_request = default_request(base_pipe, settings.verify_samples, settings.seed + VERIFY_SEED_OFFSET)
        self.search = self._baseline(search_request)
        self.cheap = Baseline(_subset(search_request, settings.cheap_samples),
                              self.search.images[:settings.cheap_samples], None)  # evaluator set below
        self.verify_request = verify_request
        self._verify: Baseline | None = None
        self.cheap.evaluator = self._evaluator(self.cheap.images, self.cheap.request)
        self.latency_request = default_request(base_pipe, settings.batch, settings.seed)

    def generation_kwargs(self) -> dict:
        kwargs = {}
        if self.settings.resolution is not None:
            kwargs.update(height=self.settings.resolution, width=self.settings.resolution)
        return kwargs

    def _generate_baseline(self, request: Request) -> torch.Tensor:
        return cached_generate(self.base_pipe, request, steps=self.settings.baseline_steps,
                               guidance_scale=self.settings.guidance_scale, sampler="baseline", cache=self.cache,
                               **self.generation_kwargs())

    def _evaluator(self, images: torch.Tensor, request: Request) -> Evaluator:
        if self.budget.metrics & {"fid", "kid"} and self.reference is None:
            self.extractor = get_extractor(self.settings.features, pipe=self.base_pipe)
            ref_request = default_request(self.base_pipe, max(self.settings.verify_samples, 500),
                                          self.settings.seed + 2 * VERIFY_SEED_OFFSET)
            self.reference = resolve_reference(
                self.extractor, pipe=self.base_pipe, reference_dir=self.settings.reference,
                generate_reference=lambda: self._generate_baseline(ref_request), cache=self.cache,
                cache_key=generation_key(self.base_pipe, ref_request, self.settings.baseline_steps,
                                         self.settings.guidance_scale, "baseline"))
        return Evaluator(self.budget, images, self.reference, self.extractor, list(request.conditions),
                         classifier=self.classifier)

    def _baseline(self, request: Request) -> Baseline:
        images = self._generate_baseline(request)
        return Baseline(request, images, self._evaluator(images, request))

    @property
    def verify(self) -> Baseline:
        if self._verify is None:
            self._verify = self._baseline(self.verify_request)
        return self._verify

    # latency callables -------------------------------------------------------------------------------
    def run_baseline_batch(self) -> torch.Tensor:
        return generate(self.base_pipe, self.latency_request, steps=self.settings.baseline_steps,
                        guidance_scale=self.settings.guidance_scale, batch_size=self.settings.batch,
                        **self.generation_kwargs())

    def run_candidate_batch(self, pipe=None) -> torch.Tensor:
        """One latency batch on the candidate pipeline (or on `pipe`, another accelerated copy)."""
        return generate(self.cand_pipe if pipe is None else pipe, self.latency_request, guidance_scale=self.settings.guidance_scale,
                        batch_size=self.settings.batch, **self.generation_kwargs())

    def generate_candidate(self, request: Request) -> torch.Tensor:
        return generate(self.cand_pipe, request, guidance_scale=self.settings.guidance_scale,
                        **self.generation_kwargs())
