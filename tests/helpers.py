"""Shared test helpers (imported by tests; not a conftest so names stay explicit)."""
from __future__ import annotations

import pytest
import torch

from planner.demo import WEIGHTS_DIR


def needs_weights(name: str):
    return pytest.mark.skipif(not (WEIGHTS_DIR / name / "model_index.json").exists(),
                              reason=f"{name} weights not trained yet")


def seeds_request(pipe, n: int, seed: int = 0):
    from ground.generation import default_request

    return default_request(pipe, n, seed)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def make_plan(pipe, model_name: str, techniques=(), budget: str = "fid+2", batch: int = 4):
    """A valid plan for `pipe` with the given technique configs (no search; for tests)."""
    from ground.environment import current_environment
    from ground.anatomy import denoiser_of
    from ground.identity import fingerprint
    from planner.plan import Environment, ModelRef, Plan, Provenance, Shapes, TechniqueEntry

    steps = next((c.steps for c in techniques if c.type == "sampler"), 50)
    return Plan(model=ModelRef(name=model_name, pipeline=type(pipe).__name__, fingerprint=fingerprint(denoiser_of(pipe))),
                environment=Environment(**current_environment("cpu")),
                shapes=Shapes(batch=batch, resolution=16, steps=steps), budget=budget,
                techniques=[TechniqueEntry(**c.to_dict()) for c in techniques],
                provenance=Provenance(command=f"planner optimize --budget {budget} {model_name}", created="2026-11-22T00:00:00+00:00"))
