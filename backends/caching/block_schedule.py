"""A per-block, per-step reuse schedule for any denoiser (DiTFastAttn / Delta-DiT / Learning-to-Cache style).

The config carries the blocks x steps boolean matrix compactly as `reuse: {block name: [steps]}`. At a
scheduled (block, step) the block does not run: its cached residual (output - input at the last step it
ran) is added to its current input. Residual blocks are transformer blocks, or for UNets the attention
sub-blocks and the resnets that keep their shape (`residual_blocks`). Step 0 is never reused. The
schedule is made for `num_steps` steps (the sampler pins them); a call with another step count runs
without reuse rather than with a schedule that no longer means anything.

The schedule comes from `search_spaces.schedule_solver.solve_schedule` over a profile; the search tunes
only the solver's error budget.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from backends.caching.common import BlockReuseRuntime, needs_denoiser, residual_blocks
from backends.technique import STAGE_CACHE, ConfigError, Handle, TechniqueConfig, register
from ground.anatomy import denoiser_of


class BlockScheduleConfig(TechniqueConfig):
    type = "block_schedule"
    version = 1
    stage = STAGE_CACHE

    # Bounded by what a model can have: at most 4096 blocks, each reused on at most 1000 steps.
    reuse: dict[str, list[int]] = Field(default_factory=dict, max_length=4096)
    num_steps: int | None = Field(None, ge=1, le=1000)

    @field_validator("reuse")
    @classmethod
    def _steps(cls, value):
        for name, steps in value.items():
            if len(name) > 200 or len(steps) > 1000 or any(s > 1000 for s in steps):
                raise ValueError("a block name has at most 200 characters and at most 1000 steps below 1000")
            if any(s < 1 for s in steps):
                raise ValueError(f"{name}: steps must be >= 1 (step 0 has nothing cached)")
            if any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(f"{name}: steps must be strictly increasing")
        return value

    def label(self) -> str:
        n = sum(len(v) for v in self.reuse.values())
        return f"{self.type}({n} block-steps over {len(self.reuse)} blocks, num_steps={self.num_steps})"

    def matrix(self, block_names: list[str], num_steps: int):
        import numpy as np

        m = np.zeros((len(block_names), num_steps), dtype=bool)
        index = {n: i for i, n in enumerate(block_names)}
        for name, steps in self.reuse.items():
            for s in steps:
                if s < num_steps:
                    m[index[name], s] = True
        return m

    @classmethod
    def from_matrix(cls, block_names: list[str], matrix, num_steps: int | None = None) -> "BlockScheduleConfig":
        reuse = {}
        for name, row in zip(block_names, matrix):
            steps = [int(s) for s in row.nonzero()[0] if s > 0]
            if steps:
                reuse[name] = steps
        return cls(reuse=reuse, num_steps=num_steps if num_steps is not None else int(matrix.shape[1]))


def _applicable(pipe) -> str | None:
    reason = needs_denoiser(pipe)
    if reason:
        return reason
    if not residual_blocks(pipe):
        return f"{type(denoiser_of(pipe)).__name__} has no blocks whose output keeps the input's shape"
    return None


class _BlockSchedule(BlockReuseRuntime):
    hook_name = "planner.block_schedule"

    def __init__(self, pipe, config: BlockScheduleConfig) -> None:
        available = dict(residual_blocks(pipe))
        unknown = [n for n in config.reuse if n not in available]
        if unknown:
            raise ConfigError(f"params.reuse.{unknown[0]}: not a residual block of "
                              f"{type(denoiser_of(pipe)).__name__} (e.g. {next(iter(available))})")
        self.config = config
        chosen = [(n, available[n]) for n in config.reuse]
        self.plan = {k: frozenset(config.reuse[n]) for k, (n, _) in enumerate(chosen)}
        super().__init__(pipe, chosen)

    def on_denoiser_call(self, args, kwargs) -> None:
        planned = self._active() and any(self.step in steps for steps in self.plan.values())
        self.stats["reused" if planned else "computed"] += 1

    def _active(self) -> bool:
        return self.config.num_steps is None or self.tracker.num_steps == self.config.num_steps

    def want_reuse(self, k: int) -> bool:
        if self.config.num_steps is not None and self.tracker.num_steps != self.config.num_steps:
            return False
        return self.step in self.plan[k]


@register(BlockScheduleConfig, applicable=_applicable)
def apply_block_schedule(pipe, config: BlockScheduleConfig) -> Handle:
    runtime = _BlockSchedule(pipe, config)
    return Handle(config, runtime.remove, info={"runtime": runtime})
