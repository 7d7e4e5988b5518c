"""The plan file: a versioned, validated, reusable description of how to accelerate one model.

Loading uses `yaml.safe_load` (no tags construct objects), migrates older versions, and validates
everything with pydantic models that forbid unknown fields; techniques are resolved only through the
backends' registry. Any problem is one line naming the field. Writing is atomic (temp file + rename),
with the command that reproduces the plan as a comment on the first line.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ground.files import write_text_atomic
from ground.errors import PlannerError, printable

PLAN_VERSION = 1
MAX_PLAN_BYTES = 4 * 1024 * 1024


class PlanError(PlannerError):
    """A plan file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class ModelRef(_Strict):
    name: str = Field(min_length=1, max_length=500)
    pipeline: str = Field(min_length=1, max_length=200)
    fingerprint: str = Field(pattern=r"^sha256:[0-9a-f]{16,64}$")


class Environment(_Strict):
    device: str = Field(pattern=r"^(cpu|cuda|mps)(:\d+)?$")
    device_name: str = Field("", max_length=200)
    torch: str = Field(max_length=100)
    diffusers: str = Field(max_length=100)
    planner: str = Field(max_length=100)


class Shapes(_Strict):
    batch: int = Field(ge=1, le=4096)
    resolution: int | None = Field(None, ge=1, le=16384)
    steps: int = Field(ge=1, le=1000)
    guidance_scale: float | None = Field(None, ge=0, le=100)


class TechniqueEntry(_Strict):
    type: str = Field(min_length=1, max_length=100)
    version: int = Field(1, ge=1, le=1000)
    params: dict[str, Any] = Field(default_factory=dict)


class MetricResult(_Strict):
    clause: str = Field(max_length=100)
    metric: str = Field(max_length=50)
    value: float
    ci_low: float
    ci_high: float
    n: int = Field(ge=0)
    baseline: float | None = None
    holds: bool
    holds_conservative: bool

    @field_validator("baseline")
    @classmethod
    def _finite_baseline(cls, value):
        return _finite(value)


class Measured(_Strict):
    baseline_steps: int = Field(50, ge=1, le=1000, description="steps of the unaccelerated baseline")
    baseline_latency_s: float = Field(gt=0, lt=1e6)
    plan_latency_s: float = Field(gt=0, lt=1e6)
    speedup: float = Field(gt=0, lt=1e6)
    speedup_ci: tuple[float, float] | None = None
    work_ratio: float | None = Field(None, ge=0, le=1e3)
    latency_repeats: int = Field(ge=1)
    threads: int | None = Field(None, ge=1)
    metrics: list[MetricResult] = Field(default_factory=list, max_length=50)
    search_seeds: tuple[int, int] = Field(description="first seed, count")
    verify_seeds: tuple[int, int]
    setup_s: float | None = Field(None, ge=0, description="one-off compile/export time")
    amortised_over_calls: int | None = Field(None, ge=1)


class Provenance(_Strict):
    command: str = Field(max_length=4000)
    created: str = Field(max_length=100)
    study: str | None = Field(None, max_length=500)
    storage: str | None = Field(None, max_length=1000)
    trial: int | None = Field(None, ge=0)
    trials_run: int | None = Field(None, ge=0)
    search_seconds: float | None = Field(None, ge=0)


class Plan(_Strict):
    version: Literal[1] = PLAN_VERSION
    model: ModelRef
    environment: Environment
    shapes: Shapes
    budget: str = Field(min_length=1, max_length=500)
    techniques: list[TechniqueEntry] = Field(default_factory=list, max_length=32)
    measured: Measured | None = None
    provenance: Provenance

    def technique_configs(self) -> list:
        from backends.technique import config_from_dict

        return [config_from_dict(t.model_dump(), where=f"techniques[{i}]") for i, t in enumerate(self.techniques)]


# version -> function turning a plan dict of that version into the next version.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {}


def migrate(data: dict) -> dict:
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PlanError(f"version: must be an integer (this planner reads versions 1..{PLAN_VERSION})")
    if version > PLAN_VERSION:
        raise PlanError(f"version: plan version {version} is newer than this planner supports "
                        f"({PLAN_VERSION}); upgrade planner")
    while version < PLAN_VERSION:
        if version not in MIGRATIONS:
            raise PlanError(f"version: no migration from plan version {version}")
        data = MIGRATIONS[version](dict(data))
        version = data["version"]
    return data


def _loc(error: dict) -> str:
    parts = []
    for p in error.get("loc", ()):
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + printable(p, 80))
    return "".join(parts) or "plan"


def plan_from_dict(data: Any) -> Plan:
    if not isinstance(data, dict):
        raise PlanError(f"plan: top level must be a mapping, got {type(data).__name__}")
    data = migrate(data)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise PlanError(f"{_loc(first)}: {first['msg']}") from None
    plan.technique_configs()  # resolve every technique through the allow-list now, not at apply time
    return plan


def load_plan(path: str | os.PathLike) -> Plan:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PLAN_BYTES:
            raise PlanError(f"{path}: larger than {MAX_PLAN_BYTES} bytes; not a plan file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: cannot read plan file ({type(exc).__name__})") from None
    return parse_plan(text, source=str(path))


def parse_plan(text: str, source: str = "plan") -> Plan:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PlanError(f"{source}: invalid YAML{where}: {problem}") from None
    except (ValueError, OverflowError, RecursionError) as exc:
        raise PlanError(f"{source}: invalid YAML: {type(exc).__name__}") from None
    if data is None:
        raise PlanError(f"{source}: empty plan file")
    try:
        return plan_from_dict(data)
    except PlannerError as exc:
        raise PlanError(f"{source}: {exc}") from None


def plan_to_yaml(plan: Plan) -> str:
    body = yaml.safe_dump(plan.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)
    command = plan.provenance.command.replace("\n", " ")
    return f"# reproduce: {command}\n{body}"


def save_plan(plan: Plan, path: str | os.PathLike) -> Path:
    """Atomic: a reader sees the old file or the whole new one, never half a plan."""
    path = Path(path)
    text = plan_to_yaml(plan)
    parse_plan(text, source=str(path))  # never write what we could not read back
    write_text_atomic(path, text)
    return path
