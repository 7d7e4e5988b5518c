"""Shared test helpers (imported by tests; not a conftest so names stay explicit)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ground.devices import torch_threads  # noqa: F401 - tests import it from here
from planner.demo import WEIGHTS_DIR


def shipped_weights(name: str) -> Path:
    """The folder of a shipped demo model. The weights are part of the package: a missing file is a
    broken checkout, so this fails with a message saying how to restore them (it never skips)."""
    folder = WEIGHTS_DIR / name
    if not (folder / "model_index.json").exists():
        raise AssertionError(f"{name}: shipped weights missing at {folder}; they are part of the package "
                             f"(restore them with `git checkout -- {folder}` or retrain with "
                             f"`python -m planner.demo.train {name.split('-')[-1]}`)")
    return folder


def needs_weights(name: str):
    """Marks a test that uses the shipped weights of `name`. They must exist: a missing file fails (at
    collection, naming the file), it is never a reason to skip. The returned mark does nothing more."""
    shipped_weights(name)
    return pytest.mark.usefixtures()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against b."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


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
