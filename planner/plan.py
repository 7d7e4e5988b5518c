"""The plan file: a versioned, validated, reusable description of how to accelerate one model.

Loading reads at most `MAX_PLAN_BYTES` from a regular file, parses YAML with a safe loader that builds
no objects from tags, refuses aliases (a few hundred bytes of them can expand to gigabytes) and counts
nodes against `MAX_YAML_NODES`; then migrates older versions and validates everything with strict
pydantic models (unknown fields forbidden, `true` is not a number, no NaN, every collection bounded);
techniques are resolved only through the backends' registry, at most one of each type, and the budget
is parsed. Any problem is one line naming the field. Writing is atomic (temp file + rename), with the
command that reproduces the plan as a comment on the first line.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from ground.errors import PlannerError, printable
from ground.files import read_bounded, write_text_atomic
from ground.schema import Pair, StrictModel

PLAN_VERSION = 4
MAX_PLAN_BYTES = 4 * 1024 * 1024
MAX_YAML_NODES = 200_000
MAX_ROWS = 1000
SHA = r"^sha256:[0-9a-f]{16,64}$"
DTYPES = ("fp32", "fp16", "bf16")


class PlanError(PlannerError):
    """A plan file that cannot be used; the message names the file and the field."""


class ModelRef(StrictModel):
    name: str = Field(min_length=1, max_length=500)
    pipeline: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    fingerprint: str = Field(pattern=SHA, description="the denoiser's config and weights")
    structure: str | None = Field(None, pattern=SHA, description="the denoiser's config and shapes, LoRA folded away")
    components: dict[str, str] = Field(default_factory=dict, max_length=32,
                                       description="fingerprint of every component (VAE, text encoders, ...)")
    lora: dict[str, float] = Field(default_factory=dict, max_length=64, description="LoRA adapters and scales")

    @field_validator("components")
    @classmethod
    def _component_fingerprints(cls, value):
        import re

        for name, fp in value.items():
            if not re.match(SHA, fp) or len(name) > 100:
                raise ValueError(f"{printable(name, 40)}: must map a component name to a sha256 fingerprint")
        return value


class Environment(StrictModel):
    device: str = Field(pattern=r"^(cpu|cuda|mps)(:\d{1,3})?$")
    device_name: str = Field("", max_length=200)
    torch: str = Field(max_length=100)
    diffusers: str = Field(max_length=100)
    planner: str = Field(max_length=100)


class Shapes(StrictModel):
    batch: int = Field(ge=1, le=4096)
    resolution: int | None = Field(None, ge=1, le=16384, description="image height")
    width: int | None = Field(None, ge=1, le=16384,
                              description="image width, set when the search asked for a size (run and gate ask again)")
    steps: int = Field(ge=1, le=1000, description="denoising steps the plan's sampler runs")
    guidance_scale: float | None = Field(None, ge=0, le=100)
    dtype: Literal["fp32", "fp16", "bf16"] | None = Field(None, description="the pipeline's dtype when tuned")


class Row(StrictModel):
    """One condition: a prompt (text pipelines) or a class label, with optional seed and size."""

    prompt: str | None = Field(None, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    class_label: int | None = Field(None, ge=0, le=1_000_000)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    height: int | None = Field(None, ge=8, le=16384)
    width: int | None = Field(None, ge=8, le=16384)


class Conditions(StrictModel):
    """The conditions the plan was searched and verified on (a user's prompts file, or built in)."""

    source: str = Field(max_length=500, description="the prompts file it came from, or 'built-in'")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    search: list[Row] = Field(default_factory=list, max_length=MAX_ROWS)
    verify: list[Row] = Field(default_factory=list, max_length=MAX_ROWS)


class TechniqueEntry(StrictModel):
    type: str = Field(min_length=1, max_length=100)
    version: int = Field(1, ge=1, le=1000)
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)


class MetricResult(StrictModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")   # a PSNR of +inf stays .inf in the YAML

    clause: str = Field(max_length=100)
    metric: str = Field(max_length=50)
    value: float = Field(allow_inf_nan=True)
    ci_low: float = Field(allow_inf_nan=True)
    ci_high: float = Field(allow_inf_nan=True)
    n: int = Field(ge=0, le=10_000_000)
    baseline: float | None = None
    holds: bool
    holds_conservative: bool
    # the CI's level: 0.95 / the number of looks of a sequential verification (planner.quality.sequential)
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _sane(self):
        # PSNR of identical images is +inf (an identity plan); nothing else may be infinite, nothing NaN.
        for name in ("value", "ci_low", "ci_high"):
            x = getattr(self, name)
            if math.isnan(x) or (math.isinf(x) and self.metric != "psnr"):
                raise ValueError(f"{name} must be a finite number")
        if self.ci_low > self.ci_high:
            raise ValueError("ci_low must not exceed ci_high")
        return self


class SampleSizes(StrictModel):
    """How many samples a clause of this metric is evaluated on: `first`, doubling up to `cap`."""

    first: int = Field(ge=2, le=100_000)
    cap: int = Field(ge=2, le=100_000)


class DecisionRow(StrictModel):
    """One verified candidate: what the search decided on its seeds and what the verification found."""

    trial: int = Field(ge=0)
    label: str = Field(max_length=500)
    clause: str = Field(max_length=100)
    search_value: float | None = Field(None, description="the search's estimate (bias-corrected FID: at the verification size)")
    search_n: int | None = Field(None, ge=0, le=10_000_000)
    search_feasible: bool
    verify_value: float | None = None
    verify_n: int | None = Field(None, ge=0, le=10_000_000)
    verify_point: bool | None = Field(None, description="the verification's point verdict on the unseen seeds")
    verify_holds: bool = Field(description="the verification's conservative verdict")
    why: str = Field("", max_length=500, description="why a candidate failed its verification")


class Decisions(StrictModel):
    """How far the search's cheap verdicts predicted the verification (issue: decisions that hold)."""

    estimator: str = Field(max_length=200, description="how the search's small-N estimates were made")
    agreement: float | None = Field(None, ge=0, le=1, description="share of verified candidates whose search "
                                    "verdict matched the verification's point verdict")
    bias: dict[str, float] = Field(default_factory=dict, max_length=16,
                                   description="per clause: mean of search estimate - verification estimate")
    rows: list[DecisionRow] = Field(default_factory=list, max_length=100)


class SearchCost(StrictModel):
    """What the search cost, in baseline-image equivalents: wall time / one baseline image's time."""

    wall_s: float = Field(ge=0, lt=1e8)
    baseline_image_s: float = Field(gt=0, lt=1e6, description="one baseline image at the search's batch, this run")
    bie: float = Field(ge=0, lt=1e9)
    images: int = Field(ge=0, le=10**9, description="images generated: baseline + candidates (quality and timing)")
    trials: int = Field(ge=0, le=10**7)
    latency_prediction_error: float | None = Field(
        None, ge=-1e3, le=1e3, description="the plan's latency ratio as the search predicted it (probe-scaled) "
        "over its end-to-end ratio in the verification, minus 1")


class Measured(StrictModel):
    baseline_steps: int = Field(50, ge=1, le=1000, description="steps of the unaccelerated baseline")
    baseline_latency_s: float = Field(gt=0, lt=1e6)
    plan_latency_s: float = Field(gt=0, lt=1e6)
    speedup: float = Field(gt=0, lt=1e6)
    speedup_ci: Pair(float) | None = None
    work_ratio: float | None = Field(None, ge=0, le=1e3)
    latency_repeats: int = Field(ge=1, le=10_000)
    threads: int | None = Field(None, ge=1, le=4096)
    metrics: list[MetricResult] = Field(default_factory=list, max_length=50)
    sample_sizes: dict[str, SampleSizes] = Field(default_factory=dict, max_length=16,
                                                 description="search and verification sample sizes per metric")
    search_seeds: Pair(int) = Field(description="first seed, count")
    verify_seeds: Pair(int)
    setup_s: float | None = Field(None, ge=0, lt=1e7, description="one-off compile/export time")
    amortised_over_calls: int | None = Field(None, ge=1, le=10**9)
    decisions: Decisions | None = None
    search_cost: SearchCost | None = None

    @model_validator(mode="after")
    def _sane(self):
        if self.speedup_ci is not None and not 0 < self.speedup_ci[0] <= self.speedup_ci[1]:
            raise ValueError("speedup_ci must be [low, high] with 0 < low <= high")
        for name in ("search_seeds", "verify_seeds"):
            first, count = getattr(self, name)
            if first < 0 or count < 1:
                raise ValueError(f"{name} must be [first seed >= 0, count >= 1]")
        return self


class Provenance(StrictModel):
    command: str = Field(max_length=4000)
    created: str = Field(max_length=100)
    study: str | None = Field(None, max_length=500)
    storage: str | None = Field(None, max_length=1000)
    trial: int | None = Field(None, ge=0)
    trials_run: int | None = Field(None, ge=0)
    search_seconds: float | None = Field(None, ge=0)


class Plan(StrictModel):
    version: Literal[4] = PLAN_VERSION
    model: ModelRef
    environment: Environment
    shapes: Shapes
    conditions: Conditions | None = None
    budget: str = Field(min_length=1, max_length=500)
    techniques: list[TechniqueEntry] = Field(default_factory=list, max_length=16)
    measured: Measured | None = None
    provenance: Provenance

    @field_validator("budget")
    @classmethod
    def _budget_parses(cls, value):
        from planner.quality.budget import parse_budget

        try:
            return str(parse_budget(value))
        except PlannerError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _one_of_each(self):
        types = [t.type for t in self.techniques]
        twice = sorted({t for t in types if types.count(t) > 1})
        if twice:
            raise ValueError(f"techniques: {twice[0]} appears {types.count(twice[0])} times; a plan has at most one of each")
        return self

    def technique_configs(self) -> list:
        from backends.technique import config_from_dict

        return [config_from_dict(t.model_dump(), where=f"techniques[{i}]") for i, t in enumerate(self.techniques)]


def _v1_to_v2(data: dict) -> dict:
    """v1 plans predate structure/components/LoRA identity, conditions, dtype and sample sizes: all
    optional in v2 (a v1 plan cannot carry over to a LoRA-loaded pipeline: no structure recorded)."""
    return dict(data, version=2)


def _v2_to_v3(data: dict) -> dict:
    """v3 records each metric's CI level (`ci_level`); v2 plans were verified at 95% at every look."""
    measured = data.get("measured")
    if isinstance(measured, dict) and isinstance(measured.get("metrics"), list):
        metrics = [dict(m, ci_level=m.get("ci_level", 0.95)) if isinstance(m, dict) else m
                   for m in measured["metrics"]]
        data = dict(data, measured=dict(measured, metrics=metrics))
    return dict(data, version=3)


def _v3_to_v4(data: dict) -> dict:
    """v4 may record `measured.decisions` (search vs verification verdicts) and `measured.search_cost`
    (BIE); v3 plans recorded neither: both stay empty."""
    return dict(data, version=4)


# version -> function turning a plan dict of that version into the next version.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def migrate(data: dict) -> dict:
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise PlanError(f"version: must be an integer (this planner reads versions 1..{PLAN_VERSION})")
    if version > PLAN_VERSION:
        raise PlanError(f"version: plan version {version} is newer than this planner supports "
                        f"({PLAN_VERSION}); upgrade planner")
    if version < 1:
        raise PlanError(f"version: must be 1..{PLAN_VERSION}, got {version}")
    while version < PLAN_VERSION:
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
        raise PlanError(f"{_loc(first)}: {printable(first['msg'], 300)}") from None
    configs = plan.technique_configs()  # resolve every technique through the allow-list now, not at apply time
    sampler = next((c for c in configs if c.type == "sampler"), None)
    if sampler is not None and sampler.steps != plan.shapes.steps:
        raise PlanError(f"shapes.steps: {plan.shapes.steps} differs from the sampler's {sampler.steps} steps")
    return plan


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and counts nodes: the cost of loading is bounded by the bytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "aliases are not allowed in a plan",
                                                    event.start_mark)
        self._nodes = getattr(self, "_nodes", 0) + 1
        if self._nodes > MAX_YAML_NODES:
            raise yaml.constructor.ConstructorError(None, None, f"more than {MAX_YAML_NODES} YAML nodes",
                                                    self.peek_event().start_mark)
        return super().compose_node(parent, index)


def load_plan(path: str | os.PathLike) -> Plan:
    path = Path(path)
    try:
        data = read_bounded(path, MAX_PLAN_BYTES, "plan file")
    except PlanError:
        raise
    except PlannerError as exc:
        raise PlanError(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PlanError(f"{path}: not a UTF-8 text file") from None
    return parse_plan(text, source=str(path))


def parse_plan(text: str, source: str = "plan") -> Plan:
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(f"{source}: larger than {MAX_PLAN_BYTES} bytes; not a plan file")
    try:
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = printable(getattr(exc, "problem", None) or type(exc).__name__, 160)
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
